"""Core ML off macOS: the artifact is checked structurally (reloaded with skip_model_load,
I/O names/shapes/dtypes against the source, ops counted) instead of run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mobilec.delegates.opcompat import coreml_program_ops
from mobilec.formats.coreml_source import coreml_dtype_name
from mobilec.formats.coreml_tools import feature_name, import_coremltools, quiet
from mobilec.state import Artifact, ModelState

_DTYPES = {65568: "float32", 65552: "float16", 131104: "int32", 65600: "float64"}


def describe_io(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Names, shapes and dtypes of a saved Core ML model's inputs and outputs."""
    ct = import_coremltools()
    spec = ct.utils.load_spec(str(path))

    def feat(f: Any) -> dict[str, Any]:
        arr = f.type.multiArrayType
        return {"name": f.name, "shape": [int(d) for d in arr.shape],
                "dtype": _DTYPES.get(arr.dataType, str(arr.dataType))}

    return {"inputs": [feat(f) for f in spec.description.input],
            "outputs": [feat(f) for f in spec.description.output]}


def structural_check(state: ModelState, artifact: Artifact) -> None:
    ct = import_coremltools()
    problems: list[str] = []
    try:
        with quiet(state):
            ct.models.MLModel(str(artifact.path), skip_model_load=True)
        io_ = describe_io(artifact.path)
        ops = coreml_program_ops(artifact.path)
    except Exception as exc:  # noqa: BLE001 - a spec that does not reload failed verification
        artifact.status = "failed-verification"
        artifact.error = f"the Core ML model does not reload: {str(exc).strip()[:300]}"
        return
    for kind, want, got in (("input", state.inputs, io_["inputs"]),
                            ("output", state.outputs, io_["outputs"])):
        if len(want) != len(got):
            problems.append(f"{len(got)} {kind}s, source has {len(want)}")
            continue
        named = {g["name"]: g for g in got}
        for i, w in enumerate(want):
            shape = [1, *w.shape[1:]]
            if kind == "input" and artifact.input_transpose:
                shape = [shape[k] for k in artifact.input_transpose]
            # Core ML matches features by name; a lone feature may only be misnamed
            g = named.get(feature_name(w.name)) or (got[i] if len(got) == 1 else None)
            if g is None or g["name"] != feature_name(w.name):
                has = ", ".join(f"'{n}'" for n in named)
                problems.append(f"no {kind} named '{feature_name(w.name)}' (has {has})")
                if g is None:
                    continue
            if any(d is not None and d != s for d, s in zip(shape, g["shape"], strict=False)) \
                    or len(shape) != len(g["shape"]):
                problems.append(f"{kind} '{g['name']}' has shape {g['shape']}, source {shape}")
            # Core ML has no int64/float64: such a source feature is int32/float32 here
            want_dtype = coreml_dtype_name(w.dtype) if kind == "input" else "float32"
            if g["dtype"] != want_dtype:
                problems.append(f"{kind} '{g['name']}' is {g['dtype']}, source {w.dtype}")
    if not ops:
        problems.append("the Core ML program has no ops")
    artifact.verification = {"against": "source model structure (no Core ML runtime "
                                      "on this host)", "inputs": io_["inputs"],
                                      "outputs": io_["outputs"], "ops": len(ops)}
    if problems:
        artifact.status = "failed-verification"
        artifact.error = "Core ML structure differs from the source model: " + "; ".join(problems)
