"""The TFLite converter, configured for each quantization mode, from whatever TensorFlow
form the model has (a tf_keras model's serving SavedModel, a SavedModel, onnx2tf's graph).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from mobilec.errors import ConversionError, UnsupportedError
from mobilec.sources.onnx2tf_bridge import ensure_graph, to_tf_layout
from mobilec.sources.serving_export import serving_savedmodel
from mobilec.state import ModelState
from mobilec.util.tfenv import import_tf


def representative_dataset(state: ModelState) -> Any:
    if state.data is None or state.data.calibration is None:
        raise UnsupportedError(
            "full-integer quantization needs calibration data and the recipe has none",
            hint="add a data: section (train or eval), or use quantize mode dynamic or float16")

    x = to_tf_layout(state, state.data.calibration.x.astype("float32"))

    def gen() -> Iterator[list[np.ndarray]]:
        for i in range(len(x)):
            yield [x[i:i + 1]]

    return gen


def make_converter(state: ModelState) -> Any:

    tf = import_tf()
    if state.keras_model is not None:
        # The serving function alone: from_keras_model would save the whole tf_keras model
        # first (3x slower on MobileNetV2); same ops, names and outputs.
        serving = serving_savedmodel(state)
        if serving is not None:
            return tf.lite.TFLiteConverter.from_saved_model(str(serving))
        return tf.lite.TFLiteConverter.from_keras_model(state.keras_model)
    if state.graph_dir is None and state.onnx_path is not None:
        ensure_graph(state)  # ONNX input: onnx2tf's SavedModel, converted on first use
    if state.graph_dir is not None:
        return tf.lite.TFLiteConverter.from_saved_model(str(state.graph_dir))
    raise UnsupportedError("no TensorFlow form of the model is available for the TFLite converter")


def convert_tflite(state: ModelState, mode: str) -> bytes:

    tf = import_tf()
    conv = make_converter(state)
    if mode == "float16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif mode in ("dynamic", "qat"):
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    elif mode in ("int8", "int8-io"):
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative_dataset(state)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if mode == "int8-io":
            conv.inference_input_type = tf.int8
            conv.inference_output_type = tf.int8
    elif mode == "int16x8":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative_dataset(state)
        conv.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    elif mode != "float32":
        raise UnsupportedError(f"quantization '{mode}' is not available for .tflite")
    try:
        return conv.convert()
    except Exception as exc:  # noqa: BLE001 - converter errors are many types
        text = str(exc).strip().splitlines()
        msg = next((ln for ln in text if "error" in ln.lower()), text[0] if text else repr(exc))
        raise ConversionError(f"TFLite converter failed ({mode}): {msg[:400]}") from exc
