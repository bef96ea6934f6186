"""diagnose: which ops does int8 hurt, worst first.

One row per quantized op output, measured on the recipe's calibration data:
the op's name (its Keras layer when known), op type, RMSE relative to the
quantization scale, max abs error and SNR in dB. The engines live in
diagnose_tflite (TensorFlow Lite's QuantizationDebugger: each op is compared
with its float twin fed the same input, so a row is that op's own error) and
diagnose_onnx (onnxruntime's qdq_loss_debug: errors accumulate along the graph,
so rows are ranked by the SNR an op loses, not by its SNR).

Each row also carries per-channel figures of the op's output (range ratio between
channels, the worst channel's SNR). An op whose output channel ranges differ more
than 100x is the cause of the damage its readers show (one int8 scale per tensor
crushes the small channels), so it is ranked ahead of them with a `cause`
(common.blame); `quantize: {equalize: auto}` is the remedy it names.

`mobilec diagnose RECIPE` runs the pipeline up to quantization and then the
diagnose stage; `compress --diagnose` adds that stage last.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from mobilec.diagnose.common import Diagnosis
from mobilec.diagnose.onnx_graph import diagnose_onnx
from mobilec.diagnose.tflite_graph import diagnose_tflite
from mobilec.errors import UnsupportedError
from mobilec.state import ModelState
from mobilec.util.fs import atomic_write_text

JSON_NAME = "diagnose.json"
BACKENDS = ("tflite", "onnx")


def pick_backend(state: ModelState, backend: str | None = None) -> str:
    """TFLite when the model has a TensorFlow form (what mobile int8 ships as), else ONNX."""
    has_tf = state.keras_model is not None or state.graph_dir is not None
    if backend is None:
        backend = "tflite" if has_tf else "onnx"
    if backend not in BACKENDS:
        raise UnsupportedError(f"diagnose backend '{backend}' is not one of {', '.join(BACKENDS)}")
    # An ONNX model still has a .tflite: make_converter goes through onnx2tf for it.
    return backend


def diagnose(state: ModelState, backend: str | None = None) -> Diagnosis:
    """Per-op int8 error of the model as the state holds it (cached per model version)."""
    backend = pick_backend(state, backend)
    if state.data is None or state.data.calibration is None:
        raise UnsupportedError("diagnose runs int8 calibration and the recipe has no data",
                               where=state.recipe.source,
                               hint="add a data: section (train or eval samples)")
    if len(state.inputs) > 1:
        raise UnsupportedError(f"diagnose ranks the layers of one-input models; this model has "
                               f"{len(state.inputs)} inputs", where=state.recipe.source,
                               hint="the artifacts' per-output and per-channel fidelity in the "
                                    "report show where int8 loses the signal")
    key = ("diagnose", backend, state.model_version)
    if key not in state.memo:
        if backend == "tflite":
            state.memo[key] = diagnose_tflite(state)
        else:
            state.memo[key] = diagnose_onnx(state)
    return state.memo[key]


def write_json(diag: Diagnosis, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / JSON_NAME
    atomic_write_text(path, json.dumps(_clean(diag.as_dict()), indent=2) + "\n")
    return path


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value
