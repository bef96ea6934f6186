"""quantize: decide the plan. Each format applies it when it converts.

PTQ modes only record the plan; `equalize` may first rescale the model's channels
(mobilec.stages.quantize_equalize). `qat` fine-tunes a quantization-aware copy of
the model first; `auto` measures candidates and records the one it chose.
"""

from __future__ import annotations

from typing import Any

from mobilec.diagnose.keep_float import resolve_keep_float
from mobilec.recipe.schema import QuantizeConfig
from mobilec.stages.quantize_auto import search
from mobilec.stages.quantize_equalize import apply_equalize
from mobilec.state import ModelState, QuantPlan
from mobilec.training.qat import quantization_aware_train


def run(state: ModelState, config: QuantizeConfig) -> dict[str, Any]:
    cfg = config or QuantizeConfig()
    options = cfg.model_dump(exclude={"mode"})
    metrics: dict[str, Any] = {"mode": cfg.mode}
    mode = cfg.mode
    # Before qat/auto/keep_float: each of them must see the model that will be quantized.
    metrics.update(apply_equalize(state, cfg))
    if mode == "qat":
        metrics.update(quantization_aware_train(state, cfg))
    elif mode == "auto":
        mode, candidates = search(state, cfg.candidates)
        budget = state.recipe.budget
        metrics.update({"chosen": mode, "max_accuracy_drop": budget.max_accuracy_drop if budget
                        else None, "candidates": candidates})
        options["auto"] = True
    state.plan = QuantPlan(mode=mode, options=options)
    if cfg.keep_float is not None:
        metrics.update(resolve_keep_float(state, cfg))
    return metrics
