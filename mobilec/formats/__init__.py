"""Artifact formats. One module per format; register it here with one line.

A format builds an artifact file from the ModelState for one quantization mode,
runs it on this host (or says it cannot), and lists its ops. Which modes it can
build is the policy table's business (mobilec.policy.modes), not the format's.
The registry below is plain data so that the recipe schema, the plan check and
`mobilec targets` can read it without importing any converter.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module
from typing import Any, Protocol

from mobilec.errors import UnsupportedError


class Format(Protocol):
    name: str
    suffix: str

    def build(self, state: Any, artifact: Any, dest: Any) -> None:
        """Write the artifact to `dest` (a path in the work dir) and fill artifact fields."""
    def runner(self, state: Any, artifact: Any) -> Any:
        """A callable batch -> outputs, or None when this host cannot run the format."""
    def latency(self, state: Any, artifact: Any, sample: Any) -> dict[str, float] | None: ...

    def describe_io(self, path: Any, artifact: Any) -> dict[str, list[dict[str, Any]]]:
        """The file's own input/output names, shapes and dtypes (what an app must use)."""

    def op_compat(self, path: Any, artifact: Any) -> dict[str, Any]:
        """Which ops the artifact's delegate takes: supported, total, unsupported, …"""

    def loader_snippet(self, artifact: Any, manifest: dict[str, Any]) -> tuple[str, str]:
        """(language, code) that loads the artifact on the device, with its real names."""


@dataclass(frozen=True)
class FormatInfo:
    suffix: str
    delegate: str  # the delegate an artifact gets when no target names one
    fallback: str | None
    impl: str  # "module:Class", imported on first use
    per_delegate: bool = False  # the file depends on the delegate (ExecuTorch backends)


FORMATS: dict[str, FormatInfo] = {
    "tflite": FormatInfo(".tflite", "xnnpack", None, "mobilec.formats.tflite:TFLiteFormat"),
    "onnx": FormatInfo(".onnx", "ort-cpu", None, "mobilec.formats.onnx:OnnxFormat"),
    "coreml": FormatInfo(".mlpackage", "coreml", "cpu_only", "mobilec.formats.coreml:CoreMLFormat"),
    "executorch": FormatInfo(".pte", "xnnpack", "portable",
                             "mobilec.formats.executorch:ExecuTorchFormat", per_delegate=True),
    "coreai": FormatInfo(".aimodel", "coreai", "cpu", "mobilec.formats.coreai:CoreAIFormat"),
}

_LOADED: dict[str, Format] = {}


def get_format(name: str) -> Format:
    if name not in FORMATS:
        raise UnsupportedError(f"unknown format '{name}' (formats: {', '.join(FORMATS)})")
    if name not in _LOADED:
        module, cls = FORMATS[name].impl.split(":")
        _LOADED[name] = getattr(import_module(module), cls)()
    return _LOADED[name]
