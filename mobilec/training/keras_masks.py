"""Block-sparse magnitude pruning of a tf_keras model's kernels, fine-tuned on data.train.

tfmot's block_size takes 2-D weights only (Dense), so the prune stage hands this module
the kernels tfmot would prune, on an unwrapped clone: each gets a mask of runs along its
input-channel axis (ndim - 2: Dense (in, out) axis 0, Conv2D (kh, kw, in, out) axis 2;
training/sparsity.py, the mask PyTorch uses too), re-applied after every training batch
and recomputed ~10 times per run on the same schedule as PyTorch's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mobilec.recipe.schema import PruneConfig
from mobilec.state import ModelState
from mobilec.training.finetune import fit
from mobilec.training.sparsity import block_mask, remasking, schedule
from mobilec.util.tfenv import import_tf_keras


class KernelMasks:
    """One block mask per kernel variable; `apply` zeroes the masked entries in place."""

    def __init__(self, kernels: list[Any], block: int) -> None:
        self.kernels = kernels
        self.block = block
        self.masks: list[Any] = []

    def update(self, sparsity: float) -> None:
        self.masks = [block_mask(k.numpy(), sparsity, self.block, axis=len(k.shape) - 2)
                      for k in self.kernels]
        self.apply()

    def apply(self) -> None:
        for kernel, mask in zip(self.kernels, self.masks, strict=True):
            kernel.assign(kernel * mask)


def fit_masked(state: ModelState, model: Any, kernels: list[Any], cfg: PruneConfig,
               total_steps: int, targets: tuple[np.ndarray, Any, str]) -> dict[str, Any]:
    """Fine-tune `model` with its `kernels` block-pruned toward cfg.sparsity; the final
    masks are at the target, whatever the step count. Returns finetune.fit's metrics."""
    tfk = import_tf_keras()
    target = schedule(cfg.schedule, cfg.sparsity, total_steps)
    masks = KernelMasks(kernels, cfg.block)
    masks.update(target(0))
    after_step = remasking(masks, target, total_steps)

    class Remask(tfk.callbacks.Callback):
        step = 0

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            self.step += 1
            after_step(self.step)

    trained = fit(state, model, epochs=cfg.epochs, batch_size=cfg.batch_size,
                  learning_rate=cfg.learning_rate, callbacks=[Remask()], targets=targets)
    masks.update(cfg.sparsity)
    return trained
