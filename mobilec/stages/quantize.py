"""quantize: decide the plan. Each format applies it when it converts."""

from __future__ import annotations

from typing import Any

from mobilec.recipe import QuantizeConfig
from mobilec.state import ModelState, QuantPlan


def run(state: ModelState, config: QuantizeConfig) -> dict[str, Any]:
    options = config.model_dump(exclude={"mode"})
    state.plan = QuantPlan(mode=config.mode, options=options)
    return {"mode": config.mode}
