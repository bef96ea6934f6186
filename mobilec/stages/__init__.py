"""Pipeline stages. Each is a module with `run(state, config) -> dict` (its report
metrics); register it here with one line. Stage modules import heavy libraries
inside `run`, so importing this package stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any

from mobilec.state import ModelState

StageFn = Callable[[ModelState, Any], dict[str, Any]]

# name -> module path. Order of execution comes from the recipe (see recipe.STAGE_ORDER).
STAGES: dict[str, str] = {
    "load": "mobilec.stages.load",
    "distill": "mobilec.stages.distill",
    "factorize": "mobilec.stages.factorize",
    "prune": "mobilec.stages.prune",
    "quantize": "mobilec.stages.quantize",
    "convert": "mobilec.stages.convert",
    "evaluate": "mobilec.stages.evaluate",
    "diagnose": "mobilec.stages.diagnose",
    "save": "mobilec.stages.save",
}


def get_stage(name: str) -> StageFn:
    return import_module(STAGES[name]).run
