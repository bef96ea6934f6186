"""Target profiles: which artifact each device gets, with which quantization and delegate.

Pure data plus the artifact planner; no heavy imports (`mobilec targets` is fast).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mobilec.errors import UnsupportedError

FORMAT_MODES: dict[str, frozenset[str]] = {
    "tflite": frozenset({"float32", "float16", "dynamic", "int8", "int8-io", "int16x8", "int4", "qat"}),
    "onnx": frozenset({"float32", "float16", "dynamic", "int8", "int8-io", "qat"}),
    "coreml": frozenset({"float32", "float16", "dynamic", "int8", "int8-io", "qat", "palettize"}),
}
FORMAT_SUFFIX = {"tflite": ".tflite", "onnx": ".onnx", "coreml": ".mlpackage"}
GENERIC_DELEGATE = {"tflite": ("xnnpack", None), "onnx": ("ort-cpu", None), "coreml": ("coreml", "cpu_only")}


@dataclass(frozen=True)
class TargetProfile:
    name: str
    formats: tuple[str, ...]
    preferred_quantization: str
    delegate: str
    fallback: str | None
    delegate_by_format: dict[str, str] = field(default_factory=dict)
    always_float32: bool = False  # also ship the float32 artifact (cpu)
    constraints: str = ""
    warning: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def delegate_for(self, fmt: str) -> str:
        return self.delegate_by_format.get(fmt, self.delegate)


TARGETS: dict[str, TargetProfile] = {
    "android-nnapi": TargetProfile(
        name="android-nnapi", formats=("tflite",), preferred_quantization="int8",
        delegate="nnapi", fallback="xnnpack",
        constraints="NNAPI accelerators want full-integer (int8) ops; float ops run on CPU",
        warning="NNAPI is deprecated from Android 15; ops it cannot take fall back to the "
                "XNNPACK CPU delegate. Test on the oldest device you support.",
        options={"allow_fp16": False, "execution_preference": "sustained_speed"}),
    "android-gpu": TargetProfile(
        name="android-gpu", formats=("tflite",), preferred_quantization="float16",
        delegate="gpu", fallback="xnnpack",
        constraints="the GPU delegate computes in float16; int8 weights are dequantized",
        options={"precision_loss_allowed": True, "inference_preference": "sustained_speed"}),
    "ios-coreml": TargetProfile(
        name="ios-coreml", formats=("coreml",), preferred_quantization="float16",
        delegate="coreml", fallback="cpu_only",
        constraints="mlprogram computes in float16 by default; compute units ALL (ANE, GPU, CPU)",
        options={"compute_units": "ALL"}),
    "cpu": TargetProfile(
        name="cpu", formats=("tflite", "onnx"), preferred_quantization="int8",
        delegate="xnnpack", fallback=None, delegate_by_format={"onnx": "ort-cpu"},
        always_float32=True,
        constraints="XNNPACK (TFLite) and CPUExecutionProvider (onnxruntime)",
        options={"num_threads": 1}),
}


@dataclass
class ArtifactSpec:
    format: str
    quantization: str
    target: str | None
    delegate: str | None
    fallback: str | None
    role: str = "artifact"
    skipped_reason: str | None = None


def profile(name: str) -> TargetProfile:
    if name not in TARGETS:
        raise UnsupportedError(f"unknown target '{name}' (targets: {', '.join(TARGETS)})")
    return TARGETS[name]


def mode_for_format(mode: str, fmt: str) -> str | None:
    """The mode a format applies for a plan mode, or None when it cannot."""
    if mode == "qat":
        return "qat" if fmt != "coreml" else "int8"
    if fmt == "onnx" and mode == "int8-io":
        return "int8"
    return mode if mode in FORMAT_MODES[fmt] else None


def plan_artifacts(targets: list[str], plan_mode: str | None, formats: list[str] | None = None,
                   has_calibration: bool = True) -> list[ArtifactSpec]:
    """Every artifact the recipe asks for, plus the float32 baseline of each format."""
    specs: list[ArtifactSpec] = []
    seen: set[tuple[str, str, str | None]] = set()

    def add(spec: ArtifactSpec) -> None:
        key = (spec.format, spec.quantization, spec.target)
        if key not in seen:
            seen.add(key)
            specs.append(spec)

    for name in targets:
        prof = profile(name)
        wanted = plan_mode or prof.preferred_quantization
        if plan_mode is None and wanted in ("int8", "int8-io", "int16x8") and not has_calibration:
            wanted = "dynamic"
        for fmt in prof.formats:
            if formats is not None and fmt not in formats:
                continue
            mode = mode_for_format(wanted, fmt)
            variants = ["float32"] if prof.always_float32 else []
            if mode is None:
                add(ArtifactSpec(fmt, wanted, name, prof.delegate_for(fmt), prof.fallback,
                                 skipped_reason=f"quantization '{wanted}' cannot be applied to {fmt}"))
            else:
                variants.append(mode)
            for v in variants:
                add(ArtifactSpec(fmt, v, name, prof.delegate_for(fmt), prof.fallback))
    # formats named in `convert.formats` that no target produces
    for fmt in formats or []:
        if not any(s.format == fmt for s in specs):
            delegate, fallback = GENERIC_DELEGATE[fmt]
            mode = mode_for_format(plan_mode or "float32", fmt)
            if mode is None:
                add(ArtifactSpec(fmt, plan_mode or "float32", None, delegate, fallback,
                                 skipped_reason=f"quantization '{plan_mode}' cannot be applied to {fmt}"))
                mode = "float32"
            add(ArtifactSpec(fmt, mode, None, delegate, fallback))
    # float32 baselines: size_ratio and "slower than float32" need them
    for fmt in sorted({s.format for s in specs}):
        if not any(s.format == fmt and s.quantization == "float32" and not s.skipped_reason
                   for s in specs):
            delegate, fallback = GENERIC_DELEGATE[fmt]
            add(ArtifactSpec(fmt, "float32", None, delegate, fallback, role="baseline"))
    return specs


def describe() -> list[dict[str, Any]]:
    return [{"target": p.name, "artifacts": ", ".join(p.formats),
             "quantization": p.preferred_quantization, "delegate": p.delegate,
             "fallback": p.fallback or "-", "constraints": p.constraints,
             "warning": p.warning} for p in TARGETS.values()]
