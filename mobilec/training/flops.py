"""Parameters and FLOPs of a tf_keras model, counted from its layer graph.

FLOPs here are multiply-adds (MACs) of the layers that hold weights and do the
arithmetic: Dense, Conv1D/2D/3D (grouped too), their Transpose forms,
DepthwiseConv, SeparableConv and the simple recurrent layers. That is the usual
convention for mobile networks (MobileNet papers count the same way);
activations, pooling, normalization and element-wise ops are left out, and a
layer of another kind counts 0 and is named in `uncounted`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod
from typing import Any

from mobilec.training.surgery import graph_nodes, is_model
from mobilec.util.tfenv import import_tf_keras

# Layers with weights that do no multiply-adds worth counting.
_NO_MACS = ("BatchNormalization", "LayerNormalization", "GroupNormalization", "Embedding",
            "PReLU", "Normalization")


@dataclass
class Cost:
    params: int
    flops: int | None  # None when a spatial dimension is unknown (dynamic input shape)
    uncounted: list[str] = field(default_factory=list)  # weighted layers whose MACs are not known


def model_cost(model: Any) -> Cost:
    """Parameters (all weights) and multiply-adds for one sample."""
    cost = Cost(params=int(model.count_params()), flops=0)
    for node in graph_nodes(model):
        layer = node.layer
        if is_model(layer):
            inner = model_cost(layer)
            cost.uncounted += inner.uncounted
            cost.flops = None if cost.flops is None or inner.flops is None else cost.flops + inner.flops
            continue
        macs = layer_macs(layer, node.input_shapes, node.output_shapes)
        if macs is None:
            if layer.weights and type(layer).__name__ not in _NO_MACS:
                cost.uncounted.append(layer.name)
            continue
        if macs < 0:
            cost.flops = None
        elif cost.flops is not None:
            cost.flops += macs
    return cost


def layer_macs(layer: Any, in_shape: Any, out_shape: Any) -> int | None:
    """Multiply-adds of one call of `layer`; None: not a counted kind; -1: shape unknown."""
    tfk = import_tf_keras()
    L = tfk.layers  # noqa: N806 - the usual alias
    if isinstance(layer, L.Dense):
        kernel = layer.kernel
        return _times(_positions(out_shape, "channels_last"), int(prod(kernel.shape)))
    if isinstance(layer, (L.Conv1DTranspose, L.Conv2DTranspose, L.Conv3DTranspose)):
        # Every input position scatters a full kernel.
        return _times(_positions(in_shape, layer.data_format), int(prod(layer.kernel.shape)))
    if isinstance(layer, (L.SeparableConv1D, L.SeparableConv2D)):
        per = int(prod(layer.depthwise_kernel.shape)) + int(prod(layer.pointwise_kernel.shape))
        return _times(_positions(out_shape, layer.data_format), per)
    if isinstance(layer, (L.DepthwiseConv1D, L.DepthwiseConv2D)):
        return _times(_positions(out_shape, layer.data_format), int(prod(layer.depthwise_kernel.shape)))
    if isinstance(layer, (L.Conv1D, L.Conv2D, L.Conv3D)):
        # kernel is (k..., in/groups, out): each output position does kernel.size MACs.
        return _times(_positions(out_shape, layer.data_format), int(prod(layer.kernel.shape)))
    if isinstance(layer, (L.SimpleRNN, L.LSTM, L.GRU)):
        cell = layer.cell
        steps = _shape(in_shape)[0] if len(_shape(in_shape)) > 1 else None
        per = int(prod(cell.kernel.shape)) + int(prod(cell.recurrent_kernel.shape))
        return -1 if steps is None else steps * per
    return None


def _shape(shape: Any) -> tuple[Any, ...]:
    """One tensor's shape without the batch dimension."""
    if isinstance(shape, list) and shape and isinstance(shape[0], (tuple, list)):
        shape = shape[0]
    return tuple(shape)[1:]


def _positions(shape: Any, data_format: str | None) -> int | None:
    """How many spatial positions (or leading positions, for Dense) a tensor has."""
    dims = _shape(shape)
    spatial = dims[1:] if data_format == "channels_first" else dims[:-1]
    if any(d is None for d in spatial):
        return None
    return int(prod(spatial)) if spatial else 1


def _times(positions: int | None, per_position: int) -> int:
    return -1 if positions is None else positions * per_position
