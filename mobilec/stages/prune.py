"""prune stage."""

from __future__ import annotations

from typing import Any

from mobilec.errors import UnsupportedError
from mobilec.state import ModelState


def run(state: ModelState, config: Any) -> dict[str, Any]:
    raise UnsupportedError("the prune stage is not available yet")
