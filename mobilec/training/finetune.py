"""Fine-tuning a tf_keras model on the recipe's train data (prune, qat).

The loss follows the model and the labels: integer labels on a classifier give
sparse cross-entropy, with `from_logits` decided by whether the model already
ends in a softmax (its outputs are probabilities). Without labels the model is
fine-tuned to reproduce its own pre-compression outputs (self-distillation), so
a recipe with unlabelled train data still works and the report says so.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mobilec.errors import UnsupportedError
from mobilec.state import ModelState
from mobilec.util import progress
from mobilec.util.tfenv import import_tf_keras, set_seed


def require_trainable(state: ModelState, what: str) -> Any:
    """The tf_keras model, or a clear exit-2 error saying why `what` cannot run."""
    if state.keras_model is None:
        fmt = state.source.format if state.source else "this"
        kind = "an ONNX model" if fmt == "onnx" else f"a {fmt} model available only as a graph"
        raise UnsupportedError(
            f"{what} fine-tunes a Keras model (tf_keras) and the recipe's model is {kind}",
            where=str(state.recipe.model.path),
            hint="point model.path at the Keras .keras/.h5 or SavedModel with Keras metadata, "
                 "or drop the stage and use post-training quantization (mode int8, dynamic, int4)")
    require_train_data(state, f"{what} fine-tunes the model")
    return state.keras_model


def require_train_data(state: ModelState, what: str,
                       hint: str = "add data: {source: npz, train: train.npz} or drop the stage"
                       ) -> Any:
    """data.train, or a clear exit-2 error: stages never train on eval data."""
    train = state.data.train if state.data is not None else None
    if train is None or len(train) == 0:
        raise UnsupportedError(f"{what} on data.train and the recipe has no data.train "
                               "(eval data is never trained on)", where=state.recipe.source,
                               hint=hint)
    return train


def outputs_are_probabilities(model: Any, x: np.ndarray) -> bool:
    """True when the model's (first) output rows are non-negative and sum to 1."""
    out = model(x[:16], training=False)
    out = np.asarray(out[0] if isinstance(out, (list, tuple)) else out)
    return bool(out.ndim == 2 and out.shape[-1] >= 2 and np.all(out >= -1e-6)
                and np.allclose(out.sum(axis=-1), 1.0, atol=1e-3))


def training_targets(state: ModelState, model: Any) -> tuple[np.ndarray, Any, str]:
    """(targets, loss, description) for fine-tuning `model` on data.train."""
    tfk = _tf_keras()
    train = state.data.train
    probs = outputs_are_probabilities(model, train.x)
    if len(model.outputs) != 1:
        raise UnsupportedError(f"fine-tuning handles single-output models; this one has "
                               f"{len(model.outputs)} outputs", where=str(state.recipe.model.path))
    out_dim = model.outputs[0].shape[-1]
    y = train.y
    if y is None:
        targets = np.asarray(model.predict(train.x, verbose=0, batch_size=256))
        if probs:
            loss = tfk.losses.CategoricalCrossentropy()
        else:
            loss = tfk.losses.MeanSquaredError()
        state.note("data.train has no labels: fine-tuning matched the model's own outputs")
        return targets, loss, "self-distillation (no labels)"
    if y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1):
        if np.issubdtype(y.dtype, np.integer) and out_dim and out_dim >= 2:
            return (y.reshape(-1).astype("int64"),
                    tfk.losses.SparseCategoricalCrossentropy(from_logits=not probs),
                    "sparse categorical cross-entropy" + ("" if probs else " (logits)"))
    if y.ndim == 2 and out_dim and y.shape[1] == out_dim and out_dim >= 2 and np.allclose(
            y.sum(axis=-1), 1.0, atol=1e-3):
        return (y.astype("float32"), tfk.losses.CategoricalCrossentropy(from_logits=not probs),
                "categorical cross-entropy")
    return y.astype("float32"), tfk.losses.MeanSquaredError(), "mean squared error"


def fit(state: ModelState, model: Any, *, epochs: int, batch_size: int, learning_rate: float,
        callbacks: list[Any] | None = None, targets: tuple[np.ndarray, Any, str] | None = None
        ) -> dict[str, Any]:
    """Compile and fit `model` on data.train; returns what was done, for the stage metrics."""
    tfk = _tf_keras()
    set_seed(0)
    y, loss, loss_name = targets or training_targets(state, model)
    model.compile(optimizer=tfk.optimizers.Adam(learning_rate), loss=loss)
    history = model.fit(state.data.train.x, y, epochs=epochs, batch_size=batch_size, verbose=0,
                        shuffle=True, callbacks=[*(callbacks or []), _epoch_progress(tfk, epochs)])
    losses = history.history.get("loss") or [None]
    return {"epochs": epochs, "loss": loss_name,
            "final_loss": None if losses[-1] is None else round(float(losses[-1]), 5)}


def _epoch_progress(tfk: Any, epochs: int) -> Any:
    """A Keras callback reporting each epoch's loss on the progress display."""
    class EpochProgress(tfk.callbacks.Callback):
        def on_epoch_end(self, index: int, logs: dict[str, Any] | None = None) -> None:
            loss = (logs or {}).get("loss")
            progress.epoch("training", index + 1, epochs, None if loss is None else float(loss))

    return EpochProgress()


def steps_per_epoch(state: ModelState, batch_size: int) -> int:
    return max(1, -(-len(state.data.train) // batch_size))


def _tf_keras() -> Any:
    return import_tf_keras()
