"""factorize: replace large Dense/Conv kernels by truncated-SVD low-rank factor pairs.

A kernel W (fan-in x out; a k x k conv's kernel flattened to k*k*cin x cout) is
W ~ (U_r S_r^1/2)(S_r^1/2 V_r^T). Dense(n) becomes Dense(r, linear, no bias) ->
Dense(n, its activation and bias); a k x k conv becomes a k x k conv with r
filters (the original strides, padding, dilation) -> a 1x1 conv with cout filters.
At full rank the pair computes exactly what the layer did. A layer is left as it
is when the pair would not be at least MIN_SAVING smaller.

Optional fine-tuning (epochs > 0) distills the factorized model towards the
outputs the model had before this stage (mixed with the labels when there are
any), so it also works on unlabelled train data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mobilec.errors import StageError, UnsupportedError
from mobilec.formats.runtime import source_runner
from mobilec.recipe.schema import FactorizeConfig
from mobilec.state import ModelState
from mobilec.training import kd
from mobilec.training.finetune import require_train_data
from mobilec.training.flops import model_cost
from mobilec.training.surgery import (
    Replacement,
    clone_layer,
    is_model,
    rebuild,
    same_layer,
    unique_name,
)
from mobilec.util.metrics import accuracy
from mobilec.util.tfenv import import_tf_keras, set_seed

# Below this saving an extra op (one more kernel launch on device, one more
# tensor in memory) is not worth the few parameters.
MIN_SAVING = 0.10
# Fine-tuning: soft targets at a mild temperature carry the model's own
# "dark knowledge"; labels, when present, get half the weight.
FINETUNE_TEMPERATURE = 2.0
FINETUNE_ALPHA = 0.5
SEED = 0


@dataclass
class LowRank:
    rank: int
    full_rank: int
    energy: float  # fraction of sum(s^2) the kept singular values hold
    first: np.ndarray  # U_r S_r^1/2, reshaped as the first layer's kernel
    second: np.ndarray  # S_r^1/2 V_r^T, reshaped as the second layer's kernel


def run(state: ModelState, config: FactorizeConfig) -> dict[str, Any]:
    model = state.keras_model
    if model is None:
        raise UnsupportedError(
            "factorize rewrites a Keras model's layers and the recipe's model is available only "
            "as a graph (ONNX, or a SavedModel without Keras metadata)",
            where=str(state.recipe.model.path),
            hint="point model.path at the Keras .keras/.h5 the model came from, or drop the stage")
    before = model_cost(model)
    new, factored, skipped = factorize_model(model, rank=config.rank, energy=config.energy)
    metrics: dict[str, Any] = {"params_before": before.params, "flops_before": before.flops}
    if not factored:
        state.note("factorize: no layer would get smaller at this rank/energy; model unchanged")
        return {**metrics, "params_after": before.params, "flops_after": before.flops,
                "layers_factorized": [], "layers_skipped": skipped}
    acc_before = _eval_accuracy(state)
    acc_svd = _eval_accuracy_of(state, new)
    if config.epochs:
        metrics.update(_finetune(state, model, new, config))
    state.replace_model(new)
    after = model_cost(new)
    metrics.update({
        "params_after": after.params, "flops_after": after.flops,
        "params_ratio": round(after.params / before.params, 4) if before.params else None,
        "layers_factorized": factored, "layers_skipped": skipped,
        "accuracy_before": acc_before, "accuracy_factorized": acc_svd,
        "accuracy_after": _eval_accuracy(state),
    })
    if after.uncounted:
        metrics["flops_uncounted"] = after.uncounted
    return metrics


def factorize_model(model: Any, *, rank: float | None, energy: float | None
                    ) -> tuple[Any, list[dict[str, Any]], list[str]]:
    """A copy of `model` with its eligible layers factorized; (model, factorized, skipped)."""
    factored: list[dict[str, Any]] = []
    skipped: list[str] = []
    taken: set[str] = set()
    tfk = import_tf_keras()

    def replace(layer: Any) -> Replacement:
        if is_model(layer):
            return [(rebuild(layer, replace), None)]
        if not _eligible(layer, tfk):
            return same_layer(layer)
        kernel, *bias = layer.get_weights()
        low = low_rank(kernel, rank=rank, energy=energy)
        old_params = kernel.size + sum(b.size for b in bias)
        new_params = low.first.size + low.second.size + sum(b.size for b in bias)
        if new_params > old_params * (1.0 - MIN_SAVING):
            skipped.append(layer.name)
            return same_layer(layer)
        factored.append({"name": layer.name, "kind": type(layer).__name__, "rank": low.rank,
                         "full_rank": low.full_rank, "energy": round(low.energy, 4),
                         "params_before": int(old_params), "params_after": int(new_params)})
        return _pair(layer, low, bias, unique_name(model, f"{layer.name}_lowrank", taken))

    return rebuild(model, replace), factored, skipped


def low_rank(kernel: np.ndarray, *, rank: float | None, energy: float | None) -> LowRank:
    """Truncated SVD of a Dense/Conv kernel, split evenly (S^1/2 each side)."""
    matrix = kernel.reshape(-1, kernel.shape[-1]).astype(np.float64)
    u, s, vt = np.linalg.svd(matrix, full_matrices=False)
    full = len(s)
    power = s ** 2
    total = float(power.sum())
    if rank is not None:
        r = max(1, int(round(rank * full)))
    elif total == 0.0:
        r = 1
    else:
        # The smallest r whose singular values hold `energy` of the spectrum.
        r = int(np.searchsorted(np.cumsum(power) / total, (energy or 1.0) - 1e-12) + 1)
    r = min(r, full)
    root = np.sqrt(s[:r])
    first = (u[:, :r] * root).astype(kernel.dtype)
    second = (root[:, None] * vt[:r]).astype(kernel.dtype)
    spatial = kernel.shape[:-2] if kernel.ndim > 2 else ()
    return LowRank(rank=r, full_rank=full, energy=float(power[:r].sum() / total) if total else 1.0,
                   first=first.reshape(*kernel.shape[:-1], r),
                   second=second.reshape(*((1,) * len(spatial)), r, kernel.shape[-1]))


def _eligible(layer: Any, tfk: Any) -> bool:
    # Exact classes: subclasses (Conv2DTranspose, DepthwiseConv2D, wrappers) mean other maths.
    kinds = (tfk.layers.Dense, tfk.layers.Conv1D, tfk.layers.Conv2D, tfk.layers.Conv3D)
    return type(layer) in kinds and layer.get_config().get("groups", 1) == 1 and bool(layer.weights)


def _pair(layer: Any, low: LowRank, bias: list[np.ndarray], first_name: str) -> Replacement:
    """(first: rank-r projection, linear, no bias) -> (second: the layer's own name,
    activation and bias), so output names and activations stay as they were."""
    linear = {"name": first_name, "activation": "linear", "use_bias": False,
              "activity_regularizer": None}
    if isinstance(layer.get_config().get("units"), int):
        first = clone_layer(layer, units=low.rank, **linear)
        second = clone_layer(layer)
    else:
        ones = (1,) * (low.first.ndim - 2)
        first = clone_layer(layer, filters=low.rank, **linear)
        second = clone_layer(layer, kernel_size=ones, strides=ones, dilation_rate=ones,
                             padding="valid")
    return [(first, [low.first]), (second, [low.second, *bias])]


def _finetune(state: ModelState, original: Any, new: Any, config: FactorizeConfig
              ) -> dict[str, Any]:
    train = require_train_data(state, "factorize with epochs > 0 fine-tunes",
                               hint="add data.train, or set epochs: 0")
    if len(original.outputs) != 1:
        # Training towards output 0 alone would move the shared trunk under the others.
        raise UnsupportedError(f"factorize fine-tuning handles single-output models; this one "
                               f"has {len(original.outputs)} outputs",
                               where=str(state.recipe.model.path),
                               hint="set stages.factorize.epochs: 0 (the SVD alone)")
    targets = kd.keras_logits(original, train.x)
    labels = kd.hard_labels(train.y, targets.shape, where=str(state.recipe.source))
    set_seed(SEED)
    schedule = kd.Schedule(temperature=FINETUNE_TEMPERATURE, alpha=FINETUNE_ALPHA,
                           epochs=config.epochs, batch_size=config.batch_size,
                           learning_rate=config.learning_rate, seed=SEED)
    losses = kd.fit(kd.logits_head(new), train.x, targets, labels, schedule)
    if not np.isfinite(losses[-1]):
        raise StageError(f"factorize fine-tuning diverged (loss {losses[-1]})",
                         hint="lower stages.factorize.learning_rate")
    return {"epochs": config.epochs, "final_loss": round(losses[-1], 5),
            "finetune": "distilled from the unfactorized model" + (" and labels" if labels is
                                                                     not None else "")}


def _eval_accuracy(state: ModelState) -> float | None:
    if state.eval_x is None or state.eval_y is None:
        return None
    acc = accuracy(source_runner(state)(state.eval_x)[0], state.eval_y)
    return None if acc is None else round(acc, 6)


def _eval_accuracy_of(state: ModelState, model: Any) -> float | None:
    if state.eval_x is None or state.eval_y is None:
        return None
    out = model(state.eval_x, training=False)
    acc = accuracy(np.asarray(out[0] if isinstance(out, (list, tuple)) else out), state.eval_y)
    return None if acc is None else round(acc, 6)
