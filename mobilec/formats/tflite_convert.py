"""The TFLite converter, configured for each quantization mode, from whatever TensorFlow
form the model has (a tf_keras model's serving SavedModel, a SavedModel, onnx2tf's graph).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from mobilec.errors import ConversionError, UnsupportedError
from mobilec.formats.torch_onnx import example_inputs, torch_float32_onnx
from mobilec.formats.torch_routes import LITERT_TORCH_MODES, torch_to_tflite
from mobilec.sources.batch import as_list, match_names
from mobilec.sources.onnx2tf_bridge import ensure_graph, to_tf_layout
from mobilec.sources.serving_export import serving_savedmodel
from mobilec.state import ModelState
from mobilec.util.tfenv import import_tf, import_tf_keras


def representative_dataset(state: ModelState) -> Any:
    if state.data is None or state.data.calibration is None:
        raise UnsupportedError(
            "full-integer quantization needs calibration data and the recipe has none",
            hint="add a data: section (train or eval), or use quantize mode dynamic or float16")

    parts = [to_tf_layout(state, a.astype(np.float32)) if a.dtype.kind == "f" else a
             for a in as_list(state.data.calibration.x)]
    names = [t.name for t in state.inputs]

    def gen() -> Iterator[Any]:
        for i in range(len(parts[0])):
            if len(parts) == 1:
                yield [parts[0][i:i + 1]]
            else:  # by name: the converter orders a signature's inputs its own way
                yield _ByName({n: a[i:i + 1] for n, a in zip(names, parts, strict=True)})

    return gen


class _ByName(dict):
    """Calibration inputs keyed by the model's input names, found also under the names the
    converter's signature gives them (`serving_default_tokens:0` for `tokens`)."""

    def __missing__(self, key: str) -> Any:
        hit = match_names([key], list(self))[0]
        if hit is None:
            raise KeyError(key)
        return dict.__getitem__(self, hit)


def route_names(state: ModelState) -> list[str]:
    """The ways this model's TensorFlow form reaches the TFLite converter, in order.

    A tf_keras model: its serving function saved alone (fast, same graph), then
    from_keras_model. A SavedModel: its serving signature via from_saved_model, then the
    loaded signature's concrete function (what rescues a Keras 3 `tf.saved_model.save`
    export whose first route drops weights), then the Keras model inside it, if any.
    An ONNX model: onnx2tf's SavedModel.
    """
    if state.torch_program is not None:
        return ["litert-torch", "onnx2tf"]
    if state.keras_model is not None:
        return ["keras-serving-savedmodel", "keras-model"]
    if state.graph_dir is None and state.onnx_path is not None:
        return ["onnx2tf"]
    if state.graph_dir is not None:
        return ["savedmodel-signature", "concrete-function", "savedmodel-keras"]
    return []


def litert_torch_tflite(state: ModelState, mode: str) -> bytes:
    """litert_torch.convert of the eager module (channel order as the module has it)."""
    key = ("litert_torch", state.model_version, mode)
    if key not in state.memo:
        dest = state.work_dir / f"litert-torch-{mode}.tflite"
        calib = None if state.data is None or state.data.calibration is None \
            else state.data.calibration.x
        torch_to_tflite(state.torch_module, example_inputs(state), dest,
                        "int8-io" if mode == "int8-io" else mode, calib)
        state.memo[key] = dest.read_bytes()
    return state.memo[key]


def make_converter(state: ModelState, route: str | None = None) -> Any:
    """A TFLiteConverter for `route` (default: the first of route_names)."""
    tf = import_tf()
    route = route or (route_names(state) or ["none"])[0]
    if route == "keras-serving-savedmodel":
        # The serving function alone: from_keras_model would save the whole tf_keras model
        # first (3x slower on MobileNetV2); same ops, names and outputs.
        serving = serving_savedmodel(state)
        if serving is not None:
            return tf.lite.TFLiteConverter.from_saved_model(str(serving))
        route = "keras-model"
    if route == "keras-model":
        return tf.lite.TFLiteConverter.from_keras_model(state.keras_model)
    if route == "onnx2tf":
        # onnx2tf's SavedModel, converted on first use (a PyTorch source: from its .onnx)
        ensure_graph(state, torch_float32_onnx(state) if state.torch_program is not None
                     else None)
        route = "savedmodel-signature"
    if route == "savedmodel-signature":
        return tf.lite.TFLiteConverter.from_saved_model(str(state.graph_dir))
    if route == "concrete-function":
        loaded = tf.saved_model.load(str(state.graph_dir))
        fn = loaded.signatures["serving_default"]
        return tf.lite.TFLiteConverter.from_concrete_functions([fn], loaded)
    if route == "savedmodel-keras":
        try:
            model = import_tf_keras().models.load_model(str(state.graph_dir), compile=False)
        except Exception as exc:  # noqa: BLE001 - not a Keras SavedModel: this route is out
            raise UnsupportedError("the SavedModel holds no Keras model to convert") from exc
        return tf.lite.TFLiteConverter.from_keras_model(model)
    raise UnsupportedError("no TensorFlow form of the model is available for the TFLite converter")


def convert_tflite(state: ModelState, mode: str, route: str | None = None) -> bytes:
    if route == "litert-torch" or (route is None and state.torch_program is not None and
                                   mode in LITERT_TORCH_MODES):
        return litert_torch_tflite(state, mode)
    tf = import_tf()
    conv = make_converter(state, route)
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
