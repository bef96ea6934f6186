"""onnxruntime quantization of a float32 .onnx: dynamic, static QDQ int8, float16."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mobilec.errors import ConversionError, UnsupportedError, first_line
from mobilec.formats.onnx_opset import upgraded_for_qdq
from mobilec.formats.runtime import ort_feed, ort_feed_names
from mobilec.sources.batch import length, take
from mobilec.state import ModelState


def quantize_onnx(state: ModelState, float_path: Path, mode: str, dest: Path,
                  nodes_to_exclude: list[str] | None = None, preprocess: bool = True) -> None:
    """`preprocess`: ORT's quant_pre_process first (what ships); off where the float graph's
    node names must survive (diagnose compares nodes by name)."""
    with _quiet_root_logger():
        _quantize(state, float_path, mode, dest, nodes_to_exclude, preprocess)


def _quantize(state: ModelState, float_path: Path, mode: str, dest: Path,
              nodes_to_exclude: list[str] | None, preprocess: bool) -> None:
    try:
        if mode == "dynamic":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(str(float_path), str(dest), weight_type=QuantType.QInt8,
                             per_channel=False, nodes_to_exclude=nodes_to_exclude or [])
        elif mode in ("int8", "int8-io", "qat"):
            _static(state, float_path, dest, nodes_to_exclude or [], preprocess)
        elif mode == "float16":
            _float16(float_path, dest)
        else:
            raise UnsupportedError(f"quantization '{mode}' is not supported for .onnx")
    except (UnsupportedError, ConversionError):
        raise
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises many types
        raise ConversionError(f"onnxruntime quantization ({mode}) failed: "
                              f"{first_line(exc)}") from exc


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


def _static(state: ModelState, float_path: Path, dest: Path, exclude: list[str],
            preprocess: bool = True) -> None:
    """Static QDQ int8, per channel, calibrated on the recipe's data — after ORT's own
    pre-processing (symbolic shape inference, graph optimization), as its documentation
    says to: on a BatchNorm-heavy CNN it makes the file smaller and the model more accurate.
    With keep_float, the optimizer's fusions would rename the nodes to keep: then only
    shape inference runs."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if state.data is None or state.data.calibration is None:
        raise UnsupportedError("static int8 .onnx needs calibration data and the recipe has none",
                               hint="add a data: section, or use quantize mode dynamic")
    import onnxruntime as ort

    sess = ort.InferenceSession(str(float_path), providers=["CPUExecutionProvider"])
    names = ort_feed_names(sess, [t.name for t in state.inputs])
    x = state.data.calibration.x
    # an ONNX graph takes the recipe data in its own layout: no transpose
    samples = [ort_feed(sess, names, take(x, slice(i, i + 1)), None, state.inputs)
               for i in range(length(x))]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(samples)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    # Below opset 13 per-channel QDQ is invalid: a verified upgraded copy is quantized.
    float_path = upgraded_for_qdq(float_path, dest.with_name(dest.stem + ".opset.onnx"), samples)
    pre = dest.with_name(dest.stem + ".pre.onnx")
    source = float_path
    if preprocess:
        try:
            quant_pre_process(str(float_path), str(pre), skip_optimization=bool(exclude),
                              skip_symbolic_shape=False)
            source = pre
        except Exception:  # noqa: BLE001 - pre-processing is an improvement, not a requirement
            source = float_path
    quantize_static(str(source), str(dest), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, weight_type=QuantType.QInt8,
                    activation_type=QuantType.QInt8, nodes_to_exclude=exclude,
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    pre.unlink(missing_ok=True)
    dest.with_name(dest.stem + ".opset.onnx").unlink(missing_ok=True)
