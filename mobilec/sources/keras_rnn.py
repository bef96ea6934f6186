"""Keras recurrent layers, unrolled: the one way mobilec removes their while loop.

A Keras LSTM/GRU traces as a while loop over TensorList ops. TFLite refuses those list ops
with a dynamic batch and its int8 calibrator crashes on the loop (tensorflow#75140);
coremltools fails on a masked bidirectional one. With a fixed sequence length the same
layers with `unroll=True` compute the same values with plain ops. Only mobilec's loaded
copy of a model is ever changed, never the user's file.
"""

from __future__ import annotations

from typing import Any

from mobilec.errors import UnsupportedError
from mobilec.state import ModelState
from mobilec.util.tfenv import import_tf_keras

RNN_CLASSES = ("LSTM", "GRU", "SimpleRNN", "RNN", "LSTMV1", "GRUV1")


def rnn_layers(model: Any) -> list[str]:
    """Class names of the recurrent layers inside a tf_keras model (Bidirectional's too)."""
    if model is None:
        return []
    try:
        base = import_tf_keras().layers.RNN
        return [type(m).__name__ for m in model.submodules if isinstance(m, base)]
    except Exception:  # noqa: BLE001 - a model we cannot walk is treated as non-recurrent
        return []


def unrolled_model(state: ModelState) -> Any:
    """The tf_keras model rebuilt with every recurrent layer unrolled, same weights (made
    once per model version). UnsupportedError when there is none, or it cannot unroll (a
    sequence length of None, custom layers)."""
    model = state.keras_model
    key = ("keras_unrolled", state.model_version, id(model))
    if key not in state.memo:
        if not rnn_layers(model):
            raise UnsupportedError("the model has no recurrent layer to unroll")
        config = model.get_config()
        _set_unroll(config)
        try:
            rebuilt = type(model).from_config(config)
            rebuilt.set_weights(model.get_weights())
        except Exception as exc:  # noqa: BLE001 - custom layers, a sequence length of None, …
            raise UnsupportedError(f"the recurrent layers could not be unrolled: "
                                   f"{str(exc).strip().splitlines()[0][:200]}") from exc
        state.memo[key] = rebuilt
    return state.memo[key]


def unroll_in_place(model: Any) -> None:
    """Unroll a Keras 3 model's recurrent layers before it is exported (Keras 3 models are
    not rebuilt: mobilec only exports them), when every input dimension but the batch is
    fixed; otherwise leave it as it is."""
    if any(d is None for t in model.inputs for d in t.shape[1:]):
        return
    for layer in model._flatten_layers(include_self=False, recursive=True):  # noqa: SLF001
        if getattr(layer, "unroll", None) is False:
            layer.unroll = True


def _set_unroll(config: Any) -> None:
    """Set unroll=True in every recurrent layer's config, nested ones included."""
    if isinstance(config, dict):
        if config.get("class_name") in RNN_CLASSES and isinstance(config.get("config"), dict):
            config["config"]["unroll"] = True
        for value in config.values():
            _set_unroll(value)
    elif isinstance(config, list):
        for value in config:
            _set_unroll(value)
