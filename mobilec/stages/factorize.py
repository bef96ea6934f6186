"""factorize: replace large Dense/Conv kernels by truncated-SVD low-rank factor pairs.
PyTorch sources: stages/factorize_torch.py (same SVD, same rank search).

A kernel W (fan-in x out; a k x k conv's kernel flattened to k*k*cin x cout) is
W ~ (U_r S_r^1/2)(S_r^1/2 V_r^T). Dense(n) becomes Dense(r, linear, no bias) ->
Dense(n, its activation and bias); a k x k conv becomes a k x k conv with r
filters (the original strides, padding, dilation) -> a 1x1 conv with cout filters.
At full rank the pair computes exactly what the layer did. A layer is left as it
is when the pair would not be at least MIN_SAVING smaller.

Which layers: by default not the first layer nor the layers that produce the
outputs (they hold few parameters and cost the most accuracy: a 10-class head at
rank 2 breaks the model), nor a layer whose factorization saves less than
`min_share` of the model's parameters. `rank: auto` measures each candidate's
sensitivity (the accuracy drop on the eval data after factorizing that layer
alone at 1/8, 1/4 and 1/2 of full rank; top-1 agreement or output noise without
labels) and then lowers ranks greedily, most parameters saved per unit of
sensitivity first, while the estimated drop stays within the allowance
(`max_drop`, else budget.max_accuracy_drop); the combination is measured and
backed off move by move until it fits, before any fine-tuning.

Optional fine-tuning (epochs > 0) distills the factorized model towards the
outputs the model had before this stage (mixed with the labels when there are
any), so it also works on unlabelled train data.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mobilec.errors import RecipeError, StageError, UnsupportedError
from mobilec.formats.runtime import source_runner
from mobilec.recipe.schema import FactorizeConfig
from mobilec.stages import factorize_torch
from mobilec.stages.factorize_auto import MIN_SAVING, auto_ranks, predict
from mobilec.stages.factorize_core import LowRank, low_rank
from mobilec.state import ModelState
from mobilec.training import kd
from mobilec.training.finetune import require_train_data
from mobilec.training.flops import model_cost
from mobilec.training.surgery import (
    Replacement,
    clone_layer,
    graph_nodes,
    is_model,
    output_layers,
    rebuild,
    same_layer,
    unique_name,
)
from mobilec.training.torch_model import is_torch
from mobilec.util.tfenv import import_tf_keras, set_seed

# Fine-tuning: soft targets at a mild temperature carry the model's own
# "dark knowledge"; labels, when present, get half the weight.
FINETUNE_TEMPERATURE = 2.0
FINETUNE_ALPHA = 0.5
SEED = 0


def run(state: ModelState, config: FactorizeConfig) -> dict[str, Any]:
    if is_torch(state):
        return factorize_torch.run(state, config)
    model = state.keras_model
    if model is None:
        raise UnsupportedError(
            "factorize rewrites a Keras model's layers and the recipe's model is available only "
            "as a graph (ONNX, or a SavedModel without Keras metadata)",
            where=str(state.recipe.model.path),
            hint="point model.path at the Keras .keras/.h5 the model came from, or drop the stage")
    before = model_cost(model)
    allowed, reasons = candidates(model, config)
    min_params = int(config.min_share * before.params)
    metrics: dict[str, Any] = {"params_before": before.params, "flops_before": before.flops}
    if config.rank == "auto":
        shapes = [(layer.name, tuple(layer.get_weights()[0].shape)) for layer in _layers(model)
                  if layer.name in allowed]

        def build(ranks: dict[str, int]) -> Any:
            return factorize_model(model, rank=None, energy=None, only=set(ranks), ranks=ranks)[0]

        ranks, search = auto_ranks(state, model, shapes, build, config, before.params)
        metrics["rank_search"] = search
        new, factored, skipped = factorize_model(model, rank=None, energy=None,
                                                 only=set(ranks), ranks=ranks)
        for name in allowed - set(ranks):
            reasons[name] = "rank auto: no measured rank fits the allowance and saves enough"
    else:
        new, factored, skipped = factorize_model(model, rank=config.rank, energy=config.energy,
                                                 only=allowed, min_params=min_params)
    for name in skipped:
        reasons.setdefault(name, f"would save less than {MIN_SAVING:.0%} of the layer or "
                                 f"{config.min_share:.0%} of the model's parameters")
    skipped = sorted(reasons)
    metrics["skip_reasons"] = reasons
    if not factored:
        state.note("factorize: no layer would get smaller at this rank/energy; model unchanged")
        return {**metrics, "params_after": before.params, "flops_after": before.flops,
                "layers_factorized": [], "layers_skipped": skipped}
    acc_before = state.eval_accuracy(source_runner(state))
    acc_svd = state.eval_accuracy(lambda x: predict(new, x))
    if config.epochs:
        metrics.update(_finetune(state, model, new, config))
    state.replace_model(new)
    after = model_cost(new)
    acc_after = state.eval_accuracy(source_runner(state))
    metrics.update({
        "params_after": after.params, "flops_after": after.flops,
        "params_ratio": round(after.params / before.params, 4) if before.params else None,
        "layers_factorized": factored, "layers_skipped": skipped,
        "accuracy_before": acc_before, "accuracy_factorized": acc_svd,
        "accuracy_after": acc_after,
        "accuracy_drop_factorized": _drop(acc_before, acc_svd),
        "accuracy_drop": _drop(acc_before, acc_after),
    })
    if after.uncounted:
        metrics["flops_uncounted"] = after.uncounted
    return metrics


def _drop(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else round(before - after, 6)


def candidates(model: Any, config: FactorizeConfig) -> tuple[set[str], dict[str, str]]:
    """(names factorize may touch, {name: why not} for the eligible layers it must leave)."""
    tfk = import_tf_keras()
    eligible = {layer.name: layer for layer in _layers(model) if _eligible(layer, tfk)}
    reasons: dict[str, str] = {}
    if config.skip_edges:
        for name in _first_layers(model):
            reasons[name] = "first layer: few parameters, and every later layer reads it"
        outs = output_layers(model)
        for name, layer in eligible.items():
            if id(layer) in outs:
                reasons[name] = "produces a model output: its rank would cap the outputs"
    unknown = [n for n in config.skip if n not in eligible]
    if unknown:
        raise RecipeError(f"factorize.skip names layers that are not Dense/Conv layers of the "
                          f"model: {unknown}", hint=f"eligible layers: {sorted(eligible)}")
    for name in config.skip:
        reasons[name] = "listed in skip"
    reasons = {n: r for n, r in reasons.items() if n in eligible}
    return set(eligible) - set(reasons), reasons


def _layers(model: Any) -> list[Any]:
    found = []
    for layer in model.layers:
        found.extend(_layers(layer) if is_model(layer) else [layer])
    return found


def _first_layers(model: Any) -> set[str]:
    """The weighted layers reached first from each input (through Reshape, Rescaling, …)."""
    consumers: dict[int, list[Any]] = {}
    for node in graph_nodes(model):
        ins = node.inbound_layers
        for layer in ins if isinstance(ins, (list, tuple)) else [ins]:
            consumers.setdefault(id(layer), []).append(node.layer)
    found: set[str] = set()
    stack, seen = [t._keras_history.layer for t in model.inputs], set()
    while stack:
        for nxt in consumers.get(id(stack.pop()), []):
            if id(nxt) in seen:
                continue
            seen.add(id(nxt))
            if nxt.weights or is_model(nxt):
                found.add(nxt.name)
            else:
                stack.append(nxt)
    return found


def factorize_model(model: Any, *, rank: float | None, energy: float | None,
                    only: set[str] | None = None, ranks: dict[str, int] | None = None,
                    min_params: int = 0) -> tuple[Any, list[dict[str, Any]], list[str]]:
    """A copy of `model` with its eligible layers factorized; (model, factorized, skipped).

    only: the layer names that may be touched (None: every eligible layer). ranks:
    an absolute rank per layer name, instead of rank/energy. min_params: leave a
    layer alone when the pair would save fewer parameters than this.
    """
    factored: list[dict[str, Any]] = []
    skipped: list[str] = []
    taken: set[str] = set()
    tfk = import_tf_keras()

    def replace(layer: Any) -> Replacement:
        if is_model(layer):
            return [(rebuild(layer, replace), None)]
        if not _eligible(layer, tfk) or (only is not None and layer.name not in only):
            return same_layer(layer)
        kernel, *bias = layer.get_weights()
        low = low_rank(kernel, rank=rank, energy=energy, keep=(ranks or {}).get(layer.name))
        old_params = kernel.size + sum(b.size for b in bias)
        new_params = low.first.size + low.second.size + sum(b.size for b in bias)
        if (new_params > old_params * (1.0 - MIN_SAVING)
                or (min_params and old_params - new_params < min_params)):
            skipped.append(layer.name)
            return same_layer(layer)
        factored.append({"name": layer.name, "kind": type(layer).__name__, "rank": low.rank,
                         "full_rank": low.full_rank, "energy": round(low.energy, 4),
                         "params_before": int(old_params), "params_after": int(new_params)})
        return _pair(layer, low, bias, unique_name(model, f"{layer.name}_lowrank", taken))

    return rebuild(model, replace), factored, skipped


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

