"""Rebuild a tf_keras Sequential/functional model with some layers replaced.

distill (narrower student) and factorize (one layer -> two low-rank layers) both
need a copy of the model's graph in which chosen layers are swapped. Keras'
`clone_model` maps one layer to exactly one layer, so this module walks the
graph itself, the way tf_keras' Functional runs it, and calls a replacement
function per layer. Every layer of the result is a fresh object: the new model
never shares variables with the old one (the old one may still be a teacher).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mobilec.errors import UnsupportedError, first_line
from mobilec.util.tfenv import import_tf_keras

# What a replacement function returns for one layer: the layers to call in
# sequence in its place, each with the weights to load once it is built
# (None: keep its fresh initialization). A nested model may come back as one
# already-built layer with weights None.
Replacement = list[tuple[Any, list[np.ndarray] | None]]
ReplaceFn = Callable[[Any], Replacement]


def clone_layer(layer: Any, **overrides: Any) -> Any:
    """A new layer of the same class from the layer's config, with keys overridden."""
    config = layer.get_config()
    config.update(overrides)
    return type(layer).from_config(config)


def same_layer(layer: Any) -> Replacement:
    """The identity replacement: a fresh copy carrying the same weights."""
    if is_model(layer):
        return [(rebuild(layer, same_layer), None)]
    return [(clone_layer(layer), layer.get_weights())]


def is_model(layer: Any) -> bool:
    tfk = import_tf_keras()
    return isinstance(layer, tfk.Model)


def graph_nodes(model: Any) -> list[Any]:
    """The model's own call nodes (not its inputs), inputs first."""
    by_depth = getattr(model, "_nodes_by_depth", None)
    if not by_depth:
        raise UnsupportedError(
            f"model '{model.name}' has no layer graph (a subclassed or unbuilt model)",
            hint="mobilec rebuilds Sequential/functional models only; give a model built with "
                 "keras.Input, or a student model file")
    return [n for depth in sorted(by_depth, reverse=True) for n in by_depth[depth] if not n.is_input]


class _Reusable(list):
    """tf_keras' Node.map_arguments pops each input once per use; never run dry."""
    def pop(self, index: int = -1) -> Any:  # noqa: ARG002 - same signature as list.pop
        return self[0]


def rebuild(model: Any, replace: ReplaceFn, name: str | None = None) -> Any:
    """A new model with each layer swapped for `replace(layer)`; shared layers stay shared."""
    tfk = import_tf_keras()
    if isinstance(model, tfk.Sequential) and model.inputs:
        return _rebuild_sequential(model, replace, name or model.name, tfk)
    return _rebuild_functional(model, replace, name or model.name, tfk)


def _fresh_input(tensor: Any, tfk: Any) -> Any:
    return tfk.Input(batch_shape=tuple(tensor.shape), dtype=tensor.dtype,
                     name=tensor.name.split(":")[0])


def _rebuild_sequential(model: Any, replace: ReplaceFn, name: str, tfk: Any) -> Any:
    pending: Replacement = []
    for layer in model.layers:
        pending.extend(replace(layer))
    new = _build(lambda: tfk.Sequential([_fresh_input(model.inputs[0], tfk)]
                                        + [layer for layer, _ in pending], name=name), model)
    _load_weights(pending)
    return new


def _rebuild_functional(model: Any, replace: ReplaceFn, name: str, tfk: Any) -> Any:
    inputs = [_fresh_input(t, tfk) for t in model.inputs]
    tensors: dict[str, Any] = {str(id(old)): _Reusable([new]) for old, new in zip(
        model.inputs, inputs, strict=True)}
    made: dict[int, Replacement] = {}
    pending: Replacement = []

    def build() -> Any:
        for node in graph_nodes(model):
            if any(t not in tensors for t in node.flat_input_ids):
                continue  # a node of another model that shares this layer
            layers = made.get(id(node.layer))
            if layers is None:
                layers = made[id(node.layer)] = replace(node.layer)
                pending.extend(layers)
            args, kwargs = node.map_arguments(tensors)
            if len(layers) == 1:
                out = layers[0][0](*args, **kwargs)
            else:
                # A chain replaces a single-input layer (Dense, Conv): feed it forward.
                out = args[0]
                for layer, _ in layers:
                    out = layer(out)
            flat = out if isinstance(out, (list, tuple)) else [out]
            for out_id, value in zip(node.flat_output_ids, flat, strict=True):
                tensors[out_id] = _Reusable([value])
        outputs = [tensors[str(id(t))][0] for t in model.outputs]
        return tfk.Model(inputs, outputs if len(outputs) > 1 else outputs[0], name=name)

    new = _build(build, model)
    _load_weights(pending)
    return new


def _build(make: Callable[[], Any], model: Any) -> Any:
    try:
        return make()
    except (ValueError, TypeError) as exc:
        first = first_line(exc)
        raise UnsupportedError(
            f"could not rebuild model '{model.name}' with the changed layers: {first}",
            hint="a layer's config may depend on the changed sizes (e.g. a Reshape); "
                 "give a student model file instead of {width}, or report the model's summary()"
        ) from None


def _load_weights(pending: Replacement) -> None:
    for layer, weights in pending:
        if weights is not None:
            layer.set_weights(weights)


def unique_name(model: Any, wanted: str, taken: set[str]) -> str:
    """`wanted`, or `wanted_2`, … : layer names must be unique within a model."""
    names = taken | {layer.name for layer in model.layers}
    name, i = wanted, 2
    while name in names:
        name, i = f"{wanted}_{i}", i + 1
    taken.add(name)
    return name


def output_layers(model: Any) -> set[int]:
    """ids of the layers that give the model's outputs their size.

    Walks back from each output through layers without units/filters (Activation,
    Softmax, Reshape, …) to the first Dense/Conv-like layer: its width is the
    number of classes/outputs and must not change.
    """
    found: set[int] = set()
    seen: set[int] = set()
    stack = [t._keras_history for t in model.outputs]
    while stack:
        history = stack.pop()
        layer = history.layer
        if layer is None or id(layer) in seen:
            continue
        seen.add(id(layer))
        config = _config(layer)
        if "units" in config or "filters" in config or is_model(layer):
            found.add(id(layer))
            continue
        node = layer._inbound_nodes[history.node_index]
        stack.extend(t._keras_history for t in node.keras_inputs)
    return found


def _config(layer: Any) -> dict[str, Any]:
    try:
        return layer.get_config()
    except NotImplementedError:
        return {}
