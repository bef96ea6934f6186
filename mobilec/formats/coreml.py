"""Core ML (.mlpackage / .mlmodel) via coremltools. Filled in by the targets work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mobilec.errors import UnsupportedError
from mobilec.state import Artifact, ModelState


class CoreMLFormat:
    name = "coreml"
    suffix = ".mlpackage"
    modes = frozenset({"float32", "float16"})

    def build(self, state: ModelState, artifact: Artifact, dest: Path) -> None:
        raise UnsupportedError("Core ML conversion is not available yet")

    def runner(self, state: ModelState, artifact: Artifact) -> Any:
        return None

    def latency(self, state: ModelState, artifact: Artifact, sample: Any) -> None:
        return None
