"""Raise an old ONNX graph's opset before onnxruntime's static quantization.

Per-channel QDQ needs DequantizeLinear's `axis`, which exists from opset 13: below it,
quantize_static writes a file the runtime rejects ("DequantizeLinear: Unrecognized attribute:
axis"). onnx.version_converter upgrades a copy (the user's file is never touched); the copy
is run against the original on the calibration samples before it is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mobilec.errors import ConversionError, first_line

MIN_QDQ_OPSET = 13
# float32 graphs rewritten op by op: only rounding may differ
_RTOL, _ATOL = 1e-4, 1e-5


def default_opset(model: Any) -> int:
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def upgraded_for_qdq(float_path: Path, dest: Path, feeds: list[dict[str, np.ndarray]]) -> Path:
    """`float_path` itself when its opset is MIN_QDQ_OPSET or more; else an upgraded copy at
    `dest`, checked against the original on `feeds` (ConversionError when it differs)."""
    import onnx

    model = onnx.load(str(float_path))
    opset = default_opset(model)
    if opset >= MIN_QDQ_OPSET:
        return float_path
    try:
        from onnx import version_converter

        upgraded = version_converter.convert_version(model, MIN_QDQ_OPSET)
        onnx.checker.check_model(upgraded)
        onnx.save(upgraded, str(dest))
    except Exception as exc:  # noqa: BLE001 - the converter raises many types
        raise ConversionError(
            f"the model is ONNX opset {opset}; per-channel int8 needs {MIN_QDQ_OPSET}+ and "
            f"onnx.version_converter could not upgrade it: {first_line(exc, 300)}",
            hint="re-export the model at opset 13 or later, or use quantize mode dynamic "
                 "or float16") from exc
    check_same(float_path, dest, feeds, opset)
    return dest


def check_same(original: Path, upgraded: Path, feeds: list[dict[str, np.ndarray]],
                opset: int) -> None:
    import onnxruntime as ort

    opts = ["CPUExecutionProvider"]
    a = ort.InferenceSession(str(original), providers=opts)
    b = ort.InferenceSession(str(upgraded), providers=opts)
    for feed in feeds[:8]:
        for i, (x, y) in enumerate(zip(a.run(None, feed), b.run(None, feed), strict=True)):
            if x.shape != y.shape or not np.allclose(x, y, rtol=_RTOL, atol=_ATOL, equal_nan=True):
                err = float(np.max(np.abs(x.astype("float64") - y))) if x.shape == y.shape \
                    else f"shape {list(y.shape)} vs {list(x.shape)}"
                raise ConversionError(
                    f"the opset {opset} -> {MIN_QDQ_OPSET} upgrade (onnx.version_converter) "
                    f"changed output {i} (max abs error {err}): not quantizing it",
                    hint="re-export the model at opset 13 or later, or use quantize mode "
                         "dynamic or float16")
