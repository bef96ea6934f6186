"""prune: magnitude pruning with tfmot, fine-tuned on data.train, then stripped.
Channel pruning (structure: channels) is stages/prune_channels.py; magnitude pruning of
PyTorch sources is training/torch_prune.py. Block sparsity (`block` > 1) on Keras: tfmot's
block_size takes 2-D weights only (Dense), so the layers tfmot would prune are cloned
unwrapped and their kernels masked by training/keras_masks.py, in runs along the
input-channel axis (training/sparsity.py, the mask PyTorch uses too).

Layers are wrapped one at a time (a clone_function) rather than handing the whole
model to `prune_low_magnitude`, so a layer tfmot cannot prune is named in the
error instead of surfacing as tfmot's generic ValueError. The reported sparsity
is counted in the stripped model's kernels, never copied from the request.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mobilec.errors import UnsupportedError
from mobilec.recipe.schema import PruneConfig
from mobilec.stages import prune_channels
from mobilec.state import ModelState
from mobilec.training import keras_masks, torch_prune
from mobilec.training.finetune import fit, require_trainable, steps_per_epoch, training_targets
from mobilec.training.torch_model import is_torch
from mobilec.util.tfenv import import_tf_keras


def run(state: ModelState, config: PruneConfig) -> dict[str, Any]:
    cfg = config or PruneConfig()
    if cfg.structure == "channels":
        return prune_channels.run(state, cfg)
    if is_torch(state):
        return torch_prune.run(state, cfg)
    model = require_trainable(state, "prune")
    tfmot = import_tfmot()
    targets = training_targets(state, model)  # before wrapping: self-distillation needs the original
    steps = steps_per_epoch(state, cfg.batch_size) * cfg.epochs
    if cfg.block > 1:
        stripped, pruned_layers = wrap_prunable(model, None)
        kernels = [w for layer in stripped.layers if layer.name in pruned_layers
                   for w in prunable_weights(layer)]
        trained = keras_masks.fit_masked(state, stripped, kernels, cfg, steps, targets)
    else:
        schedule = make_schedule(tfmot, cfg.schedule, cfg.sparsity, steps)
        wrapped, pruned_layers = wrap_prunable(model, schedule)
        trained = fit(state, wrapped, epochs=cfg.epochs, batch_size=cfg.batch_size,
                      learning_rate=cfg.learning_rate,
                      callbacks=[tfmot.sparsity.keras.UpdatePruningStep()], targets=targets)
        stripped = tfmot.sparsity.keras.strip_pruning(wrapped)
    counted = count_sparsity(stripped, pruned_layers)
    state.replace_model(stripped)
    return {"sparsity": counted["sparsity"], "target_sparsity": cfg.sparsity,
            "schedule": cfg.schedule, "block": cfg.block, "pruned_layers": counted["layers"],
            "pruned_weights": counted["zeros"], "prunable_weights": counted["total"], **trained}


def import_tfmot() -> Any:
    """tfmot, imported only after TensorFlow is set up for tf_keras (TF_USE_LEGACY_KERAS)."""
    import_tf_keras()
    import tensorflow_model_optimization as tfmot

    return tfmot


def make_schedule(tfmot: Any, kind: str, sparsity: float, total_steps: int) -> Any:
    """constant: the target from the first step. polynomial: 0 -> target by ~70% of training,
    leaving the last steps to recover accuracy at the final sparsity.

    tfmot's wrapper increments its step before it updates masks, so the first training
    step is 1: schedules begin there, and masks are recomputed ~10 times per run.
    """
    sched = tfmot.sparsity.keras
    frequency = max(1, total_steps // 10)
    if kind == "constant":
        return sched.ConstantSparsity(sparsity, begin_step=1, frequency=frequency)
    ramp = max(1, int(total_steps * 0.7) // frequency) * frequency  # end_step is a pruning step
    return sched.PolynomialDecay(initial_sparsity=0.0, final_sparsity=sparsity, begin_step=1,
                                 end_step=1 + ramp, frequency=frequency)


def wrap_prunable(model: Any, schedule: Any) -> tuple[Any, set[str]]:
    """Clone `model` with every layer that has prunable weights wrapped; others as they are.
    With no schedule nothing is wrapped (the caller masks the weights itself), but the same
    layers are checked and named.

    Returns the clone and the names of the (would-be) wrapped layers."""

    tfk = import_tf_keras()
    tfmot = import_tfmot()
    from tensorflow_model_optimization.python.core.sparsity.keras import (
        prunable_layer,
        prune_registry,
    )

    registry = prune_registry.PruneRegistry
    wrapped_any: list[str] = []
    copies: list[tuple[Any, Any]] = []  # (original, fresh): weights are copied once built

    def wrap(layer: Any) -> Any:
        if isinstance(layer, tfk.Model):
            raise UnsupportedError(
                f"layer '{layer.name}' is a nested model ({type(layer).__name__}); tfmot cannot "
                "prune inside nested models", hint="flatten the model into one Sequential or "
                "functional graph, or drop the prune stage")
        supported = registry.supports(layer) or isinstance(layer, prunable_layer.PrunableLayer) \
            or hasattr(layer, "get_prunable_weights")
        if not supported:
            if layer.trainable_weights:
                raise UnsupportedError(
                    f"layer '{layer.name}' ({type(layer).__name__}) has weights tfmot cannot prune",
                    hint="make it a tfmot PrunableLayer (implement get_prunable_weights), or drop "
                         "the prune stage")
        # A fresh copy, so fine-tuning never mutates the loaded model's layers.
        fresh = layer.__class__.from_config(layer.get_config())
        copies.append((layer, fresh))
        if not supported or not _has_prunable(registry, layer):
            return fresh
        wrapped_any.append(layer.name)
        if schedule is None:
            return fresh
        return tfmot.sparsity.keras.prune_low_magnitude(fresh, pruning_schedule=schedule)

    try:
        clone = tfk.models.clone_model(model, clone_function=wrap)
    except UnsupportedError:
        raise
    except ValueError as exc:
        if "Subclassed" in str(exc):
            raise UnsupportedError("a subclassed Keras model cannot be pruned (its graph is "
                                   "unknown to tfmot)", hint="build it as Sequential or "
                                   "functional") from None
        raise
    if not wrapped_any:
        raise UnsupportedError("the model has no layer with prunable weights (Dense, Conv, …)",
                               hint="drop the prune stage")
    for original, fresh in copies:
        fresh.set_weights(original.get_weights())
    return clone, set(wrapped_any)


def _has_prunable(registry: Any, layer: Any) -> bool:
    if hasattr(layer, "get_prunable_weights") and not registry.supports(layer):
        return True
    if layer.__class__ in getattr(registry, "_LAYERS_WEIGHTS_MAP", {}):
        return bool(registry._weight_names(layer))  # noqa: SLF001 - tfmot has no public query
    return True  # RNN layers: tfmot decides per cell


def prunable_weights(layer: Any) -> list[Any]:
    """The weights tfmot prunes in an (unwrapped) layer: kernels, not biases."""
    from tensorflow_model_optimization.python.core.sparsity.keras import prune_registry

    registry = prune_registry.PruneRegistry
    if layer.__class__ in getattr(registry, "_LAYERS_WEIGHTS_MAP", {}):
        return [getattr(layer, n) for n in registry._weight_names(layer)]  # noqa: SLF001
    if hasattr(layer, "get_prunable_weights"):
        return list(layer.get_prunable_weights())
    return [w for w in layer.trainable_weights if len(w.shape) > 1]  # RNN: the kernels


def count_sparsity(model: Any, layer_names: set[str]) -> dict[str, Any]:
    """Zeros over the prunable weights of the pruned layers in the stripped model (what ships)."""
    zeros = total = 0
    for layer in model.layers:
        if layer.name in layer_names:
            for w in prunable_weights(layer):
                arr = np.asarray(w.numpy())
                zeros += int(np.sum(arr == 0))
                total += arr.size
    return {"sparsity": round(zeros / total, 4) if total else 0.0, "zeros": zeros, "total": total,
            "layers": len(layer_names)}
