"""Artifact formats. One module per format; register it here with one line.

A format builds an artifact file from the ModelState for one quantization mode,
runs it on this host (or says it cannot), and lists its ops.
"""

from __future__ import annotations

from typing import Any, Protocol

from mobilec.errors import UnsupportedError


class Format(Protocol):
    name: str
    suffix: str
    #: quantization modes this format can apply (besides float32)
    modes: frozenset[str]

    def build(self, state: Any, artifact: Any, dest: Any) -> None:
        """Write the artifact to `dest` (a path in the work dir) and fill artifact fields."""

    def runner(self, state: Any, artifact: Any) -> Any:
        """A callable batch -> outputs, or None when this host cannot run the format."""

    def latency(self, state: Any, artifact: Any, sample: Any) -> dict[str, float] | None: ...


def _registry() -> dict[str, Format]:
    from mobilec.formats.coreml import CoreMLFormat
    from mobilec.formats.onnx import OnnxFormat
    from mobilec.formats.tflite import TFLiteFormat

    return {f.name: f for f in (TFLiteFormat(), OnnxFormat(), CoreMLFormat())}


_FORMATS: dict[str, Format] | None = None


def get_format(name: str) -> Format:
    global _FORMATS
    if _FORMATS is None:
        _FORMATS = _registry()
    if name not in _FORMATS:
        raise UnsupportedError(f"unknown format '{name}' (formats: {', '.join(_FORMATS)})")
    return _FORMATS[name]
