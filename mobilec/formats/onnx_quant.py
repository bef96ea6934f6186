"""onnxruntime quantization of a float32 .onnx: dynamic, static QDQ int8, float16."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mobilec.errors import ConversionError, UnsupportedError
from mobilec.state import ModelState


def quantize_onnx(state: ModelState, float_path: Path, mode: str, dest: Path,
                  nodes_to_exclude: list[str] | None = None) -> None:
    with _quiet_root_logger():
        _quantize(state, float_path, mode, dest, nodes_to_exclude)


def _quantize(state: ModelState, float_path: Path, mode: str, dest: Path,
              nodes_to_exclude: list[str] | None) -> None:
    try:
        if mode == "dynamic":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(str(float_path), str(dest), weight_type=QuantType.QInt8,
                             per_channel=False, nodes_to_exclude=nodes_to_exclude or [])
        elif mode in ("int8", "int8-io", "qat"):
            _static(state, float_path, dest, nodes_to_exclude or [])
        elif mode == "float16":
            _float16(float_path, dest)
        else:
            raise UnsupportedError(f"quantization '{mode}' is not supported for .onnx")
    except (UnsupportedError, ConversionError):
        raise
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises many types
        raise ConversionError(f"onnxruntime quantization ({mode}) failed: "
                              f"{str(exc).strip().splitlines()[0][:300]}") from exc


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """onnxruntime.quantization logs 'consider pre-processing' on the root logger at
    WARNING for every model; it is advice for its own CLI users, noise in ours."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(level)


def _float16(float_path: Path, dest: Path) -> None:
    """float16 weights and compute, float32 I/O (callers keep feeding float32).

    onnxconverter-common is not in the pinned stack; onnxruntime ships the same
    converter as onnxruntime.transformers.float16.
    """
    import onnx

    try:
        from onnxruntime.transformers.float16 import convert_float_to_float16
    except ImportError:
        try:
            from onnxconverter_common.float16 import convert_float_to_float16
        except ImportError:
            raise UnsupportedError("float16 .onnx is not supported here: neither "
                                   "onnxruntime.transformers nor onnxconverter-common imports",
                                   hint="the float32 .onnx runs on every runtime") from None
    model = convert_float_to_float16(onnx.load(str(float_path)), keep_io_types=True)
    onnx.save(model, str(dest))


def _static(state: ModelState, float_path: Path, dest: Path, exclude: list[str]) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if state.data is None or state.data.calibration is None:
        raise UnsupportedError("static int8 .onnx needs calibration data and the recipe has none",
                               hint="add a data: section, or use quantize mode dynamic")
    import onnxruntime as ort

    sess = ort.InferenceSession(str(float_path), providers=["CPUExecutionProvider"])
    in_name = sess.get_inputs()[0].name
    x = state.data.calibration.x.astype(np.float32)
    transpose = None  # an ONNX graph takes the recipe data in its own layout
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
