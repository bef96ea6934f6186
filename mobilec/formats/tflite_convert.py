"""The TFLite converter, configured for each quantization mode, from whatever TensorFlow
form the model has (a tf_keras model's serving SavedModel, a SavedModel, onnx2tf's graph).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mobilec.errors import ConverterCrash, UnsupportedError
from mobilec.formats.intermediate import verified_onnx2tf_graph
from mobilec.formats.runtime import loaded_saved_model
from mobilec.formats.tflite_child import (
    calibration_gen,
    configure,
    convert_isolated,
    run_converter,
)
from mobilec.formats.tflite_rnn import (
    fixed_batch_converter,
    keras_rnn_routes,
    unrolled_converter,
)
from mobilec.formats.torch_onnx import example_inputs, torch_float32_onnx
from mobilec.formats.torch_routes import LITERT_TORCH_MODES, torch_to_tflite
from mobilec.sources.batch import as_list
from mobilec.sources.onnx2tf_bridge import TFGraph, to_tf_layout
from mobilec.sources.serving_export import serving_savedmodel
from mobilec.state import ModelState
from mobilec.util.tfenv import import_tf, import_tf_keras

#: state.memo key: the TFLite calibrator crashed on onnx2tf's graph (in its child).
CRASH_KEY = "onnx2tf_calibrator_crash"


def representative_dataset(state: ModelState) -> Any:
    """The recipe's calibration data as the TFLite converter's representative dataset."""
    return calibration_gen(*calibration_arrays(state))


def calibration_arrays(state: ModelState) -> tuple[list[str], list[np.ndarray]]:
    """(input names, calibration arrays in the TensorFlow form's layout)."""
    if state.data is None or state.data.calibration is None:
        raise UnsupportedError(
            "full-integer quantization needs calibration data and the recipe has none",
            hint="add a data: section (train or eval), or use quantize mode dynamic or float16")
    parts = [to_tf_layout(state, a.astype(np.float32)) if a.dtype.kind == "f" else a
             for a in as_list(state.data.calibration.x)]
    return [t.name for t in state.inputs], parts


def route_names(state: ModelState) -> list[str]:
    """The ways this model's TensorFlow form reaches the TFLite converter, in order.

    A tf_keras model: its serving function saved alone (fast, same graph), then
    from_keras_model. A SavedModel: its serving signature via from_saved_model, then the
    loaded signature's concrete function (what rescues a Keras 3 `tf.saved_model.save`
    export whose first route drops weights), then the Keras model inside it, if any.
    An ONNX model: onnx2tf's SavedModel.
    Recurrent models (tflite_rnn): a Keras model with LSTM/GRU layers goes to the
    keras-unrolled and fixed-batch routes first (the others fail on its list ops); a
    SavedModel tries fixed-batch last, its RNN layers being invisible from here.
    """
    if state.torch_program is not None:
        return ["litert-torch", "onnx2tf"]
    if state.keras_model is not None:
        rnn = keras_rnn_routes(state.keras_model)
        return [*rnn, "keras-serving-savedmodel", "keras-model", *(["fixed-batch"] * (not rnn))]
    if state.onnx_path is not None and (state.graph_dir is None or
                                        isinstance(state.tf_bridge, TFGraph)):
        # An ONNX source, bridged or not yet: onnx2tf's SavedModel is the one route (the
        # SavedModel routes would run its third-party graph in this process, under their name)
        return ["onnx2tf"]
    if state.graph_dir is not None:
        return ["savedmodel-signature", "concrete-function", "savedmodel-keras", "fixed-batch"]
    return []


def litert_torch_tflite(state: ModelState, mode: str) -> bytes:
    """litert_torch.convert of the eager module (channel order as the module has it)."""
    key = ("litert_torch", state.model_version, mode)
    if key not in state.memo:
        dest = state.work_dir / f"litert-torch-{mode}.tflite"
        calib = None if state.data is None or state.data.calibration is None \
            else state.data.calibration.x
        torch_to_tflite(state.torch_module, example_inputs(state), dest,
                        "int8-io" if mode == "int8-io" else mode, calib,
                        input_names=[t.name for t in state.inputs],
                        output_names=[t.name for t in state.outputs])
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
        onnx2tf_graph(state)
        route = "savedmodel-signature"
    if route == "savedmodel-signature":
        return tf.lite.TFLiteConverter.from_saved_model(str(state.graph_dir))
    if route == "concrete-function":
        loaded = loaded_saved_model(state)
        fn = loaded.signatures["serving_default"]
        return tf.lite.TFLiteConverter.from_concrete_functions([fn], loaded)
    if route == "savedmodel-keras":
        try:
            model = import_tf_keras().models.load_model(str(state.graph_dir), compile=False)
        except Exception as exc:  # noqa: BLE001 - not a Keras SavedModel: this route is out
            raise UnsupportedError("the SavedModel holds no Keras model to convert") from exc
        return tf.lite.TFLiteConverter.from_keras_model(model)
    if route == "fixed-batch":
        return fixed_batch_converter(state)
    if route == "keras-unrolled":
        return unrolled_converter(state)
    raise UnsupportedError("no TensorFlow form of the model is available for the TFLite converter")


def convert_tflite(state: ModelState, mode: str, route: str | None = None) -> bytes:
    if mode == "qat" and state.torch_program is not None:
        # A PT2E QAT graph does not cross to TensorFlow: int8, calibrated, from the float
        # model quantization-aware training fine-tuned (training/torch_qat.py).
        mode = "int8"
    if route == "litert-torch" or (route is None and state.torch_program is not None and
                                   mode in LITERT_TORCH_MODES):
        return litert_torch_tflite(state, mode)
    if _onnx2tf_route(state, route):
        # onnx2tf's SavedModel is third-party output the converter has crashed on (SIGSEGV
        # calibrating a GRU): converted in a child process, a crash fails this route only.
        try:
            return convert_isolated(onnx2tf_graph(state), mode, state.work_dir,
                                    graph="onnx2tf's graph",
                                    calibration=lambda: calibration_arrays(state))
        except ConverterCrash as exc:  # never run the calibrator here on this graph
            state.memo[(CRASH_KEY, state.model_version)] = exc.message
            raise
    conv = make_converter(state, route)
    configure(conv, mode, lambda: representative_dataset(state))
    return run_converter(conv, mode)


def onnx2tf_graph(state: ModelState) -> Path:
    """onnx2tf's SavedModel of the model, converted on first use (a PyTorch source: from
    its float32 .onnx) and verified against the source before anything is built from it."""
    verified_onnx2tf_graph(state, torch_float32_onnx(state) if state.torch_program is not None
                           else None)
    assert state.graph_dir is not None
    return state.graph_dir


def calibrator_crash(state: ModelState, route: str | None) -> str | None:
    """Why the TFLite calibrator must not run in this process on `route`'s graph: it crashed
    converting onnx2tf's graph in a child (a recurrent WHILE loop, tensorflow#75140), and
    the QuantizationDebugger (keep_float, the float-outputs retry) calibrates in-process."""
    if not _onnx2tf_route(state, route):
        return None
    return state.memo.get((CRASH_KEY, state.model_version))


def _onnx2tf_route(state: ModelState, route: str | None) -> bool:
    """Whether this conversion is from_saved_model on onnx2tf's SavedModel."""
    if route is None:
        route = (route_names(state) or [None])[0]
    return route == "onnx2tf"
