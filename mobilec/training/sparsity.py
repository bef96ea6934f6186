"""Magnitude-pruning pieces both frameworks share (framework-free: numpy only).

`schedule` is the target sparsity at a training step (constant, or tfmot's cubic ramp);
`block_mask` is the mask of block sparsity: runs of `block` consecutive weights along a
kernel's input-channel axis, zeroed together. That axis is the innermost one of the
serialized weights (TFLite/XNNPACK store Conv kernels OHWI and FullyConnected/Linear
[out, in]), so each pruned run is `block` adjacent zero bytes in the int8 file and saying
where the zeros are costs ~1/block of a bit per weight instead of ~1: the gzip size drops.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def schedule(kind: str, sparsity: float, total_steps: int) -> Callable[[int], float]:
    """The target sparsity at a step. constant: the target from the first step. polynomial:
    0 -> target by ~70% of training (cubic, as tfmot's PolynomialDecay), leaving the last
    steps to recover accuracy at the final sparsity."""
    if kind == "constant":
        return lambda step: sparsity
    ramp = max(1, int(total_steps * 0.7))
    return lambda step: sparsity * (1.0 - (1.0 - min(step, ramp) / ramp) ** 3)


def remasking(masks: Any, target: Callable[[int], float], total_steps: int
              ) -> Callable[[int], None]:
    """What runs after each training step (1-based) of either framework: the masks
    recomputed at the schedule's sparsity ~10 times per run, re-applied every step (the
    optimizer moves pruned weights off zero). `masks` has update(sparsity) and apply()."""
    frequency = max(1, total_steps // 10)

    def after_step(step: int) -> None:
        if step % frequency == 0:
            masks.update(target(step))
        masks.apply()

    return after_step


def block_mask(weights: np.ndarray, sparsity: float, block: int, axis: int) -> np.ndarray:
    """1 where a weight is kept, 0 where it is pruned, in runs of `block` along `axis`.

    Each run is scored by the mean |w| of its weights (tfmot's AVG block pooling); an axis
    whose length is not a multiple of `block` ends in a shorter run, scored by its own mean.
    The lowest-scoring runs are zeroed until the zeros are as close to
    round(sparsity * size) as whole runs allow. block 1 is plain magnitude pruning.
    """
    a = np.moveaxis(np.abs(np.asarray(weights, dtype=np.float64)), axis, -1)
    length = a.shape[-1]
    runs = -(-length // block)
    padded = np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, runs * block - length)])
    sizes = np.full(runs, block)
    sizes[-1] = length - (runs - 1) * block
    scores = padded.reshape(*a.shape[:-1], runs, block).sum(-1) / sizes
    flat_sizes = np.broadcast_to(sizes, scores.shape).reshape(-1)
    order = np.argsort(scores.reshape(-1), kind="stable")
    zeroed = np.concatenate([[0], np.cumsum(flat_sizes[order])])
    count = int(np.argmin(np.abs(zeroed - round(sparsity * a.size))))  # runs to zero
    keep = np.ones(scores.size, dtype=bool)
    keep[order[:count]] = False
    mask = np.repeat(keep.reshape(scores.shape), block, axis=-1)[..., :length]
    return np.moveaxis(mask, -1, axis).astype(np.asarray(weights).dtype)
