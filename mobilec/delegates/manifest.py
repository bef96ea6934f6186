"""Delegate manifests: what runs each artifact on the device, and how to load it.

For every placed artifact, `<artifact file name>.delegate.json` beside it says which
delegate to use, with which options, what it falls back to, which of the model's
ops that delegate can take (measured by mobilec.delegates.opcompat), the real input/output
names, and the warnings (NNAPI's deprecation, ops that fall back). A `.tflite` also
carries the hint inside the file, as a flatbuffer metadata entry named
`mobilec.delegate`, so an app can read it from the model it ships. report.md gets a
ready-to-paste loading snippet per target (Kotlin / Swift).

Hooks: convert calls `prepare_for_placement` just before placing each artifact and
`write_manifests` once everything is placed; report calls `markdown_sections`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mobilec._version import __version__
from mobilec.delegates.tflite_metadata import embed_tflite_hint, tflite_hint
from mobilec.formats import get_format
from mobilec.formats.runtime import match_outputs
from mobilec.policy.targets import NNAPI_CHECK_API, NNAPI_DEPRECATED_API, NNAPI_WARNING, TARGETS
from mobilec.sources.batch import match_names
from mobilec.state import Artifact, ModelState
from mobilec.util.fs import atomic_write_text, remove_artifact

MANIFEST_SUFFIX = ".delegate.json"
MANIFEST_VERSION = 1

FALLBACK_TEXT = {"xnnpack": "the XNNPACK CPU delegate", "cpu_only": "Core ML on the CPU only",
                 None: "the CPU"}


# ----------------------------------------------------------------------------- convert hooks


def prepare_for_placement(state: ModelState, art: Artifact, built: Path) -> Path:
    """Measure op compatibility for the artifact's delegate and return the file to place.

    For .tflite that is a copy of the built (and verified) file with the delegate hint
    in its metadata; the copy is loaded once more so a broken write never gets placed.
    """
    key = ("op_compat", str(built), art.delegate)
    if key not in state.memo:
        try:
            state.memo[key] = get_format(art.format).op_compat(built, art)
        except Exception as exc:  # noqa: BLE001 - a checker failure must not lose the artifact
            state.memo[key] = {"error": f"{type(exc).__name__}: {str(exc).strip()[:200]}"}
    compat = state.memo[key]
    if "error" not in compat:
        art.op_compat = {k: compat[k] for k in ("supported", "total", "unsupported",
                                                "checked_with")}
    warnings = _warnings(art, compat)
    for w in warnings["notes"]:
        if w not in art.notes:
            art.notes.append(w)
    io = _io(built, art)
    art.inputs = io.get("inputs") or None  # the report lists what each file takes
    art.outputs = io.get("outputs") or None
    art.io_names = io_names(state, io)
    art.io_dtypes = io_dtypes(state, io) or None
    differs = [f"this file's {kind} are named differently from the source model's: "
               + ", ".join(f"'{f}' is '{s}'" for f, s in names.items())
               for kind, names in (art.io_names or {}).items()] + (art.io_dtypes or [])
    art.notes += [d for d in differs if d not in art.notes]
    manifest = {
        "mobilec_manifest": MANIFEST_VERSION, "mobilec_version": __version__,
        "artifact": art.path.name, "format": art.format, "target": art.target,
        "role": art.role, "quantization": art.quantization, "precision": art.precision,
        "delegate": art.delegate, "fallback": art.fallback,
        "options": _options(state, art), "input_layout": art.input_layout,
        **io, "op_compatibility": compat,
        "warnings": warnings["all"], "docs": _docs(art),
    }
    if art.io_quant is not None:
        manifest["io_quant"] = art.io_quant
    if art.delegate == "nnapi":
        manifest["deprecation"] = {"delegate": "nnapi", "from_android": 15,
                                   "from_api_level": NNAPI_DEPRECATED_API,
                                   "then_runs_on": art.fallback}
    art.manifest = manifest
    if art.format != "tflite":
        return built
    hinted = state.work_dir / "hinted" / (art.target or "baseline") / built.name
    hinted.parent.mkdir(parents=True, exist_ok=True)
    try:
        embed_tflite_hint(built, hinted, tflite_hint(manifest))
    except Exception as exc:  # noqa: BLE001 - ship the verified file rather than none
        art.notes.append(f"delegate hint not written into the .tflite metadata: {exc}"[:200])
        return built
    return hinted


def write_manifests(state: ModelState) -> list[Path]:
    """`<artifact>.delegate.json` beside every placed artifact (after renames are final)."""
    written: list[Path] = []
    for art in state.artifacts:
        manifest = art.manifest
        if manifest is None or not art.path.exists():
            continue
        manifest = {**manifest, "artifact": art.path.name, "status": art.status}
        if art.error:
            manifest["error"] = art.error
            manifest["warnings"] = [f"do not ship: {art.error}", *manifest["warnings"]]
        path = manifest_path(art.path)
        for stale in _twins(state, art):
            if stale != path and stale.exists():
                remove_artifact(stale)
        atomic_write_text(path, json.dumps(manifest, indent=2, default=str) + "\n")
        try:
            art.delegate_manifest = str(path.relative_to(state.out_dir))
        except ValueError:
            art.delegate_manifest = str(path)
        written.append(path)
    return written


def manifest_path(artifact: Path) -> Path:
    """`digits-int8.tflite` -> `digits-int8.tflite.delegate.json`.

    The whole file name, not the stem: the cpu target ships `digits-int8.tflite` and
    `digits-int8.onnx` side by side, and each needs its own manifest.
    """
    return artifact.with_name(artifact.name + MANIFEST_SUFFIX)


def _twins(state: ModelState, art: Artifact) -> list[Path]:
    return [manifest_path(art.path.with_name(state.artifact_name(art.format, art.quantization, u)))
            for u in (False, True)]


# ----------------------------------------------------------------------------- content


def _options(state: ModelState, art: Artifact) -> dict[str, Any]:
    prof = TARGETS.get(art.target or "")
    options: dict[str, Any] = dict(prof.options) if prof else {}
    if art.coreml is not None:
        # the recipe's compute units override the profile's
        options["compute_units"] = state.convert_config.coreml.compute_units
        options.update({k: v for k, v in (art.coreml or {}).items()
                        if k != "compute_units"})
    elif not prof:
        options["num_threads"] = 1 if art.delegate in ("xnnpack", "ort-cpu") else None
        options = {k: v for k, v in options.items() if v is not None}
    return options


def _docs(art: Artifact) -> str:
    prof = TARGETS.get(art.target or "")
    if prof and prof.docs:
        return prof.docs
    return {"tflite": TARGETS["cpu"].docs, "onnx": "https://onnxruntime.ai/docs/execution-providers/",
            "coreml": TARGETS["ios-coreml"].docs}.get(art.format, "")


def _warnings(art: Artifact, compat: dict[str, Any]) -> dict[str, list[str]]:
    """(every warning for the manifest, the short ones that also go into the report's note)."""
    notes: list[str] = []
    extra: list[str] = []
    fallback = FALLBACK_TEXT.get(art.fallback, art.fallback or "the CPU")
    if art.delegate == "nnapi":
        notes.append("NNAPI is deprecated from Android 15 (API 35): there this model runs on "
                     f"{fallback}")
        if art.quantization not in ("int8", "int8-io", "qat"):
            extra.append(f"{art.quantization} ops: NNAPI accelerators want full-integer (int8) "
                         "models; float ops usually end up on the CPU")
        need = compat.get("min_android_api")
        if need:
            extra.append(f"the NNAPI-supported ops need Android API {need}+ "
                         f"(checked against API {NNAPI_CHECK_API})")
    bad = compat.get("unsupported") or []
    if bad:
        n_bad = compat["total"] - compat["supported"]
        notes.append(f"{art.delegate} delegate cannot run {', '.join(bad)} ({n_bad} of "
                     f"{compat['total']} ops): they fall back to {fallback}")
        extra.append("each fallback splits the graph: tensors are copied between the delegate "
                     "and the CPU at every boundary, which can cost more than it saves")
    if "error" in compat:
        extra.append(f"op compatibility could not be measured: {compat['error']}")
    if art.delegate == "gpu" and art.quantization in ("int8", "int8-io", "dynamic", "int4"):
        extra.append("the GPU delegate computes in float: int8 weights are dequantized on load")
    eps = compat.get("execution_providers") or {}
    for ep, info in eps.items():
        if info.get("unsupported_ops"):
            extra.append(f"onnxruntime {ep} EP: {', '.join(info['unsupported_ops'])} not "
                         f"supported ({info['supported_nodes']}/{info['total_nodes']} nodes, "
                         f"{info['partitions']} partition(s))")
    if art.delegate == "nnapi":  # the manifest gets the long form of the deprecation note
        notes_for_manifest = [NNAPI_WARNING, *notes[1:]]
    else:
        notes_for_manifest = notes
    return {"notes": notes, "all": notes_for_manifest + extra}


def io_pairs(state: ModelState, io: dict[str, list[dict[str, Any]]]
             ) -> list[tuple[str, Any, dict[str, Any]]]:
    """(inputs|outputs, the source's TensorSpec, the file's {name, shape, dtype}) for each
    tensor, matched as the runners match them (by name, else shape, else position)."""
    pairs: list[tuple[str, Any, dict[str, Any]]] = []
    ins = io.get("inputs") or []
    if len(ins) == len(state.inputs):
        hits = match_names([t.name for t in state.inputs], [t["name"] for t in ins])
        index = {t["name"]: k for k, t in enumerate(ins)}
        order = range(len(ins)) if None in hits else [index[h] for h in hits if h is not None]
        pairs += [("inputs", t, ins[k]) for t, k in zip(state.inputs, order, strict=True)]
    outs = io.get("outputs") or []
    order = match_outputs(state.outputs, [t["name"] for t in outs], [t["shape"] for t in outs])
    pairs += [("outputs", t, outs[k]) for t, k in zip(state.outputs, order or [], strict=False)]
    return pairs


def io_names(state: ModelState, io: dict[str, list[dict[str, Any]]]
             ) -> dict[str, dict[str, str]] | None:
    """{inputs|outputs: {the file's name: the source's name}} where they differ (a format that
    cannot carry a name); None when every name agrees."""
    out: dict[str, dict[str, str]] = {}
    for kind, src, got in io_pairs(state, io):
        if got["name"] != src.name:
            out.setdefault(kind, {})[got["name"]] = src.name
    return out or None


def io_dtypes(state: ModelState, io: dict[str, list[dict[str, Any]]]) -> list[str]:
    """One sentence per tensor the file takes or gives in another dtype than the source
    (float16 I/O, int8 I/O): what the app feeds differs, so the report and snippet say it."""
    out = []
    for kind, src, got in io_pairs(state, io):
        have, want = str(got.get("dtype")), str(src.dtype)
        if want not in ("unknown", "string", "None") and have != want:
            out.append(f"{kind[:-1]} '{got['name']}' is {have} in this file ({want} in the "
                       "source model)")
    return out


def _io(path: Path, art: Artifact) -> dict[str, list[dict[str, Any]]]:
    """The artifact's own input/output names, shapes and dtypes (what the app must use)."""
    try:
        return get_format(art.format).describe_io(path, art)
    except Exception:  # noqa: BLE001 - the manifest is still useful without I/O details
        return {"inputs": [], "outputs": []}


# ----------------------------------------------------------------------------- report.md


def markdown_sections(state: ModelState) -> list[str]:
    """'## Loading on device': per target a snippet with the artifact's real names."""
    blocks: list[str] = []
    for target in dict.fromkeys(state.recipe.targets):
        arts = [a for a in state.artifacts if a.target == target and a.manifest
                and a.path.exists()]
        for art in _main_artifacts(arts):
            blocks.append(_snippet(state, art))
    if not blocks:
        return []
    head = ("## Loading on device\n\nReady to paste; file names, input/output names and "
            "shapes are the artifacts' own. Each artifact's `.delegate.json` has the options, "
            "the op compatibility and the fallback.")
    return [head + "\n\n" + "\n\n".join(blocks)]


def _main_artifacts(arts: list[Artifact]) -> list[Artifact]:
    """One artifact per format: the target's own quantization, not the float32 extra."""
    chosen: dict[str, Artifact] = {}
    for a in sorted(arts, key=lambda a: (a.status not in ("ok", "unverified"),
                                         a.quantization == "float32")):
        chosen.setdefault(a.format, a)
    return list(chosen.values())


def _snippet(state: ModelState, art: Artifact) -> str:
    m = art.manifest
    title = f"### {art.target}: `{art.path.name}` ({art.quantization}, {art.delegate}"
    title += f" → {art.fallback})" if art.fallback else ")"
    lines = [title, ""]
    if art.status != "ok":
        lines += [f"> **{art.status}**: {art.error or '; '.join(art.notes[-1:])}", ""]
    for w in m["warnings"][:1] if art.delegate == "nnapi" else []:
        lines += [f"> {w}", ""]
    lang, code = get_format(art.format).loader_snippet(art, m)
    differs = [f"// {kind[:-1]} \"{f}\" here is \"{s}\" in the source model and the other artifacts"
               for kind, names in (art.io_names or {}).items() for f, s in names.items()]
    differs += [f"// {d}" for d in art.io_dtypes or []]
    lines += [f"```{lang}", *differs, code, "```"]
    return "\n".join(lines)


