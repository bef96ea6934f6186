"""prune {structure: channels}: whole channels removed (Keras: the model rebuilt with
narrower layers, training/channels_keras.py; PyTorch: torch-pruning's dependency graph,
training/channels_torch.py), then fine-tuned on data.train.

The stage reports what the user prunes for: parameters, multiply-adds, float32 weight
bytes and host latency (one sample, one thread, this host's TensorFlow/PyTorch) before
and after. The artifacts' own latencies (LiteRT, ExecuTorch) are in their rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mobilec.recipe.schema import PruneConfig
from mobilec.sources.batch import as_list, first_n
from mobilec.sources.pytorch import to_tensor
from mobilec.state import ModelState
from mobilec.training import channels_keras, channels_torch, finetune, torch_fit
from mobilec.training.flops import model_cost
from mobilec.training.torch_graph import set_mode
from mobilec.training.torch_model import commit, is_torch, trainable_module


def run(state: ModelState, cfg: PruneConfig) -> dict[str, Any]:
    ratio = float(cfg.ratio if cfg.ratio is not None else 0.5)
    if is_torch(state):
        before, after, info, trained = _torch(state, cfg, ratio)
    else:
        before, after, info, trained = _keras(state, cfg, ratio)
    metrics: dict[str, Any] = {"structure": "channels", "ratio": ratio}
    for key in ("params", "flops", "weights_bytes", "host_latency_ms"):
        metrics[f"{key}_before"], metrics[f"{key}_after"] = before[key], after[key]
    metrics["params_ratio"] = round(after["params"] / before["params"], 4)
    if before["host_latency_ms"]:
        metrics["host_latency_ratio"] = round(after["host_latency_ms"]
                                              / before["host_latency_ms"], 4)
    return {**metrics, **info, **trained}


def _keras(state: ModelState, cfg: PruneConfig, ratio: float
           ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    model = finetune.require_trainable(state, "prune")
    targets = finetune.training_targets(state, model)  # from the unpruned model
    x1 = first_n(state.sample_inputs(1), 1)
    before = _keras_cost(model, x1)
    narrow, info = channels_keras.prune_channels(model, ratio)
    trained = finetune.fit(state, narrow, epochs=cfg.epochs, batch_size=cfg.batch_size,
                           learning_rate=cfg.learning_rate, targets=targets)
    state.replace_model(narrow)
    return before, _keras_cost(narrow, x1), info, trained


def _keras_cost(model: Any, x1: Any) -> dict[str, Any]:
    cost = model_cost(model)
    return {"params": cost.params, "flops": cost.flops,
            "weights_bytes": int(sum(np.asarray(w).nbytes for w in model.get_weights())),
            "host_latency_ms": channels_keras.keras_latency(model, x1)}


def _torch(state: ModelState, cfg: PruneConfig, ratio: float
           ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]:
    module = trainable_module(state, "prune", layers=True)  # a .pt2's ops lifted into layers
    channels_torch.require_layers(module)
    targets = torch_fit.training_targets(state)  # from the unpruned model
    example = tuple(to_tensor(a) for a in as_list(first_n(state.sample_inputs(1), 1)))
    before = _torch_cost(module, example)
    info = channels_torch.prune_channels(module, example, ratio)
    set_mode(module, train=True)
    trained = torch_fit.fit(state, module, epochs=cfg.epochs, batch_size=cfg.batch_size,
                            learning_rate=cfg.learning_rate, what="prune", targets=targets)
    commit(state, module)
    return before, _torch_cost(state.torch_module, example), info, trained


def _torch_cost(module: Any, example: tuple[Any, ...]) -> dict[str, Any]:
    set_mode(module, train=False)
    return {"params": int(sum(p.numel() for p in module.parameters())),
            "flops": channels_torch.macs(module, example),
            "weights_bytes": int(sum(p.numel() * p.element_size() for p in module.parameters())
                                 + sum(b.numel() * b.element_size() for b in module.buffers())),
            "host_latency_ms": channels_torch.torch_latency(module, example)}
