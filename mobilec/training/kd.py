"""Knowledge-distillation training: soft targets from a teacher, a student's logits, the loop.

Used by distill (a new student learns from the loaded model) and by factorize's
fine-tuning (the factorized model learns back the outputs it had before).

Soft targets come from logits, not probabilities (Hinton et al. 2015): when a
model ends in softmax, its pre-softmax tensor is used — the final Dense/Conv is
re-applied with a linear activation, or the Softmax layer's input is taken.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mobilec.errors import DataError
from mobilec.formats.runtime import batched
from mobilec.sources.labels import label_ids
from mobilec.training.surgery import clone_layer
from mobilec.util import progress
from mobilec.util.metrics import is_classifier
from mobilec.util.tfenv import import_tf, import_tf_keras

PROB_TOLERANCE = 1e-3  # rows summing to 1 within this are probabilities
LOG_FLOOR = 1e-7  # log(p) of a probability output: keeps log(0) finite


@dataclass
class Head:
    """A view of a model whose first output is trainable logits."""
    model: Any  # shares every layer with the original model except, maybe, a linear twin of the last
    kind: str  # "pre-softmax" | "softmax-input" | "outputs"
    finish: Callable[[], None]  # copies what training changed back into the original model


def logits_head(model: Any) -> Head:
    """The model's logits, taken in front of a final softmax when it has one."""
    tfk = import_tf_keras()
    history = model.outputs[0]._keras_history
    layer = history.layer
    node = layer._inbound_nodes[history.node_index]
    config = layer.get_config()
    activation = config.get("activation")
    if isinstance(layer, tfk.layers.Softmax) or (
            isinstance(layer, tfk.layers.Activation) and activation == "softmax"):
        return Head(tfk.Model(model.inputs, node.call_args[0]), "softmax-input", lambda: None)
    if activation == "softmax" and len(node.keras_inputs) == 1:
        # A linear twin of the final layer, fed the same tensor; after training its
        # weights go back into the softmax layer (the two compute the same logits).
        twin = clone_layer(layer, activation="linear", name=f"{layer.name}_logits")
        logits = twin(node.call_args[0])
        twin.set_weights(layer.get_weights())
        return Head(tfk.Model(model.inputs, logits), "pre-softmax",
                    lambda: layer.set_weights(twin.get_weights()))
    return Head(model, "outputs", lambda: None)


def looks_like_probabilities(out: np.ndarray) -> bool:
    return bool(is_classifier(out) and np.all(out >= 0) and np.all(out <= 1)
                and np.allclose(out.sum(axis=-1), 1.0, atol=PROB_TOLERANCE))


def to_logits(out: np.ndarray) -> np.ndarray:
    """Probabilities become log-probabilities (softmax of them gives the probabilities back)."""
    if looks_like_probabilities(out):
        return np.log(np.clip(out, LOG_FLOOR, 1.0)).astype("float32")
    return out.astype("float32")


def keras_logits(model: Any, x: np.ndarray) -> np.ndarray:
    """First-output logits of a tf_keras model, inference mode."""
    head = logits_head(model)

    def run(batch: np.ndarray) -> list[np.ndarray]:
        out = head.model(batch, training=False)
        return [np.asarray(out[0] if isinstance(out, (list, tuple)) else out)]

    logits = batched(run, x)[0]
    return to_logits(logits) if head.kind == "outputs" else logits


def hard_labels(y: np.ndarray | None, out_shape: tuple[int, ...], where: str) -> np.ndarray | None:
    """Integer class labels for a classifier (one-hot is accepted), or None. The same check
    as every split's labels at load (mobilec.sources.labels), for the teacher's output."""
    if y is None or len(out_shape) != 2:
        return None
    return label_ids(y, out_shape[-1], where)[0]


@dataclass
class Schedule:
    temperature: float
    alpha: float  # weight of the soft (teacher) loss; the rest goes to the hard labels
    epochs: int
    batch_size: int
    learning_rate: float
    seed: int = 0


def fit(head: Head, x: np.ndarray, teacher: np.ndarray, y: np.ndarray | None,
        schedule: Schedule) -> list[float]:
    """Train `head.model` towards the teacher's logits (and labels). Returns loss per epoch.

    Classifiers: alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) + (1 - alpha) * CE(y, s);
    the T^2 keeps the soft gradients' scale independent of T. Other outputs: mean
    squared error to the teacher's outputs (and to y when its shape matches).
    """
    tf = import_tf()
    tfk = import_tf_keras()
    model = head.model
    probe = model(x[:2], training=False)
    probe = np.asarray(probe[0] if isinstance(probe, (list, tuple)) else probe)
    classifier = is_classifier(teacher)
    student_probs = head.kind == "outputs" and looks_like_probabilities(probe)
    use_labels = y is not None and schedule.alpha < 1.0
    alpha = schedule.alpha if use_labels else 1.0
    T = schedule.temperature  # noqa: N806 - the usual name
    optimizer = tfk.optimizers.Adam(schedule.learning_rate)

    def student_logits(xb: Any) -> Any:
        out = model(xb, training=True)
        out = out[0] if isinstance(out, (list, tuple)) else out
        return tf.math.log(tf.clip_by_value(out, LOG_FLOOR, 1.0)) if student_probs else out

    def loss_fn(s: Any, t: Any, yb: Any) -> Any:
        if classifier:
            soft = tf.nn.softmax(t / T)
            kl = tf.reduce_sum(soft * (tf.nn.log_softmax(t / T) - tf.nn.log_softmax(s / T)), -1)
            loss = alpha * T * T * tf.reduce_mean(kl)
            if use_labels:
                ce = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=yb, logits=s)
                loss += (1.0 - alpha) * tf.reduce_mean(ce)
            return loss
        loss = alpha * tf.reduce_mean(tf.square(s - t))
        if use_labels:
            loss += (1.0 - alpha) * tf.reduce_mean(tf.square(s - tf.cast(yb, s.dtype)))
        return loss

    @tf.function(reduce_retracing=True)
    def step(xb: Any, tb: Any, yb: Any) -> Any:
        with tf.GradientTape() as tape:
            loss = loss_fn(student_logits(xb), tb, yb)
            if model.losses:
                loss += tf.add_n(model.losses)  # the layers' own regularizers
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    labels = y if use_labels else np.zeros(len(x), dtype="int64")
    if use_labels and not classifier and labels.shape[1:] != teacher.shape[1:]:
        raise DataError(f"data.train y has shape {labels.shape[1:]} per sample, the model's output "
                        f"{teacher.shape[1:]}", hint="set alpha: 1 to distill without labels")
    rng = np.random.default_rng(schedule.seed)
    history: list[float] = []
    for n in range(schedule.epochs):
        order = rng.permutation(len(x))
        total, seen = 0.0, 0
        for i in range(0, len(x), schedule.batch_size):
            idx = order[i:i + schedule.batch_size]
            loss = step(tf.constant(x[idx]), tf.constant(teacher[idx]), tf.constant(labels[idx]))
            total += float(loss) * len(idx)
            seen += len(idx)
        history.append(total / seen)
        progress.epoch("training", n + 1, schedule.epochs, history[-1])
        if not np.isfinite(history[-1]):
            break
    head.finish()
    return history
