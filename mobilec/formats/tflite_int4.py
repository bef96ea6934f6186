"""4-bit weight quantization of a .tflite with ai-edge-quantizer."""

from __future__ import annotations

from pathlib import Path

from mobilec.errors import UnsupportedError
from mobilec.state import Artifact, ModelState


def build_int4(state: ModelState, artifact: Artifact, dest: Path) -> None:
    raise UnsupportedError("int4 is not available yet")
