"""Structured (channel) pruning of a tf_keras Sequential/functional model: whole
channels removed, and the model rebuilt with narrower layers (training/surgery.py).

Channels are tracked as groups: a Conv2D/Conv1D/Dense output starts a group; layers
that act per channel (BatchNormalization, DepthwiseConv2D with depth_multiplier 1,
activations, pooling, dropout, padding) carry it; an element-wise merge (Add,
Multiply, …) joins its inputs' groups into one, so the channels that residual
connections couple are pruned together. A group is never pruned when it reaches a
model output, the model input, or a layer mobilec cannot slice (Concatenate,
Reshape, a normalization over channels, an unknown layer): those channels are
kept and the layer named in `kept_whole`. A Flatten followed by Dense is followed
through: the Dense rows of a removed channel go at every spatial position.

Within a group, channels are ranked by the L2 norm of their filters in every layer
that produces them (each layer's norms scaled to mean 1), and the weakest `ratio`
of them are removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mobilec.errors import UnsupportedError
from mobilec.formats.runtime import measure_latency
from mobilec.training.surgery import Replacement, clone_layer, graph_nodes, is_model, rebuild
from mobilec.util.tfenv import import_tf_keras

#: layers that keep the channel axis and act on each channel alone (no weights to slice)
CARRY = ("Activation", "ReLU", "LeakyReLU", "ELU", "Dropout", "SpatialDropout2D",
         "SpatialDropout1D", "GaussianNoise", "GaussianDropout", "MaxPooling2D", "MaxPooling1D",
         "AveragePooling2D", "AveragePooling1D", "GlobalAveragePooling2D",
         "GlobalAveragePooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling1D", "ZeroPadding2D",
         "ZeroPadding1D", "Cropping2D", "Cropping1D", "UpSampling2D", "ActivityRegularization")
MERGE = ("Add", "Subtract", "Multiply", "Maximum", "Minimum", "Average")
PRODUCERS = ("Conv2D", "Conv1D", "Dense")


@dataclass
class Group:
    size: int
    producers: list[Any] = field(default_factory=list)
    fixed: str | None = None  # why these channels stay (None: prunable)
    keep: np.ndarray | None = None  # kept channel indices once decided


@dataclass
class Flow:
    """The channels of one tensor: its group, and how many spatial positions a Flatten
    spread each channel over (1: the channel axis is the last axis)."""
    group: int
    spread: int = 1


class Groups:
    """Union-find over channel groups."""

    def __init__(self) -> None:
        self.groups: list[Group] = []
        self.parent: list[int] = []

    def new(self, size: int, fixed: str | None = None) -> int:
        self.groups.append(Group(size, fixed=fixed))
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def get(self, g: int) -> Group:
        return self.groups[self.find(g)]

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            ga, gb = self.groups[ra], self.groups[rb]
            ga.producers += gb.producers
            ga.fixed = ga.fixed or gb.fixed
            self.parent[rb] = ra
        return ra

    def fix(self, g: int, why: str) -> None:
        group = self.get(g)
        group.fixed = group.fixed or why


@dataclass
class Plan:
    """Per layer: the flow of its input channels and the group of its output channels."""
    groups: Groups
    inputs: dict[int, Flow] = field(default_factory=dict)
    outputs: dict[int, int] = field(default_factory=dict)
    kept_whole: list[str] = field(default_factory=list)


def prune_channels(model: Any, ratio: float) -> tuple[Any, dict[str, Any]]:
    """A narrower copy of `model` with `ratio` of each prunable group's channels removed,
    and what was done (groups, channels before/after, layers kept whole)."""
    plan = trace(model)
    before = after = pruned = 0
    seen: set[int] = set()
    for g in range(len(plan.groups.groups)):
        root = plan.groups.find(g)
        if root in seen:
            continue
        seen.add(root)
        group = plan.groups.groups[root]
        before += group.size
        if group.fixed is None and group.producers:
            n_keep = max(1, int(round(group.size * (1 - ratio))))
            group.keep = np.sort(np.argsort(-_importance(group))[:n_keep])
            pruned += 1
        after += group.size if group.keep is None else len(group.keep)
    if not pruned:
        raise UnsupportedError(
            "no channel of this model can be removed: every Conv/Dense output reaches a model "
            "output or a layer mobilec cannot slice (" + ", ".join(plan.kept_whole[:6]) + ")",
            hint="use prune: {structure: unstructured}, or distill: {width: 0.5}")
    narrow = rebuild(model, lambda layer: _narrowed(layer, plan))
    return narrow, {"pruned_groups": pruned, "channels_before": before, "channels_after": after,
                    "kept_whole": sorted(set(plan.kept_whole))}


def trace(model: Any) -> Plan:
    """Follow every tensor's channels through the graph (see the module docstring)."""
    plan = Plan(Groups())
    flows: dict[str, Flow] = {}
    for t in model.inputs:
        flows[str(id(t))] = Flow(plan.groups.new(_channels(t.shape), fixed="model input"))
    for node in graph_nodes(model):
        layer = node.layer
        if is_model(layer):
            raise UnsupportedError(f"layer '{layer.name}' is a nested model; channel pruning "
                                   "rebuilds one flat graph", hint="flatten the model, or use "
                                   "prune: {structure: unstructured}")
        if len(layer._inbound_nodes) > 1:  # noqa: SLF001 - tf_keras has no public count
            raise UnsupportedError(f"layer '{layer.name}' is shared (called "
                                   f"{len(layer._inbound_nodes)} times); channel pruning cannot "  # noqa: SLF001
                                   "narrow a shared layer for one call only",
                                   hint="use prune: {structure: unstructured}")
        ins = [flows[i] for i in node.flat_input_ids if i in flows]
        out = _step(plan, layer, ins, node)
        for out_id in node.flat_output_ids:
            flows[out_id] = out
    for t in model.outputs:
        plan.groups.fix(flows[str(id(t))].group, "model output")
    return plan


def _step(plan: Plan, layer: Any, ins: list[Flow], node: Any) -> Flow:
    """The flow of `layer`'s output, recording what it needs from the plan."""
    kind, cfg = type(layer).__name__, layer.get_config()
    groups = plan.groups
    if kind in PRODUCERS and cfg.get("groups", 1) == 1 and \
            cfg.get("data_format", "channels_last") == "channels_last" and len(ins) == 1:
        if ins[0].spread > 1 and kind != "Dense":
            return _opaque(plan, layer, ins, node)
        plan.inputs[id(layer)] = ins[0]
        g = groups.new(int(layer.get_weights()[0].shape[-1]))
        groups.get(g).producers.append(layer)
        plan.outputs[id(layer)] = g
        return Flow(g)
    if kind in CARRY and len(ins) == 1:
        return ins[0]  # no weights: the channels (and a Flatten's spread) pass through
    per_channel = (kind == "BatchNormalization" and _last_axis(cfg, _shape(node.input_shapes))) \
        or (kind == "DepthwiseConv2D" and cfg.get("depth_multiplier", 1) == 1
            and cfg.get("data_format", "channels_last") == "channels_last")
    if per_channel and len(ins) == 1 and ins[0].spread == 1:
        plan.inputs[id(layer)] = ins[0]
        return ins[0]
    if kind in MERGE and ins and all(f.spread == 1 for f in ins):
        g = ins[0].group
        for f in ins[1:]:
            g = groups.union(g, f.group)
        return Flow(g)
    if kind == "Flatten" and len(ins) == 1 and ins[0].spread == 1:
        shape = _shape(node.input_shapes)
        spatial = int(np.prod(shape[1:-1])) if None not in shape[1:-1] else None
        if spatial:
            return Flow(ins[0].group, spatial)
    return _opaque(plan, layer, ins, node)


def _opaque(plan: Plan, layer: Any, ins: list[Flow], node: Any) -> Flow:
    """A layer mobilec does not slice: its inputs keep every channel, its output is new."""
    for f in ins:
        plan.groups.fix(f.group, f"feeds {layer.name}")
    if ins:
        plan.kept_whole.append(f"{layer.name} ({type(layer).__name__})")
    return Flow(plan.groups.new(_channels(_shape(node.output_shapes)),
                                fixed=f"made by {layer.name}"))


def _narrowed(layer: Any, plan: Plan) -> Replacement:
    """`layer` with its weights sliced to the kept channels of its input and output."""
    weights = layer.get_weights()
    flow = plan.inputs.get(id(layer))
    keep_in = _kept(plan, flow)
    out_g = plan.outputs.get(id(layer))
    keep_out = plan.groups.get(out_g).keep if out_g is not None else None
    kind = type(layer).__name__
    if kind in PRODUCERS and out_g is not None:
        kernel = weights[0]
        if keep_in is not None:
            kernel = np.take(kernel, keep_in, axis=-2)
        overrides: dict[str, Any] = {}
        if keep_out is not None:
            kernel = np.take(kernel, keep_out, axis=-1)
            overrides = {"units": len(keep_out)} if kind == "Dense" else \
                {"filters": len(keep_out)}
            weights = [kernel] + [np.take(w, keep_out, axis=-1) for w in weights[1:]]
        else:
            weights = [kernel, *weights[1:]]
        return [(clone_layer(layer, **overrides), weights)]
    if keep_in is not None and weights:
        axis = 2 if kind == "DepthwiseConv2D" else -1
        sliced = [np.take(weights[0], keep_in, axis=axis)] + \
            [np.take(w, keep_in, axis=-1) for w in weights[1:]]
        return [(clone_layer(layer), sliced)]
    return [(clone_layer(layer), weights)]


def _kept(plan: Plan, flow: Flow | None) -> np.ndarray | None:
    """Input indices kept for a flow (spread over a Flatten's positions), or None: all."""
    if flow is None:
        return None
    group = plan.groups.get(flow.group)
    if group.keep is None:
        return None
    if flow.spread == 1:
        return group.keep
    # Flatten of (…, C) row-major: position p, channel c sits at p * C + c
    return (np.arange(flow.spread)[:, None] * group.size + group.keep[None, :]).reshape(-1)


def _importance(group: Group) -> np.ndarray:
    score = np.zeros(group.size)
    for layer in group.producers:
        kernel = layer.get_weights()[0]
        norms = np.sqrt((kernel.reshape(-1, kernel.shape[-1]) ** 2).sum(axis=0))
        score += norms / (norms.mean() or 1.0)
    return score


def _shape(shapes: Any) -> list[Any]:
    """The first shape of a node's input/output shapes, as a list of dims."""
    if isinstance(shapes, (list, tuple)) and shapes and not isinstance(shapes[0], (int, type(None))):
        shapes = shapes[0]
    return list(shapes.as_list() if hasattr(shapes, "as_list") else shapes)


def _channels(shape: Any) -> int:
    dims = list(shape)
    return int(dims[-1]) if dims and dims[-1] is not None else 0


def _last_axis(cfg: dict[str, Any], shape: list[Any]) -> bool:
    axis = cfg.get("axis", -1)
    axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
    return isinstance(axis, int) and axis in (-1, len(shape) - 1)


def keras_latency(model: Any, x1: Any) -> float:
    """Median ms of one batch-1 call of the model as a tf.function (the host's TensorFlow)."""
    import tensorflow as tf

    import_tf_keras()
    fn = tf.function(lambda t: model(t, training=False))
    x = [tf.constant(a) for a in x1] if isinstance(x1, list) else tf.constant(x1)
    return measure_latency(lambda: fn(x).numpy())["median"]
