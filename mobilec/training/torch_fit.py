"""The one PyTorch fine-tuning loop (prune, qat, distill, factorize on PyTorch sources).

The loss follows the model and the labels, as for Keras (training/finetune.py):
integer labels on a classifier give cross-entropy (on log-probabilities when the
model already ends in a softmax), one-hot rows give soft cross-entropy, other
labels mean squared error; without labels the model learns to reproduce its own
outputs from before the stage (self-distillation). Adam, seeded batch order, one
progress line per epoch (loss) on the run's display.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mobilec.errors import StageError, UnsupportedError
from mobilec.sources.batch import as_list, first_n
from mobilec.sources.pytorch import eager_runner, to_tensor
from mobilec.state import ModelState
from mobilec.util import progress

SEED = 0


@dataclass
class Targets:
    """What a batch is trained towards: arrays indexed like data.train, and the loss
    `loss(output, *targets_of_the_batch) -> scalar tensor`."""
    arrays: list[np.ndarray]
    loss: Callable[..., Any]
    name: str


def first_output(out: Any) -> Any:
    """The (single) output tensor of a forward pass."""
    import torch
    from torch.utils import _pytree as pytree

    leaves = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
    return leaves[0]


def outputs_are_probabilities(out: np.ndarray) -> bool:
    return bool(out.ndim == 2 and out.shape[-1] >= 2 and np.all(out >= -1e-6)
                and np.allclose(out.sum(axis=-1), 1.0, atol=1e-3))


def training_targets(state: ModelState) -> Targets:
    """Targets and loss for fine-tuning the live model (as it is before the stage: the
    self-distillation targets are its outputs) on data.train."""
    import torch.nn.functional as F

    train = state.data.train
    if len(state.outputs) != 1:
        raise UnsupportedError(f"fine-tuning handles single-output models; this one has "
                               f"{len(state.outputs)} outputs", where=str(state.recipe.model.path))
    run = eager_runner(state.torch_module)
    sample = run(first_n(train.x, 16))[0]
    probs = outputs_are_probabilities(sample)
    out_dim = sample.shape[-1] if sample.ndim >= 2 else 0
    y = train.y

    def ce(out: Any, t: Any) -> Any:
        return F.nll_loss(out.clamp_min(1e-7).log(), t) if probs else F.cross_entropy(out, t)

    def soft_ce(out: Any, t: Any) -> Any:
        logp = out.clamp_min(1e-7).log() if probs else F.log_softmax(out, -1)
        return -(t * logp).sum(-1).mean()

    if y is None:
        own = run(train.x)[0].astype("float32")
        state.note("data.train has no labels: fine-tuning matched the model's own outputs")
        return Targets([own], soft_ce if probs else F.mse_loss, "self-distillation (no labels)")
    if (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)) and np.issubdtype(y.dtype, np.integer) \
            and out_dim >= 2:
        return Targets([y.reshape(-1).astype("int64")], ce,
                       "cross-entropy" + ("" if probs else " (logits)"))
    if y.ndim == 2 and out_dim >= 2 and y.shape[1] == out_dim and np.allclose(
            y.sum(axis=-1), 1.0, atol=1e-3):
        return Targets([y.astype("float32")], soft_ce, "categorical cross-entropy")
    return Targets([y.astype("float32")], F.mse_loss, "mean squared error")


def fit(state: ModelState, module: Any, *, epochs: int, batch_size: int, learning_rate: float,
        what: str, targets: Targets | None = None,
        after_step: Callable[[int], None] | None = None,
        parameters: list[Any] | None = None) -> dict[str, Any]:
    """Train `module` (already in train mode) on data.train; returns the stage metrics.

    `after_step(step)` runs after each optimizer step (1-based): pruning masks, schedules.
    `parameters`: what the optimizer moves (default: every floating parameter)."""
    import torch

    torch.manual_seed(SEED)
    targets = targets or training_targets(state)
    xs = [to_tensor(a) for a in as_list(state.data.train.x)]
    ys = [to_tensor(a) for a in targets.arrays]
    params = parameters if parameters is not None else \
        [p for p in module.parameters() if p.is_floating_point() and p.requires_grad]
    opt = torch.optim.Adam(params, lr=learning_rate)
    n = len(xs[0])
    step = 0
    losses: list[float] = []
    for epoch in range(1, epochs + 1):
        order = torch.randperm(n)
        total, seen = 0.0, 0
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            opt.zero_grad()
            loss = targets.loss(first_output(module(*[x[idx] for x in xs])), *[y[idx] for y in ys])
            loss.backward()
            opt.step()
            step += 1
            if after_step is not None:
                after_step(step)
            total += float(loss.detach()) * len(idx)
            seen += len(idx)
        losses.append(total / max(1, seen))
        progress.epoch(what, epoch, epochs, losses[-1])
        if not np.isfinite(losses[-1]):
            raise StageError(f"{what}: fine-tuning diverged (loss {losses[-1]}) in epoch {epoch}",
                             hint=f"lower stages.{what}.learning_rate")
    return {"epochs": epochs, "loss": targets.name, "final_loss": round(losses[-1], 5),
            "framework": "pytorch"}


def steps_per_epoch(state: ModelState, batch_size: int) -> int:
    return max(1, -(-len(state.data.train) // batch_size))
