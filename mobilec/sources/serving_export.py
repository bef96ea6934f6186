"""A SavedModel holding only a tf_keras model's inference function, for the TFLite converter.

`TFLiteConverter.from_keras_model` first saves a tf_keras model as a full Keras SavedModel,
which traces every layer's call functions: on MobileNetV2 that is two thirds of the
conversion time and a quarter more peak memory than converting the same network from
Keras 3. Saving just the serving function (the same `trace_model_call` function Keras
would export as its signature) gives the converter the same graph: the same ops, tensor
names and signature, identical outputs (tests/test_serving_export.py checks it).
One export per model version serves every quantization mode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mobilec.state import ModelState
from mobilec.util.tfenv import import_tf


def serving_savedmodel(state: ModelState) -> Path | None:
    """The export's directory, or None when this model cannot be exported this way
    (the caller then falls back to from_keras_model)."""
    key = ("serving_savedmodel", state.model_version, id(state.keras_model))
    if key not in state.memo:
        state.memo[key] = _export(state.keras_model, state.work_dir /
                                   f"tflite-serving-v{state.model_version}")
    return state.memo[key]


def _export(model: Any, dest: Path) -> Path | None:
    tf = import_tf()
    try:
        import tf_keras
        from tf_keras.src.saving.legacy import saving_utils

        if not isinstance(model, tf_keras.Model):
            return None  # a Keras 3 model: from_keras_model already exports only the call
        fn = saving_utils.trace_model_call(model)
        holder = tf.Module()
        holder.variables_ = list(model.variables)  # what the function captures, nothing more
        tf.saved_model.save(holder, str(dest), signatures={"serving_default": fn})
    except Exception:  # noqa: BLE001 - any model this cannot trace keeps the standard path
        return None
    return dest
