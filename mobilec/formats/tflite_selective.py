"""Selective int8 for TFLite: full-integer quantization with named op outputs left in float.

TensorFlow Lite's QuantizationDebugger calibrates once; its `denylisted_nodes` then
yields mixed-precision models (keep_float), and its debug model feeds `mobilec diagnose`.
"""

from __future__ import annotations

from typing import Any

from mobilec.errors import ConversionError, first_line
from mobilec.formats.tflite_convert import (
    calibrator_crash,
    make_converter,
    representative_dataset,
    route_names,
)
from mobilec.state import ModelState
from mobilec.util.tfenv import import_tf


def quant_debugger(state: ModelState, route: str | None = None) -> Any:
    """The calibrated QuantizationDebugger of the current model (one per model version and
    converter route; default: the first route)."""
    route = route or (route_names(state) or [None])[0]
    key = ("quant_debugger", state.model_version, route)
    if key in state.memo:
        return state.memo[key]

    crash = calibrator_crash(state, route)
    if crash:
        raise ConversionError(f"not calibrated in this process: {crash}",
                              hint="ship the float32 or dynamic .tflite, or the int8 .onnx")
    tf = import_tf()
    converter = make_converter(state, route)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset(state)
    try:
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=representative_dataset(state))
    except Exception as exc:  # noqa: BLE001 - the converter raises many types
        first = first_line(exc)
        raise ConversionError(f"TFLite quantization debugger failed: {first[:300]}",
                              hint="does plain `quantize: {mode: int8}` convert this model?"
                              ) from exc
    state.memo[key] = debugger
    return debugger


def selective_int8(state: ModelState, mode: str, denylisted_nodes: list[str],
                   route: str | None = None) -> bytes:
    """int8 with the named op outputs left in float (int8-io: integer I/O as well)."""
    key = ("selective_int8", state.model_version, mode, tuple(denylisted_nodes), route)
    if key in state.memo:
        return state.memo[key]

    tf = import_tf()
    debugger = quant_debugger(state, route)
    debugger.options = tf.lite.experimental.QuantizationDebugOptions(
        denylisted_nodes=list(denylisted_nodes), fully_quantize=mode == "int8-io")
    try:
        model = debugger.get_nondebug_quantized_model()
    except Exception as exc:  # noqa: BLE001
        first = first_line(exc)
        raise ConversionError(f"selective int8 quantization failed: {first[:300]}") from exc
    state.memo[key] = model
    return model
