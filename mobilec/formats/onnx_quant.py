"""onnxruntime quantization of a float32 .onnx: dynamic, static QDQ int8, float16."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mobilec.errors import ConversionError, UnsupportedError
from mobilec.state import ModelState


def quantize_onnx(state: ModelState, float_path: Path, mode: str, dest: Path,
                  nodes_to_exclude: list[str] | None = None) -> None:
    try:
        if mode == "dynamic":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(str(float_path), str(dest), weight_type=QuantType.QInt8,
                             per_channel=False, nodes_to_exclude=nodes_to_exclude or [])
        elif mode in ("int8", "int8-io", "qat"):
            _static(state, float_path, dest, nodes_to_exclude or [])
        elif mode == "float16":
            import onnx
            from onnx import numpy_helper  # noqa: F401 - ensures onnx helpers are importable

            try:
                from onnxconverter_common import float16
            except ImportError:
                float16 = None
            if float16 is None:
                raise UnsupportedError("float16 .onnx needs onnxconverter-common, which is not "
                                       "installed; the float32 .onnx runs on every runtime")
            model = float16.convert_float_to_float16(onnx.load(str(float_path)), keep_io_types=True)
            onnx.save(model, str(dest))
        else:
            raise UnsupportedError(f"quantization '{mode}' is not supported for .onnx")
    except (UnsupportedError, ConversionError):
        raise
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises many types
        raise ConversionError(f"onnxruntime quantization ({mode}) failed: "
                              f"{str(exc).strip().splitlines()[0][:300]}") from exc


def _static(state: ModelState, float_path: Path, dest: Path, exclude: list[str]) -> None:
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)

    if state.data is None or state.data.calibration is None:
        raise UnsupportedError("static int8 .onnx needs calibration data and the recipe has none",
                               hint="add a data: section, or use quantize mode dynamic")
    import onnxruntime as ort

    sess = ort.InferenceSession(str(float_path), providers=["CPUExecutionProvider"])
    in_name = sess.get_inputs()[0].name
    x = state.data.calibration.x.astype(np.float32)
    transpose = state.cache.get("onnx_input_transpose")
    if transpose:
        x = np.transpose(x, transpose)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(x[i:i + 1] for i in range(len(x)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.it, None)
            return None if batch is None else {in_name: batch}

    quantize_static(str(float_path), str(dest), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, weight_type=QuantType.QInt8,
                    activation_type=QuantType.QInt8, nodes_to_exclude=exclude,
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
