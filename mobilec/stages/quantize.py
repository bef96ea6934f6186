"""quantize: decide the plan. Each format applies it when it converts."""

from __future__ import annotations

from typing import Any

from mobilec.recipe import QuantizeConfig
from mobilec.state import ModelState, QuantPlan


def run(state: ModelState, config: QuantizeConfig) -> dict[str, Any]:
    options = config.model_dump(exclude={"mode"})
    state.plan = QuantPlan(mode=config.mode, options=options)
    metrics: dict[str, Any] = {"mode": config.mode}
    if config.keep_float is not None:
        from mobilec.mixed_precision import resolve_keep_float

        metrics.update(resolve_keep_float(state, config))
    return metrics
