"""factorize on a PyTorch source: nn.Linear / nn.Conv1d / nn.Conv2d weights replaced by
truncated-SVD factor pairs, with the same keys, rank search and fine-tuning as Keras.

Each weight is viewed in Keras' kernel layout (fan-in ... x out) so the one SVD
(`factorize.low_rank`) and the one `rank: auto` search (`factorize_auto.auto_ranks`)
serve both frameworks. Linear(in, out) becomes Linear(in, r, no bias) -> Linear(r, out);
a k x k Conv becomes a k x k Conv with r filters (the original stride, padding,
dilation) -> a 1x1 Conv with the original bias. Exact classes only, groups 1. The
first layer and the layers that size the outputs are left alone by default
(`skip_edges`). A `.pt2`'s graph (`ep.module()`) is factorized the same way once its
linear/conv ops are lifted into the modules they came from (training/torch_graph.py: same
names, so `skip` names the same layers); one with no such op is refused (exit 2).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from mobilec.errors import RecipeError, UnsupportedError
from mobilec.formats.runtime import source_runner
from mobilec.recipe.schema import FactorizeConfig
from mobilec.sources.batch import as_list
from mobilec.sources.pytorch import eager_runner, to_tensor
from mobilec.stages.factorize_auto import MIN_SAVING, auto_ranks
from mobilec.stages.factorize_core import low_rank
from mobilec.state import ModelState
from mobilec.training import kd
from mobilec.training.channels_torch import output_layers
from mobilec.training.finetune import require_train_data
from mobilec.training.torch_distill import kd_loss
from mobilec.training.torch_fit import Targets, first_output, fit
from mobilec.training.torch_graph import is_exported, lift_layers, set_mode
from mobilec.training.torch_model import commit, cost, require_free_batch

FINETUNE_TEMPERATURE = 2.0  # as for Keras: the model's own soft targets, labels half the weight
FINETUNE_ALPHA = 0.5


def run(state: ModelState, config: FactorizeConfig) -> dict[str, Any]:
    import torch

    require_free_batch(state, "factorize")
    # a .pt2's ep.module(): its linear/conv ops lifted into the modules they came from
    module = lift_layers(state.torch_module)
    if is_exported(module) and not eligible(module):
        raise UnsupportedError(
            "factorize rewrites Linear/Conv layers and this exported program has no linear or "
            "conv op on a weight of its own (groups 1) to factorize",
            where=str(state.recipe.model.path),
            hint="drop the factorize stage, or load the model from its Python code "
                 "(model.module: 'pkg.mod:factory' with --trust-code)")
    example = tuple(to_tensor(a) for a in as_list(state.sample_inputs(2)))
    before = cost(module, example)
    allowed, reasons = candidates(module, example, config)
    metrics: dict[str, Any] = {"params_before": before[0], "flops_before": before[1],
                               "framework": "pytorch"}
    if config.rank == "auto":
        layers = dict(eligible(module))
        shapes = [(n, keras_kernel(layers[n]).shape) for n in sorted(allowed)]

        def build(ranks: dict[str, int]) -> Any:
            return factorize_module(module, rank=None, energy=None, only=set(ranks),
                                    ranks=ranks)[0]

        ranks, metrics["rank_search"] = auto_ranks(state, module, shapes, build, config,
                                                   before[0])
        new, factored, skipped = factorize_module(module, rank=None, energy=None,
                                                  only=set(ranks), ranks=ranks)
        for name in allowed - set(ranks):
            reasons[name] = "rank auto: no measured rank fits the allowance and saves enough"
    else:
        new, factored, skipped = factorize_module(
            module, rank=config.rank, energy=config.energy, only=allowed,
            min_params=int(config.min_share * before[0]))
    for name in skipped:
        reasons.setdefault(name, f"would save less than {MIN_SAVING:.0%} of the layer or "
                                 f"{config.min_share:.0%} of the model's parameters")
    metrics.update(skip_reasons=reasons, layers_skipped=sorted(reasons))
    if not factored:
        state.note("factorize: no layer would get smaller at this rank/energy; model unchanged")
        return {**metrics, "params_after": before[0], "flops_after": before[1],
                "layers_factorized": []}
    acc_before = state.eval_accuracy(eager_runner(module))
    acc_svd = state.eval_accuracy(eager_runner(new))
    if config.epochs:
        metrics.update(_finetune(state, new, config))
    torch.manual_seed(0)
    commit(state, new)
    after = cost(new, example)
    acc_after = state.eval_accuracy(eager_runner(new))
    return {**metrics, "params_after": after[0], "flops_after": after[1],
            "params_ratio": round(after[0] / before[0], 4) if before[0] else None,
            "layers_factorized": factored, "accuracy_before": acc_before,
            "accuracy_factorized": acc_svd, "accuracy_after": acc_after,
            "accuracy_drop_factorized": _drop(acc_before, acc_svd),
            "accuracy_drop": _drop(acc_before, acc_after)}


def eligible(module: Any) -> list[tuple[str, Any]]:
    import torch

    nn = torch.nn
    return [(n, m) for n, m in module.named_modules()
            if type(m) in (nn.Linear, nn.Conv1d, nn.Conv2d)
            and getattr(m, "groups", 1) == 1 and getattr(m, "padding_mode", "zeros") == "zeros"]


def candidates(module: Any, example: tuple[Any, ...], config: FactorizeConfig
               ) -> tuple[set[str], dict[str, str]]:
    """(names factorize may touch, {name: why not} for the eligible layers it must leave)."""
    import torch

    layers = dict(eligible(module))
    reasons: dict[str, str] = {}
    if config.skip_edges and layers:
        order: list[Any] = []
        hooks = [m.register_forward_hook(lambda m, _i, _o: order.append(m))
                 for m in layers.values()]
        try:
            with torch.no_grad():
                outputs = [first_output(set_mode(module, train=False)(*example))]
        finally:
            for h in hooks:
                h.remove()
        names = {id(m): n for n, m in layers.items()}
        if order:
            reasons[names[id(order[0])]] = ("first layer: few parameters, and every later "
                                            "layer reads it")
        for m in output_layers(module, example, outputs):
            if id(m) in names:
                reasons[names[id(m)]] = "produces a model output: its rank would cap the outputs"
    unknown = [n for n in config.skip if n not in layers]
    if unknown:
        raise RecipeError(f"factorize.skip names modules that are not Linear/Conv modules of "
                          f"the model: {unknown}", hint=f"eligible modules: {sorted(layers)}")
    for name in config.skip:
        reasons[name] = "listed in skip"
    return set(layers) - set(reasons), reasons


def keras_kernel(layer: Any) -> np.ndarray:
    """The weight in Keras' layout: (in, out) for Linear, (k..., cin, cout) for Conv."""
    w = layer.weight.detach().cpu().numpy()
    return w.T if w.ndim == 2 else np.transpose(w, (*range(2, w.ndim), 1, 0))


def factorize_module(module: Any, *, rank: float | None, energy: float | None,
                     only: set[str] | None = None, ranks: dict[str, int] | None = None,
                     min_params: int = 0) -> tuple[Any, list[dict[str, Any]], list[str]]:
    """A copy of `module` with its eligible layers factorized; (module, factorized, skipped)."""
    new = copy.deepcopy(module)
    factored: list[dict[str, Any]] = []
    skipped: list[str] = []
    for name, layer in eligible(new):
        if only is not None and name not in only:
            continue
        kernel = keras_kernel(layer)
        low = low_rank(kernel, rank=rank, energy=energy, keep=(ranks or {}).get(name))
        bias = 0 if layer.bias is None else layer.bias.numel()
        old_params, new_params = kernel.size + bias, low.first.size + low.second.size + bias
        if new_params > old_params * (1.0 - MIN_SAVING) or \
                (min_params and old_params - new_params < min_params):
            skipped.append(name)
            continue
        factored.append({"name": name, "kind": type(layer).__name__, "rank": low.rank,
                         "full_rank": low.full_rank, "energy": round(low.energy, 4),
                         "params_before": int(old_params), "params_after": int(new_params)})
        parent, _, child = name.rpartition(".")
        setattr(new.get_submodule(parent) if parent else new, child, _pair(layer, low))
    return new, factored, skipped


def _pair(layer: Any, low: Any) -> Any:
    import torch

    nn = torch.nn
    r = low.rank
    if isinstance(layer, nn.Linear):
        first = nn.Linear(layer.in_features, r, bias=False)
        second = nn.Linear(r, layer.out_features, bias=layer.bias is not None)
        first_w, second_w = low.first.T, low.second.T
    else:
        conv = type(layer)
        ones = (1,) * (low.first.ndim - 2)
        first = conv(layer.in_channels, r, layer.kernel_size, layer.stride, layer.padding,
                     layer.dilation, bias=False)
        second = conv(r, layer.out_channels, ones, bias=layer.bias is not None)
        spatial = tuple(range(low.first.ndim - 2))
        first_w = np.transpose(low.first, (low.first.ndim - 1, low.first.ndim - 2, *spatial))
        second_w = np.transpose(low.second, (low.second.ndim - 1, low.second.ndim - 2,
                                             *spatial))
    with torch.no_grad():
        first.weight.copy_(torch.from_numpy(np.ascontiguousarray(first_w)))
        second.weight.copy_(torch.from_numpy(np.ascontiguousarray(second_w)))
        if layer.bias is not None:
            second.bias.copy_(layer.bias.detach())
    return nn.Sequential(first, second).eval()


def _finetune(state: ModelState, new: Any, config: FactorizeConfig) -> dict[str, Any]:
    train = require_train_data(state, "factorize with epochs > 0 fine-tunes",
                               hint="add data.train, or set epochs: 0")
    teacher = kd.to_logits(source_runner(state)(train.x)[0])
    labels = kd.hard_labels(train.y, teacher.shape, where=str(state.recipe.source))
    arrays = [teacher] + ([labels.astype("int64")] if labels is not None else [])
    targets = Targets(arrays, kd_loss(FINETUNE_TEMPERATURE, FINETUNE_ALPHA, teacher.ndim == 2),
                      "distilled from the unfactorized model"
                      + (" and labels" if labels is not None else ""))
    set_mode(new, train=True)
    for p in new.parameters():
        p.requires_grad_(True)
    trained = fit(state, new, epochs=config.epochs, batch_size=config.batch_size,
                  learning_rate=config.learning_rate, what="factorize", targets=targets)
    return {"epochs": config.epochs, "final_loss": trained["final_loss"],
            "finetune": targets.name}



def _drop(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else round(before - after, 6)
