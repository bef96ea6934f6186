"""prune on a PyTorch source: magnitude (unstructured) sparsity with a schedule, fine-tuned.

Works on the weights themselves, not on module hooks, so an `ep.module()` graph (whose
submodules are never called) prunes like an eager module: the prunable weights are
the floating parameters of two or more dimensions (Conv and Linear kernels, attention
projections; not biases or normalization scales), each masked by its own magnitude
(torch.nn.utils.prune's L1Unstructured mask; with `block` > 1, runs of `block` weights
along the input-channel axis, dim 1 of Conv OIHW and Linear [out, in]: training/sparsity.py),
re-masked after every optimizer step and recomputed ~10 times per run on the schedule
tfmot uses for Keras. The reported sparsity is counted in the committed model's weights,
never copied from the request.
"""

from __future__ import annotations

from typing import Any

from mobilec.errors import UnsupportedError
from mobilec.recipe.schema import PruneConfig
from mobilec.state import ModelState
from mobilec.training.sparsity import block_mask, remasking, schedule
from mobilec.training.torch_fit import fit, steps_per_epoch
from mobilec.training.torch_model import commit, trainable_module


def run(state: ModelState, cfg: PruneConfig) -> dict[str, Any]:
    module = trainable_module(state, "prune")
    weights = prunable_weights(module)
    if not weights:
        raise UnsupportedError("the model has no prunable weights (Conv, Linear, …)",
                               where=str(state.recipe.model.path), hint="drop the prune stage")
    total_steps = steps_per_epoch(state, cfg.batch_size) * cfg.epochs
    target = schedule(cfg.schedule, cfg.sparsity, total_steps)
    masks = Masks(weights, block=cfg.block)
    masks.update(target(0))
    trained = fit(state, module, epochs=cfg.epochs, batch_size=cfg.batch_size,
                  learning_rate=cfg.learning_rate, what="prune",
                  after_step=remasking(masks, target, total_steps))
    masks.update(cfg.sparsity)  # the final masks are at the target, whatever the step count
    commit(state, module)
    counted = count_sparsity(state.torch_module, set(weights))
    return {"sparsity": counted["sparsity"], "target_sparsity": cfg.sparsity,
            "schedule": cfg.schedule, "block": cfg.block, "pruned_layers": len(weights),
            "pruned_weights": counted["zeros"], "prunable_weights": counted["total"], **trained}


def prunable_weights(module: Any) -> dict[str, Any]:
    """name -> parameter, for every floating parameter with two or more dimensions."""
    return {n: p for n, p in module.named_parameters()
            if p.is_floating_point() and p.dim() >= 2 and p.requires_grad}


class Masks:
    """One magnitude mask per weight; `apply` zeroes the masked entries in place. block > 1:
    runs of `block` weights along dim 1 (the input channels) are kept or zeroed together."""

    def __init__(self, weights: dict[str, Any], block: int = 1) -> None:
        self.weights = weights
        self.block = block
        self.masks: dict[str, Any] = {}

    @classmethod
    def of_zeros(cls, weights: dict[str, Any]) -> Masks:
        """Masks that keep today's zeros at zero (a pruned model trained further)."""
        masks = cls(weights)
        masks.masks = {n: (w.detach() != 0).to(w.dtype) for n, w in weights.items()}
        return masks

    def update(self, sparsity: float) -> None:
        import torch
        from torch.nn.utils import prune

        with torch.no_grad():
            for name, w in self.weights.items():
                if self.block > 1:
                    mask = block_mask(w.detach().cpu().numpy(), sparsity, self.block, axis=1)
                    self.masks[name] = torch.from_numpy(mask).to(w.device, w.dtype)
                    continue
                method = prune.L1Unstructured(amount=float(sparsity))
                self.masks[name] = method.compute_mask(w.detach(), torch.ones_like(w))
        self.apply()

    def apply(self) -> None:
        import torch

        with torch.no_grad():
            for name, w in self.weights.items():
                w.mul_(self.masks[name])


def count_sparsity(module: Any, names: set[str]) -> dict[str, Any]:
    """Zeros over the pruned weights of `module` (the committed model: what ships)."""
    zeros = total = 0
    for name, p in module.named_parameters():
        if name in names:
            zeros += int((p == 0).sum())
            total += p.numel()
    return {"sparsity": round(zeros / total, 4) if total else 0.0, "zeros": zeros, "total": total}
