"""ONNX models in: load, check, fix shapes, and reach TF formats through onnx2tf."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mobilec.errors import UnsupportedError
from mobilec.state import ModelState


def load_onnx(state: ModelState, path: Path) -> None:
    raise UnsupportedError("ONNX input is not available yet", where=str(path))


def inspect_onnx(path: Path) -> dict[str, Any]:
    raise UnsupportedError("ONNX inspection is not available yet", where=str(path))
