"""Per-op int8 error of a .tflite, and selective (mixed-precision) int8, with
TensorFlow Lite's QuantizationDebugger.

The debugger calibrates once and builds a debug model in which every quantized
op has a float twin fed the same (dequantized) input, joined by a NumericVerify
op. Each op's error is therefore its own, not what it inherited. Its built-in
statistics carry no signal power, so we run the debug model ourselves (all
tensors preserved) to get RMSE/scale, max abs error and SNR from one pass.
The same calibrated debugger then yields selectively quantized models
(`denylisted_nodes`) for keep_float.
"""

from __future__ import annotations

import math
import re
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
from mobilec.formats.tflite_convert import representative_dataset
from mobilec.formats.tflite_selective import quant_debugger
from mobilec.state import ModelState
from mobilec.util.tfenv import import_tf

NUMERIC_VERIFY = "NumericVerify"
SIGNATURE_OUTPUT = re.compile(r"StatefulPartitionedCall(?:_\d+)?:(\d+)")


def diagnose_tflite(state: ModelState) -> Diagnosis:
    tf = import_tf()
    debugger = quant_debugger(state)
    if debugger.options.denylisted_nodes or debugger.options.fully_quantize:
        # selective_int8 left its options: diagnose the plain full-int8 debug model.
        debugger.options = tf.lite.experimental.QuantizationDebugOptions()
    # The debugger's own interpreter reuses tensor memory; ours keeps every tensor readable.
    it = tf.lite.Interpreter(model_content=debugger.quant_model,
                             experimental_preserve_all_tensors=True)
    verify = [op for op in it._get_ops_details() if op["op_name"] == NUMERIC_VERIFY]  # noqa: SLF001
    producer = {t: op["op_name"] for op in it._get_ops_details() for t in op["outputs"]}  # noqa: SLF001
    # The converter's own calibration samples (in TF layout, also for an onnx2tf graph).
    samples = [s[0] for s in representative_dataset(state)()]
    inp = it.get_input_details()[0]
    it.resize_tensor_input(inp["index"], list(samples[0].shape))
    it.allocate_tensors()
    acc = {op["index"]: _Acc() for op in verify}
    chans = {op["index"]: ChannelAcc() for op in verify}
    for x1 in samples:
        it.set_tensor(inp["index"], x1)
        it.invoke()
        for op in verify:
            q_idx, f_idx = op["inputs"][:2]
            got, ref = _dequantized(it, q_idx), it.get_tensor(f_idx).astype(np.float64)
            acc[op["index"]].add(got, ref)
            chans[op["index"]].add(got, ref)  # NHWC: the channel is the last axis
    layers = keras_layer_names(state)
    rows = []
    keys: dict[int, str] = {}
    for op in verify:
        q_idx = op["inputs"][0]
        detail = it._get_tensor_details(q_idx, subgraph_index=0)  # noqa: SLF001
        tensor = keys[q_idx] = original_name(detail["name"])
        scale = _scale(detail)
        a = acc[op["index"]]
        rmse = math.sqrt(a.err_sq / max(a.n, 1))
        rows.append(OpError(name=_display_name(state, tensor, layers), tensor=tensor,
                            op=producer.get(q_idx, "?"),
                            rmse_scale=rmse / scale if scale else None,
                            max_abs_error=a.max_abs, snr_db=snr_db(a.sig_sq, a.err_sq),
                            scale=scale, **chans[op["index"]].figures()))
    rows.sort(key=severity)
    rows = blame(rows, _consumers(it, keys))
    return Diagnosis(backend="tflite", mode="int8", samples=len(samples), scope="per-op",
                     rows=rows)


def _consumers(it: Any, keys: dict[int, str]) -> dict[str, list[str]]:
    """op output -> the ops reading it, keyed by the rows' tensor names (other tensors by index).
    In the debug model a quantized output also feeds DEQUANTIZE -> the next op's float twin;
    those readers are keyed by index and never match a row."""
    ops = [op for op in it._get_ops_details() if op["op_name"] != NUMERIC_VERIFY]  # noqa: SLF001
    produced = {t for op in ops for t in op["outputs"]}

    def key(t: int) -> str:
        return keys.get(t, f"#{t}")

    direct: dict[str, list[str]] = {}
    kinds: dict[str, str] = {}
    for op in ops:
        for t in op["outputs"]:
            kinds[key(t)] = op["op_name"]
        for t in op["inputs"]:
            if t in produced:
                direct.setdefault(key(t), []).extend(key(o) for o in op["outputs"])
    return through_passive(direct, kinds, PASSIVE_OPS)


def original_name(debug_name: str) -> str:
    """The op output's name in the plain model: the debug model suffixes one digit to it.

    Same rule as the debugger's own layer_statistics_dump, whose names the TF guide
    feeds to denylisted_nodes.
    """
    return debug_name[:-1] if debug_name and debug_name[-1].isdigit() else debug_name


def _display_name(state: ModelState, tensor: str, layers: set[str]) -> str:
    """A user-facing name: the Keras layer, or for a signature output the model output's name."""
    m = SIGNATURE_OUTPUT.fullmatch(tensor)
    if m and int(m.group(1)) < len(state.outputs):
        return state.outputs[int(m.group(1))].name
    return layer_of(tensor, layers)


class _Acc:
    """Running sums over samples: error energy, signal energy, worst error."""
    def __init__(self) -> None:
        self.n = 0
        self.err_sq = 0.0
        self.sig_sq = 0.0
        self.max_abs = 0.0

    def add(self, got: np.ndarray, ref: np.ndarray) -> None:
        diff = got.reshape(-1) - ref.reshape(-1)
        self.n += diff.size
        self.err_sq += float(np.dot(diff, diff))
        self.sig_sq += float(np.dot(ref.reshape(-1), ref.reshape(-1)))
        if diff.size:
            self.max_abs = max(self.max_abs, float(np.max(np.abs(diff))))


def _scale(detail: dict[str, Any]) -> float | None:
    scales = detail["quantization_parameters"]["scales"]
    return float(scales[0]) if len(scales) else None


def _dequantized(it: Any, index: int) -> np.ndarray:
    detail = it._get_tensor_details(index, subgraph_index=0)  # noqa: SLF001
    value = it.get_tensor(index)
    if np.dtype(detail["dtype"]).kind not in "iu":
        return value.astype(np.float64)
    params = detail["quantization_parameters"]
    scale = float(params["scales"][0]) if len(params["scales"]) else 1.0
    zero = int(params["zero_points"][0]) if len(params["zero_points"]) else 0
    return (value.astype(np.float64) - zero) * scale
