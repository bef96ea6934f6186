"""Target profiles: which artifact each device gets, with which quantization and delegate.

Pure data plus the artifact planner; no heavy imports (`mobilec targets` is fast).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mobilec.errors import UnsupportedError
from mobilec.formats import FORMATS
from mobilec.policy.modes import CALIBRATING, mode_for_format


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
    platform: str = ""  # who loads it: android | ios | any
    docs: str = ""  # the delegate's documentation, cited in the manifest

    def delegate_for(self, fmt: str) -> str:
        return self.delegate_by_format.get(fmt, self.delegate)


#: Android API level from which NNAPI is deprecated (Android 15).
NNAPI_DEPRECATED_API = 35
#: NNAPI feature level the op table is checked against: Android 11 (API 30, NNAPI 1.3)
#: is the first with signed int8 tensors, which the TFLite int8 converter emits.
NNAPI_CHECK_API = 30
NNAPI_WARNING = ("NNAPI is deprecated from Android 15 (API 35); there, and for every op NNAPI "
                 "cannot take, the model runs on the XNNPACK CPU delegate instead. Ship the "
                 "fallback on purpose: test on the oldest and the newest device you support.")


TARGETS: dict[str, TargetProfile] = {
    "android-nnapi": TargetProfile(
        name="android-nnapi", formats=("tflite",), preferred_quantization="int8",
        delegate="nnapi", fallback="xnnpack", platform="android",
        constraints="NNAPI accelerators want full-integer (int8) ops; float ops run on CPU",
        warning=NNAPI_WARNING,
        options={"allow_fp16": False, "execution_preference": "sustained_speed",
                 "max_number_delegated_partitions": 3, "checked_api_level": NNAPI_CHECK_API},
        docs="https://ai.google.dev/edge/litert/android/delegates/nnapi"),
    "android-gpu": TargetProfile(
        name="android-gpu", formats=("tflite",), preferred_quantization="float16",
        delegate="gpu", fallback="xnnpack", platform="android",
        constraints="the GPU delegate computes in float16; int8 weights are dequantized",
        options={"precision_loss_allowed": True, "inference_preference": "sustained_speed"},
        docs="https://ai.google.dev/edge/litert/android/gpu"),
    "ios-coreml": TargetProfile(
        name="ios-coreml", formats=("coreml",), preferred_quantization="float16",
        delegate="coreml", fallback="cpu_only", platform="ios",
        constraints="mlprogram computes in float16 by default; compute units ALL (ANE, GPU, CPU)",
        options={"compute_units": "ALL"},
        docs="https://apple.github.io/coremltools/docs-guides/"),
    "cpu": TargetProfile(
        name="cpu", formats=("tflite", "onnx"), preferred_quantization="int8",
        delegate="xnnpack", fallback=None, delegate_by_format={"onnx": "ort-cpu"},
        always_float32=True, platform="any",
        constraints="XNNPACK (TFLite) and CPUExecutionProvider (onnxruntime)",
        options={"num_threads": 1},
        docs="https://ai.google.dev/edge/litert/performance/delegates"),
    "android-executorch": TargetProfile(
        name="android-executorch", formats=("executorch",), preferred_quantization="int8",
        delegate="xnnpack", fallback="portable", platform="android",
        constraints="PyTorch sources only; XNNPACK takes what it supports, the rest runs on "
                    "ExecuTorch's portable kernels",
        options={"num_threads": 1},
        docs="https://pytorch.org/executorch/stable/backends-xnnpack.html"),
    "ios-executorch": TargetProfile(
        name="ios-executorch", formats=("executorch",), preferred_quantization="float32",
        delegate="coreml", fallback="xnnpack", platform="ios",
        constraints="PyTorch sources only; the Core ML backend runs on Apple devices "
                    "(checked structurally elsewhere), XNNPACK when it cannot be lowered",
        options={"compute_units": "ALL"},
        docs="https://pytorch.org/executorch/stable/backends-coreml.html"),
    "ios-coreai": TargetProfile(
        name="ios-coreai", formats=("coreai",), preferred_quantization="float16",
        delegate="coreai", fallback="cpu", platform="ios",
        constraints="Core AI (iOS/macOS 27+) places each op on the Neural Engine, GPU or CPU; "
                    "float16 is what the Neural Engine computes in. Verified here with "
                    "coreai-core's Linux runtime",
        options={"compute_units": "ALL"},
        docs="https://developer.apple.com/documentation/coreai"),
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
        if plan_mode is None and wanted in CALIBRATING and not has_calibration:
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
                # A target that always ships float32 beside the recipe's mode (cpu) ships it as
                # the baseline: budgets judge what the recipe asked for, not the reference.
                role = "baseline" if v == "float32" and mode != "float32" else "artifact"
                add(ArtifactSpec(fmt, v, name, prof.delegate_for(fmt), prof.fallback, role=role))
    # formats named in `convert.formats` that no target produces
    for fmt in formats or []:
        if not any(s.format == fmt for s in specs):
            delegate, fallback = FORMATS[fmt].delegate, FORMATS[fmt].fallback
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
            delegate, fallback = FORMATS[fmt].delegate, FORMATS[fmt].fallback
            add(ArtifactSpec(fmt, "float32", None, delegate, fallback, role="baseline"))
    return specs


def describe() -> list[dict[str, Any]]:
    """One row per target for `mobilec targets` (and its --json)."""
    return [{"target": p.name, "artifacts": ", ".join(FORMATS[f].suffix for f in p.formats),
             "formats": list(p.formats), "quantization": p.preferred_quantization,
             "delegate": ", ".join(dict.fromkeys(p.delegate_for(f) for f in p.formats)),
             "fallback": p.fallback or "-", "platform": p.platform,
             "constraints": p.constraints, "warning": p.warning, "options": dict(p.options),
             "docs": p.docs} for p in TARGETS.values()]
