"""Repair what tf2onnx leaves in an .onnx that onnxruntime rejects as an invalid graph.

tf2onnx keeps an op it has no handler for as a node of the same name in the default domain
and still writes the file; onnxruntime then refuses the whole model ("No Op registered for
Erfc"). Two such ops come from exact GELU, which every transformer and ConvNeXt uses:

- TensorFlow's `tf.nn.gelu(approximate=False)` is `0.5·x·erfc(-x/√2)`: TF op `Erfc`;
- the TFLite converter fuses GELU into one `GELU` builtin: tf2onnx's `TFL_GELU`.

Both are rewritten with standard ONNX ops (Erf exists since opset 9) so the file loads on
every runtime. A whole exact GELU is written in the form PyTorch exports,
`Div(x, √2) → Erf → Add(1) → Mul(x) → Mul(0.5)`, because that form is what consumers
recognize: onnxruntime fuses it into its Gelu kernel, and onnx2tf into TFLite's GELU builtin
(a bare Erf has no TFLite builtin, and onnx2tf's pseudo-Erf divides by |x|, which int8
cannot run).
Any other op the ONNX schema does not know is named in a ConversionError instead of
letting the runtime fail with a bare INVALID_GRAPH.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mobilec.errors import ConversionError
from mobilec.sources.onnx_gelu import NodeBuilder, canonical_gelu, fuse_gelu

_SQRT_2_PI = 0.7978845608028654


def _erfc(b: NodeBuilder, node: Any) -> None:
    # erfc(z) = 1 - erf(z): exact up to float32 rounding where erfc is tiny (x << 0 in
    # GELU, where the product with x is ~0 either way).
    erf = b.op("Erf", [node.input[0]])
    b.op("Sub", [b.const(1.0), erf], node.output[0])


def _gelu(b: NodeBuilder, node: Any) -> None:
    x = node.input[0]
    approximate = any(a.name == "approximate" and a.i for a in node.attribute)
    if approximate:  # 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
        cube = b.op("Mul", [b.op("Mul", [x, x]), x])
        inner = b.op("Add", [x, b.op("Mul", [cube, b.const(0.044715)])])
        core = b.op("Tanh", [b.op("Mul", [inner, b.const(_SQRT_2_PI)])])
    else:
        canonical_gelu(b, x, node.output[0])
        return
    half_x = b.op("Mul", [x, b.const(0.5)])
    b.op("Mul", [half_x, b.op("Add", [core, b.const(1.0)])], node.output[0])


_REWRITES = {"Erfc": _erfc, "TFL_GELU": _gelu}


def repair_onnx(path: Path) -> list[str]:
    """Rewrite the ops tf2onnx left unconverted that have a standard equivalent, in place.
    Returns one line per kind rewritten (for the report); raises ConversionError naming any
    op that is left and that no ONNX runtime can load."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    counts: dict[str, int] = {}
    fused = fuse_gelu(graph)
    if fused:
        counts["GELU (Erf/Erfc)"] = fused
    if any(n.domain in ("", "ai.onnx") and n.op_type in _REWRITES for n in graph.node):
        new_nodes: list[Any] = []
        for i, node in enumerate(graph.node):
            fix = _REWRITES.get(node.op_type) if node.domain in ("", "ai.onnx") else None
            if fix is None:
                new_nodes.append(node)
                continue
            b = NodeBuilder(graph, f"{node.name or node.op_type}/mobilec_repair{i}")
            fix(b, node)
            new_nodes.extend(b.nodes)  # in place of the node: the graph stays sorted
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
        del graph.node[:]
        graph.node.extend(new_nodes)
    if counts:
        onnx.save(model, str(path))
    unknown = unregistered_ops(model)
    if unknown:
        listed = ", ".join(f"{op} ({n})" for op, n in sorted(unknown.items()))
        raise ConversionError(f"tf2onnx left ops ONNX has no definition for: {listed}; "
                              "onnxruntime rejects such a file (INVALID_GRAPH)",
                              hint="these TensorFlow ops have no tf2onnx handler; replace the "
                                   "layers that make them, or use another route/format")
    return [f"{n} {op} node(s) rewritten with standard ONNX ops" for op, n in counts.items()]


def unregistered_ops(model: Any) -> dict[str, int]:
    """Default-domain ops the ONNX schema does not define at the model's opset (what tf2onnx
    leaves when it has no handler); custom-domain ops are the runtime's business."""
    import onnx

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    local = {f.name for f in model.functions}
    unknown: dict[str, int] = {}
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type in local:
            continue
        try:
            onnx.defs.get_schema(node.op_type, opset or onnx.defs.onnx_opset_version(), "")
        except onnx.defs.SchemaError:
            unknown[node.op_type] = unknown.get(node.op_type, 0) + 1
    return unknown
