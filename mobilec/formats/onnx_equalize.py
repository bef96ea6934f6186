"""Cross-layer equalization on an ONNX graph (the initializers are rescaled with numpy).

The same maths as mobilec.training.equalize (Nagel et al. 2019): for a producer
(Conv, Gemm, MatMul with an optional bias Add) whose output reaches a consumer
(Conv, Gemm, MatMul) only through positively homogeneous ops (Relu, LeakyRelu,
pooling, Transpose, Identity/Dropout, a Flatten/Reshape to 2-D), channel i of
the producer is divided by s_i and the consumer's matching input weights are
multiplied by s_i. Clip (ReLU6) is not positively homogeneous: such pairs are
skipped and reported. A BatchNormalization right after a Conv is folded into it
first. Float outputs are verified with onnxruntime before/after (<= 1e-5 relative).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mobilec.errors import ConversionError

MAX_REL_DIFF = 1e-5
PASSES = 50
CONVERGED = 1e-6
PROBE_BATCH = 16
PASS_THROUGH = {"Relu", "LeakyRelu", "PRelu", "MaxPool", "AveragePool", "GlobalAveragePool",
                "GlobalMaxPool", "Identity", "Dropout"}


@dataclass
class _Unit:
    """A linear op with its weights as initializers: out = x . W (+ b) per channel."""
    node: Any
    weight: str
    out: str  # the tensor that carries the unit's result (after its bias Add, if any)
    bias: str | None = None
    kind: str = "conv"  # conv | depthwise | matmul | gemm-t (Gemm with transB=1)


@dataclass
class _Graph:
    model: Any
    inits: dict[str, np.ndarray]
    consumers: dict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))
    producer: dict[str, Any] = field(default_factory=dict)
    init_uses: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    outputs: set[str] = field(default_factory=set)
    shapes: dict[str, list[int | None]] = field(default_factory=dict)

    def only_consumer(self, tensor: str) -> Any:
        cons = self.consumers.get(tensor, [])
        return cons[0] if len(cons) == 1 and tensor not in self.outputs else None

    def private(self, name: str | None) -> bool:
        return name is not None and name in self.inits and self.init_uses[name] == 1


def equalize_onnx(model_proto: Any, *, calib: dict[str, np.ndarray] | None = None
                  ) -> tuple[Any, dict[str, Any]]:
    """A new, equalized ModelProto and a report (pairs, range ratios, verification)."""
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(model_proto)
    g = _index(model)
    folded = _fold_batchnorm(g)
    if folded:
        g = _index(model)
    pairs, skipped = _pairs(g)
    for p in pairs:
        p["range_ratio_before"] = _spread(_out_ranges(g, p["first"]))
    passes = _balance(g, pairs) if pairs else 0
    for p in pairs:
        p["range_ratio_after"] = _spread(_out_ranges(g, p["first"]))
    _write_back(g)
    feeds, note = _probe(model_proto, calib)
    diff = _max_rel_diff(model_proto, model, feeds)
    if not diff <= MAX_REL_DIFF:
        raise ConversionError(
            f"cross-layer equalization changed the ONNX model's float outputs by {diff:.3g} "
            f"(relative), more than {MAX_REL_DIFF:g}", where=model.graph.name or "onnx graph",
            hint="set quantize.equalize: false and report the model (opset, op types)")
    report = {
        "bn_folded": folded,
        "pairs": [{"first": p["first"].node.name, "second": p["second"].node.name,
                   "via": p["via"], "channels": p["channels"],
                   "range_ratio_before": round(p["range_ratio_before"], 3),
                   "range_ratio_after": round(p["range_ratio_after"], 3)} for p in pairs],
        "skipped": skipped, "passes": passes, "max_rel_diff": float(diff), "verified_on": note,
    }
    return model, report


# -- graph --------------------------------------------------------------------------

def _index(model: Any) -> _Graph:
    import onnx
    from onnx import numpy_helper

    graph = model.graph
    g = _Graph(model, {i.name: numpy_helper.to_array(i).astype(np.float64)
                       for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT})
    for node in graph.node:
        for t in node.input:
            if t in g.inits:
                g.init_uses[t] += 1
            else:
                g.consumers[t].append(node)
        for t in node.output:
            g.producer[t] = node
    g.outputs = {o.name for o in graph.output}
    try:
        inferred = onnx.shape_inference.infer_shapes(model).graph
        for vi in [*inferred.value_info, *inferred.input, *inferred.output]:
            dims = vi.type.tensor_type.shape.dim
            g.shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    except Exception:  # noqa: BLE001 - shapes only widen what can be paired
        pass
    return g


def _attr(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _unit(g: _Graph, node: Any) -> _Unit | None:
    """The node as a linear unit whose weights CLE may rescale, or None."""
    if node.op_type == "Conv" and len(node.input) >= 2 and g.private(node.input[1]):
        w = g.inits[node.input[1]]
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if bias is not None and not g.private(bias):
            return None
        group = _attr(node, "group", 1)
        kind = "conv" if group == 1 else "depthwise" if w.shape[1] == 1 else None
        return _Unit(node, node.input[1], node.output[0], bias, kind) if kind else None
    if node.op_type == "Gemm" and len(node.input) >= 2 and g.private(node.input[1]):
        if _attr(node, "transA", 0) or _attr(node, "alpha", 1.0) != 1.0:
            return None
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if bias is not None and (not g.private(bias) or _attr(node, "beta", 1.0) != 1.0
                                 or g.inits[bias].ndim != 1):
            return None
        kind = "gemm-t" if _attr(node, "transB", 0) else "matmul"
        return _Unit(node, node.input[1], node.output[0], bias, kind)
    if node.op_type == "MatMul" and g.private(node.input[1]) and g.inits[node.input[1]].ndim == 2:
        unit = _Unit(node, node.input[1], node.output[0], None, "matmul")
        add = g.only_consumer(node.output[0])
        if add is not None and add.op_type == "Add":
            other = [t for t in add.input if t != node.output[0]]
            if (len(other) == 1 and g.private(other[0]) and g.inits[other[0]].ndim == 1
                    and g.inits[other[0]].shape[0] == g.inits[node.input[1]].shape[1]):
                unit.bias, unit.out = other[0], add.output[0]
        return unit
    return None


def _n_out(g: _Graph, u: _Unit) -> int:
    w = g.inits[u.weight]
    return w.shape[0] if u.kind in ("conv", "depthwise", "gemm-t") else w.shape[1]


def _fold_batchnorm(g: _Graph) -> list[dict[str, str]]:
    from onnx import helper

    folded = []
    for bn in list(g.model.graph.node):
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1:
            continue
        conv = g.producer.get(bn.input[0])
        unit = _unit(g, conv) if conv is not None and conv.op_type == "Conv" else None
        if unit is None or g.only_consumer(conv.output[0]) is not bn:
            continue
        if not all(g.private(t) for t in bn.input[1:5]):
            continue
        scale, beta, mean, var = (g.inits[t] for t in bn.input[1:5])
        f = scale / np.sqrt(var + _attr(bn, "epsilon", 1e-5))
        w = g.inits[unit.weight]
        g.inits[unit.weight] = w * f.reshape(-1, *([1] * (w.ndim - 1)))
        old_bias = g.inits[unit.bias] if unit.bias else np.zeros_like(f)
        bias_name = unit.bias or f"{conv.name or conv.output[0]}_bn_bias"
        g.inits[bias_name] = (old_bias - mean) * f + beta
        if not unit.bias:
            conv.input.append(bias_name)
            g.model.graph.initializer.append(helper.make_tensor(bias_name, 1, [f.size], [0.0] * f.size))
        conv.output[0] = bn.output[0]
        g.model.graph.node.remove(bn)
        folded.append({"batchnorm": bn.name, "into": conv.name})
    if folded:
        _write_back(g)
    return folded


def _pairs(g: _Graph) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    pairs, skipped = [], []
    for node in g.model.graph.node:
        unit = _unit(g, node)
        if unit is None:
            continue
        channels = _n_out(g, unit)
        axis = 1 if unit.kind in ("conv", "depthwise") else -1
        pair, why = _follow(g, unit, channels, axis)
        if pair is not None:
            pairs.append(pair)
        elif why:
            skipped.append({"layer": node.name, "reason": why})
    return pairs, skipped


def _follow(g: _Graph, first: _Unit, channels: int, axis: int
            ) -> tuple[dict[str, Any] | None, str | None]:
    """From `first`'s output through channel-preserving ops to the next linear unit."""
    tensor, cmap, via = first.out, None, []
    while True:
        node = g.only_consumer(tensor)
        if node is None:
            return None, None
        second = _unit(g, node)
        if second is not None and node.input[0] == tensor:
            return _as_pair(g, first, second, channels, axis, cmap, via, tensor)
        op = node.op_type
        if op == "Clip":
            return None, ("Clip (ReLU6) clips at a fixed value, not a scaled one: not positively "
                          "homogeneous, so rescaling through it would change the function")
        if op == "Transpose" and cmap is None:
            perm = list(_attr(node, "perm", []))
            rank = len(perm)
            axis = perm.index(axis % rank) if perm else axis
        elif op in ("Reshape", "Flatten") and cmap is None:
            cmap = _flat_map(g, tensor, node.output[0], axis, channels)
            if cmap is None:
                return None, None
        elif op not in PASS_THROUGH or node.input[0] != tensor:
            return None, None
        via.append(node.name)
        tensor = node.output[0]


def _flat_map(g: _Graph, src: str, dst: str, axis: int, channels: int) -> np.ndarray | None:
    """Channel of each column of a (N, -1) flattening of `src`, C order."""
    shape, out = g.shapes.get(src), g.shapes.get(dst)
    if not shape or not out or len(out) != 2 or any(d is None for d in shape[1:]):
        return None
    axis %= len(shape)
    if axis == 0 or shape[axis] != channels or out[1] not in (None, int(np.prod(shape[1:]))):
        return None
    inner = int(np.prod(shape[axis + 1:]))
    return (np.arange(int(np.prod(shape[1:]))) // inner) % channels


def _as_pair(g: _Graph, first: _Unit, second: _Unit, channels: int, axis: int,
             cmap: np.ndarray | None, via: list[str], tensor: str
             ) -> tuple[dict[str, Any] | None, str | None]:
    w2 = g.inits[second.weight]
    rank = len(g.shapes.get(tensor) or []) or None
    if second.kind in ("conv", "depthwise"):
        rows = w2.shape[1] if second.kind == "conv" else w2.shape[0]
        ok = cmap is None and (axis == 1 or (rank and axis % rank == 1)) and (
            rows == channels if second.kind == "conv" else w2.shape[0] % channels == 0)
    else:
        rows = w2.shape[0] if second.kind == "matmul" else w2.shape[1]
        last = axis == -1 or (rank is not None and axis % rank == rank - 1)
        ok = (len(cmap) == rows) if cmap is not None else (last and rows == channels)
    if not ok:
        return None, f"'{second.node.name}' input does not map onto the channels of " \
                     f"'{first.node.name}'"
    return {"first": first, "second": second, "via": via, "channels": channels,
            "cmap": np.arange(channels) if cmap is None else cmap}, None


# -- the maths --------------------------------------------------------------------

def _out_matrix(g: _Graph, u: _Unit) -> np.ndarray:
    """The unit's weights as (out channels, everything else)."""
    w = g.inits[u.weight]
    return w.reshape(w.shape[0], -1) if u.kind != "matmul" else w.T


def _out_ranges(g: _Graph, u: _Unit) -> np.ndarray:
    return np.abs(_out_matrix(g, u)).max(axis=1)


def _scale_out(g: _Graph, u: _Unit, f: np.ndarray) -> None:
    w = g.inits[u.weight]
    g.inits[u.weight] = w * f if u.kind == "matmul" else w * f.reshape(-1, *([1] * (w.ndim - 1)))
    if u.bias:
        g.inits[u.bias] = g.inits[u.bias] * f


def _in_rows(g: _Graph, u: _Unit, channels: int) -> tuple[np.ndarray, int]:
    """(|w| max per input row, axis of the rows) for the consumer's weights."""
    w = g.inits[u.weight]
    axis = {"conv": 1, "depthwise": 0, "matmul": 0, "gemm-t": 1}[u.kind]
    rows = np.moveaxis(np.abs(w), axis, 0).reshape(w.shape[axis], -1).max(axis=1)
    return rows, axis


def _balance(g: _Graph, pairs: list[dict[str, Any]]) -> int:
    for done in range(1, PASSES + 1):
        moved = 0.0
        for p in pairs:
            first, second, cmap, channels = p["first"], p["second"], p["cmap"], p["channels"]
            if second.kind == "depthwise":  # output channel o reads input channel o // mult
                mult = g.inits[second.weight].shape[0] // channels
                cmap = np.repeat(np.arange(channels), mult)
            r1 = _out_ranges(g, first)
            rows, axis = _in_rows(g, second, channels)
            r2 = np.zeros(channels)
            np.maximum.at(r2, cmap, rows)
            ok = (r1 > 0) & (r2 > 0)
            s = np.ones(channels)
            s[ok] = np.sqrt(r1[ok] * r2[ok]) / r2[ok]
            moved = max(moved, float(np.abs(np.log(s)).max()))
            _scale_out(g, first, 1.0 / s)
            w2 = g.inits[second.weight]
            shape = [1] * w2.ndim
            shape[axis] = -1
            g.inits[second.weight] = w2 * s[cmap].reshape(shape)
        if moved < CONVERGED:
            return done
    return PASSES


def _spread(ranges: np.ndarray) -> float:
    live = ranges[ranges > 0]
    return float(live.max() / np.median(live)) if live.size else 1.0


def _write_back(g: _Graph) -> None:
    from onnx import numpy_helper

    for init in g.model.graph.initializer:
        if init.name in g.inits:
            init.CopyFrom(numpy_helper.from_array(g.inits[init.name].astype(np.float32), init.name))


# -- verification ---------------------------------------------------------------------

def _session(model: Any) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    # No graph fusion: compare the two graphs' own arithmetic, as written.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _probe(model: Any, calib: dict[str, np.ndarray] | None) -> tuple[dict[str, np.ndarray], str]:
    if calib is not None:
        n = len(next(iter(calib.values())))
        return {k: np.asarray(v) for k, v in calib.items()}, f"calib ({n} samples)"
    rng = np.random.default_rng(0)
    feeds = {}
    for i in _session(model).get_inputs():
        shape = [d if isinstance(d, int) else PROBE_BATCH for d in i.shape]
        feeds[i.name] = (rng.random(shape).astype(np.float32) if "float" in i.type
                         else np.zeros(shape, dtype=np.int64))
    return feeds, f"random probe ({PROBE_BATCH} samples; no calib)"


def _max_rel_diff(before: Any, after: Any, feeds: dict[str, np.ndarray]) -> float:
    worst = 0.0
    for a, b in zip(_session(before).run(None, feeds), _session(after).run(None, feeds), strict=True):
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        worst = max(worst, float(np.abs(a - b).max() / max(float(np.abs(a).max()), 1e-12)))
    return worst
