"""ONNX `auto_pad="SAME_UPPER"/"SAME_LOWER"` made explicit for onnx2torch, which raises
'"SAME_UPPER" auto_pad is not implemented' on any Conv or pool that uses it. tf2onnx writes
it for a Keras `padding="same"` layer whose pads it could not compute (the corpus's Keras
ConvNeXt-tiny: its 7x7 depthwise convs at 1x1 spatial size).

Where the node's input has known spatial dims, the pads are what the ONNX spec says SAME
means: output = ceil(in / stride), total = max((out - 1) * stride + (k - 1) * dilation + 1
- in, 0), the odd one at the end (SAME_UPPER) or at the beginning (SAME_LOWER); auto_pad
becomes NOTSET. Same arithmetic, so the rewritten graph computes what the original does.
A node whose spatial dims are unknown stays as it is (onnx2torch's error then stands; the
bridge's second try folds the graph at one sample's shapes, where they are known).

onnx2torch's AveragePool takes symmetric pads only; with asymmetric ones the pool becomes
Pad (zeros) -> AveragePool without pads -> Mul by kernel size / taps inside the input per
output position (a constant: ONNX's default count_include_pad=0 averages over the real
taps only, as onnxruntime does for SAME), or no Mul with count_include_pad=1.
ConvTranspose is rewritten only when its total padding is even (onnx2torch takes symmetric
pads only there too) and no output_shape is given; a pool with ceil_mode=1, or an
AveragePool with dilations, stays as it is.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

_SAME = ("SAME_UPPER", "SAME_LOWER")
_OPS = ("Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool")


def with_explicit_pads(path: Path) -> Any:
    """What to hand onnx2torch for the .onnx at `path`: the path itself when no node pads
    with auto_pad SAME_*, else the graph (a ModelProto) with those pads made explicit."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    head = onnx.load(str(path), load_external_data=False)
    if not any(_auto_pad(n) in _SAME for n in head.graph.node if n.op_type in _OPS):
        return str(path)
    with tempfile.TemporaryDirectory(prefix="mobilec-autopad-") as tmp:
        # by path: a graph past protobuf's 2 GB has its weights in external files
        inferred = Path(tmp) / "inferred.onnx"
        try:
            onnx.shape_inference.infer_shapes_path(str(path), str(inferred), data_prop=True)
        except Exception:  # noqa: BLE001 - then onnx2torch says what it cannot take
            return str(path)
        model = onnx.load(str(inferred), load_external_data=False)
    load_external_data_for_model(model, str(path.parent))
    return model if explicit_pads(model) else str(path)


def explicit_pads(model: Any) -> int:
    """Rewrite, in place, every Conv/ConvTranspose/MaxPool/AveragePool/LpPool of the main
    graph that pads with SAME_UPPER/SAME_LOWER and whose input's spatial dims are known;
    the number rewritten."""
    graph = model.graph
    shapes = _known_shapes(graph)
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                default=17)
    nodes, done = [], 0
    for node in graph.node:
        extra = None
        if node.op_type in _OPS and _auto_pad(node) in _SAME:
            extra = _rewrite(node, shapes, graph, opset)
        nodes.extend(extra if extra is not None else [node])
        done += extra is not None
    if done:
        del graph.node[:]
        graph.node.extend(nodes)
    return done


def _rewrite(node: Any, shapes: dict[str, list[int | None]], graph: Any,
             opset: int) -> list[Any] | None:
    """The node(s) replacing `node` with explicit pads, or None to leave it."""
    shape = shapes.get(node.input[0])
    attrs = {a.name: a for a in node.attribute}
    if shape is None or len(shape) < 3 or any(d is None for d in shape[2:]) \
            or _ints(attrs, "ceil_mode", [0])[0]:
        return None
    spatial = [int(d) for d in shape[2:]]  # type: ignore[arg-type]
    rank = len(spatial)
    kernel = _ints(attrs, "kernel_shape", None) or _weight_kernel(node, shapes)
    strides = _ints(attrs, "strides", [1] * rank)
    dilations = _ints(attrs, "dilations", [1] * rank)
    if kernel is None or not len(kernel) == len(strides) == len(dilations) == rank:
        return None
    reach = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    if node.op_type == "ConvTranspose":
        return _transpose(node, attrs, spatial, strides, reach)
    totals = [max((math.ceil(i / s) - 1) * s + r - i, 0)
              for i, s, r in zip(spatial, strides, reach, strict=True)]
    ends = [t // 2 if _auto_pad(node) == "SAME_LOWER" else t - t // 2 for t in totals]
    begins = [t - e for t, e in zip(totals, ends, strict=True)]
    if node.op_type == "AveragePool":
        if any(d != 1 for d in dilations):
            return None
        if begins != ends:
            return _padded_average(node, attrs, graph, opset, spatial, strides,
                                   (kernel, begins, ends))
    _set_pads(node, begins + ends)
    return [node]


def _transpose(node: Any, attrs: dict[str, Any], spatial: list[int], strides: list[int],
               reach: list[int]) -> list[Any] | None:
    """ConvTranspose's SAME (output = in * stride), only when symmetric."""
    if "output_shape" in attrs:
        return None
    extra = _ints(attrs, "output_padding", [0] * len(spatial))
    totals = [s * (i - 1) + o + r - i * s
              for i, s, o, r in zip(spatial, strides, extra, reach, strict=True)]
    if any(t < 0 or t % 2 for t in totals):
        return None
    _set_pads(node, [t // 2 for t in totals] * 2)
    return [node]


def _padded_average(node: Any, attrs: dict[str, Any], graph: Any, opset: int,
                    spatial: list[int], strides: list[int],
                    pads: tuple[list[int], ...]) -> list[Any] | None:
    """Pad -> AveragePool (no pads) [-> Mul by kernel size / real taps]: asymmetric pads
    that onnx2torch's AveragePool cannot take, the same average."""
    import numpy as np
    from onnx import helper, numpy_helper

    kernel, begins, ends = pads
    dtype = _elem_type(graph, node.input[0])
    if opset < 11 or dtype is None:
        return None
    rank = len(spatial)
    base = f"{node.output[0]}__autopad"
    graph.initializer.append(numpy_helper.from_array(
        np.array([0, 0, *begins, 0, 0, *ends], dtype=np.int64), f"{base}_pads"))
    pad = helper.make_node("Pad", [node.input[0], f"{base}_pads"], [f"{base}_padded"],
                           name=f"{base}_pad")
    _set_pads(node, [0] * 2 * rank)
    node.input[0] = f"{base}_padded"
    if _ints(attrs, "count_include_pad", [0])[0]:
        return [pad, node]
    counts = np.ones([1], dtype=np.float64)
    for i, s, k, b in zip(spatial, strides, kernel, begins, strict=True):
        starts = np.arange(math.ceil(i / s)) * s - b  # each output's first tap, unpadded
        taps = np.minimum(starts + k, i) - np.maximum(starts, 0)
        counts = np.multiply.outer(counts, taps)
    scale = (math.prod(kernel) / counts).reshape(1, 1, *counts.shape[1:])
    graph.initializer.append(numpy_helper.from_array(
        scale.astype(helper.tensor_dtype_to_np_dtype(dtype)), f"{base}_scale"))
    pooled, node.output[0] = node.output[0], f"{base}_pooled"
    mul = helper.make_node("Mul", [f"{base}_pooled", f"{base}_scale"], [pooled],
                           name=f"{base}_scale")
    return [pad, node, mul]


def _set_pads(node: Any, pads: list[int]) -> None:
    from onnx import helper

    kept = [a for a in node.attribute if a.name not in ("auto_pad", "pads")]
    del node.attribute[:]
    node.attribute.extend(kept)
    node.attribute.extend([helper.make_attribute("pads", pads)])


def _auto_pad(node: Any) -> str:
    for a in node.attribute:
        if a.name == "auto_pad":
            return a.s.decode()
    return "NOTSET"


def _ints(attrs: dict[str, Any], name: str, default: list[int] | None) -> list[int] | None:
    if name not in attrs:
        return default
    a = attrs[name]
    return [int(v) for v in a.ints] if a.ints else [int(a.i)]


def _weight_kernel(node: Any, shapes: dict[str, list[int | None]]) -> list[int] | None:
    """A Conv's kernel from its weight's shape, when the node has no kernel_shape."""
    weight = shapes.get(node.input[1]) if len(node.input) > 1 else None
    if weight is None or any(d is None for d in weight[2:]):
        return None
    return [int(d) for d in weight[2:]]  # type: ignore[arg-type]


def _known_shapes(graph: Any) -> dict[str, list[int | None]]:
    """Each value's shape (a None for a dim not known as a number), initializers too."""
    shapes: dict[str, list[int | None]] = {i.name: list(i.dims) for i in graph.initializer}
    for info in [*graph.input, *graph.value_info, *graph.output]:
        tensor = info.type.tensor_type
        if tensor.HasField("shape"):
            shapes[info.name] = [d.dim_value if d.HasField("dim_value") else None
                                 for d in tensor.shape.dim]
    return shapes


def _elem_type(graph: Any, name: str) -> int | None:
    for info in [*graph.input, *graph.value_info, *graph.output]:
        if info.name == name and info.type.tensor_type.elem_type:
            return int(info.type.tensor_type.elem_type)
    return None
