"""Per-node int8 error of a .onnx with onnxruntime's qdq_loss_debug.

The float model and its static-QDQ int8 twin (the same quantize_onnx the .onnx
artifact uses) both run on the calibration data with every activation saved;
each activation of the int8 model is compared with the float one. Unlike the
TFLite debugger, the int8 model here feeds its own (already degraded) inputs
forward, so errors accumulate: a node is ranked by the SNR it *loses* relative
to its worst input (loss_db), which points at the node that broke the signal
rather than at every node after it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mobilec.diagnose.channels import through_passive
from mobilec.diagnose.common import (
    PASSIVE_OPS,
    ChannelAcc,
    Diagnosis,
    OpError,
    blame,
    keras_layer_names,
    layer_of,
    severity,
    snr_db,
)
from mobilec.formats.onnx import float32_onnx
from mobilec.formats.onnx_quant import quantize_onnx
from mobilec.state import ModelState

CLEAN_DB = 100.0  # SNR of an input that int8 never touched (graph inputs)


def diagnose_onnx(state: ModelState) -> Diagnosis:
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    float_path = float32_onnx(state)
    work = state.work_dir / f"diagnose-onnx-v{state.model_version}"
    work.mkdir(parents=True, exist_ok=True)
    qdq_path = work / "int8.onnx"
    quantize_onnx(state, float_path, "int8", qdq_path, preprocess=False)
    x = state.data.calibration.x.astype(np.float32)
    transpose = None
    if transpose:
        x = np.transpose(x, transpose)
    acts = {}
    for kind, path in (("float", float_path), ("int8", qdq_path)):
        aug = work / f"{kind}.augmented.onnx"
        modify_model_output_intermediate_tensors(str(path), str(aug))
        acts[kind] = collect_activations(str(aug), _reader(path, x))
    match = create_activation_matching(acts["int8"], acts["float"])
    graph = onnx.load(str(float_path)).graph
    scales = _activation_scales(onnx.load(str(qdq_path)).graph)
    rows = _rows(graph, match, scales, keras_layer_names(state), _shapes(float_path))
    rows.sort(key=severity)
    rows = blame(rows, _consumers(graph, {r.tensor for r in rows}))
    return Diagnosis(backend="onnx", mode="int8", samples=len(x), scope="cumulative", rows=rows)


def _reader(model_path: Path, x: np.ndarray) -> Iterator[dict[str, np.ndarray]]:
    import onnxruntime as ort

    name = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"]
                                ).get_inputs()[0].name
    return iter({name: x[i:i + 1]} for i in range(len(x)))


def _rows(graph: Any, match: dict[str, dict[str, Any]], scales: dict[str, float],
          layers: set[str], shapes: dict[str, list[int]] | None = None) -> list[OpError]:
    """One row per node whose output int8 quantizes, in graph (topological) order.

    SNR flows along the graph: a tensor int8 does not touch (a bias Add fused
    into its MatMul) carries its input's SNR, and a quantized graph input
    carries its own, so input quantization is not blamed on the first layer.
    """
    snr: dict[str, float] = {}
    for inp in graph.input:
        measured = _measure(match.get(inp.name))
        snr[inp.name] = CLEAN_DB if measured is None else _capped(measured[1])
    rows = []
    for node in graph.node:
        in_snr = min((snr[i] for i in node.input if i in snr), default=CLEAN_DB)
        for t in node.output:
            snr[t] = in_snr
        t = next((o for o in node.output if _measure(match.get(o)) is not None), None)
        if t is None:
            continue
        diff, out_snr, ref_sq = _measure(match[t])
        snr[t] = _capped(out_snr)
        scale = scales.get(t)
        rmse = math.sqrt(float(np.dot(diff, diff)) / max(diff.size, 1))
        rows.append(OpError(name=layer_of(node.name, layers), tensor=node.name, op=node.op_type,
                            rmse_scale=rmse / scale if scale else None,
                            max_abs_error=float(np.max(np.abs(diff))) if diff.size else 0.0,
                            snr_db=out_snr, scale=scale, loss_db=in_snr - snr[t],
                            **_channels(match[t], (shapes or {}).get(t)).figures()))
    return rows


def _channels(m: dict[str, Any], shape: list[int] | None) -> ChannelAcc:
    """Per-channel figures of one activation (the debugger keeps each sample flattened: its
    shape comes from shape inference). ONNX is channels-first: axis 1 past rank 2."""
    acc = ChannelAcc()
    if not shape or len(shape) < 2:
        return acc
    for ref, got in zip(m["float"], m["post_qdq"], strict=False):
        ref, got = np.asarray(ref), np.asarray(got)
        if ref.size != int(np.prod(shape)) or got.size != ref.size:
            return ChannelAcc()
        acc.add(got.reshape(shape), ref.reshape(shape), axis=1 if len(shape) >= 3 else -1)
    return acc


def _shapes(path: Path) -> dict[str, list[int]]:
    """tensor -> its shape for one sample (batch 1), where shape inference knows every dim."""
    import onnx

    try:
        model = onnx.shape_inference.infer_shapes(onnx.load(str(path)), strict_mode=False)
    except Exception:  # noqa: BLE001 - without shapes the rows just lack channel figures
        return {}
    out: dict[str, list[int]] = {}
    for v in [*model.graph.value_info, *model.graph.output]:
        dims = [d.dim_value if d.HasField("dim_value") else None
                for d in v.type.tensor_type.shape.dim]
        if dims and all(d is not None for d in dims[1:]):
            out[v.name] = [1, *dims[1:]]
    return out


def _consumers(graph: Any, rows: set[str]) -> dict[str, list[str]]:
    """node name -> the row nodes reading its outputs (through reshapes, pools, transposes and
    nodes without a row of their own)."""
    producer = {t: n.name for n in graph.node for t in n.output}
    direct: dict[str, list[str]] = {}
    for node in graph.node:
        for t in node.input:
            if t in producer:
                direct.setdefault(producer[t], []).append(node.name)
    return through_passive(direct, {n.name: n.op_type for n in graph.node}, PASSIVE_OPS, rows)


def _measure(m: dict[str, Any] | None) -> tuple[np.ndarray, float | None, float] | None:
    """(int8 - float differences, SNR dB, signal energy) of one matched activation."""
    if not m or "float" not in m or "post_qdq" not in m:
        return None
    ref = np.concatenate([a.reshape(-1) for a in m["float"]]).astype(np.float64)
    got = np.concatenate([a.reshape(-1) for a in m["post_qdq"]]).astype(np.float64)
    if ref.shape != got.shape:
        return None
    diff = got - ref
    ref_sq = float(np.dot(ref, ref))
    return diff, snr_db(ref_sq, float(np.dot(diff, diff))), ref_sq


def _capped(value: float | None) -> float:
    return CLEAN_DB if value is None else min(value, CLEAN_DB)


def _activation_scales(graph: Any) -> dict[str, float]:
    """tensor -> the scale of the QuantizeLinear that quantizes it in the QDQ model."""
    from onnx import numpy_helper

    init = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    out: dict[str, float] = {}
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node.input[1] in init:
            scale = init[node.input[1]].reshape(-1)
            if scale.size == 1:
                out[node.input[0]] = float(scale[0])
    return out
