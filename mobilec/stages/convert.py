"""convert: build every planned artifact, verify it against the model it came from,
and place it atomically in the output directory.

Verification gates the unquantized conversions (float32, float16): a converter
that changed the model's answers is a bug, whatever the budget says. Quantized
variants of a format whose float conversion failed are not trusted either;
their own quality is judged by the accuracy budget.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mobilec.delegates.manifest import prepare_for_placement, write_manifests
from mobilec.errors import MobilecError, StageError, stop_if_interrupted
from mobilec.formats import get_format
from mobilec.formats.runtime import source_runner
from mobilec.policy.targets import ArtifactSpec, plan_artifacts
from mobilec.recipe.schema import ConvertConfig
from mobilec.state import Artifact, ModelState
from mobilec.util.fs import atomic_place, gzip_size, os_error_reason, remove_artifact, size_of
from mobilec.util.metrics import fidelity, passes

GATED_MODES = ("float32", "float16")
# What a build fills on its work-dir artifact and each placed copy inherits.
COPIED_FIELDS = ("status", "error", "input_layout", "input_transpose", "io_quant", "precision",
                 "route", "routes_failed", "verification", "kept_float", "quantizer", "coreml",
                 "delegation", "not_run_reason")
VERIFY_SAMPLES = 128


def run(state: ModelState, config: ConvertConfig | None) -> dict[str, Any]:
    cfg = config or ConvertConfig()
    has_calib = state.data is not None and state.data.calibration is not None
    plan_mode = state.plan.mode if state.plan else None
    specs = plan_artifacts(list(state.recipe.targets), plan_mode, cfg.formats, has_calib)
    for fmt_name in dict.fromkeys(s.format for s in specs if not s.skipped_reason):
        precheck = getattr(get_format(fmt_name), "precheck", None)
        if precheck is not None:
            precheck(state)  # a format this model cannot reach is a usage error (exit 2)
    built: dict[tuple[str, str], Artifact] = {}
    for spec in specs:
        stop_if_interrupted()  # a signal lost inside the converter stops here, not at the end
        state.artifacts.append(_materialize(state, spec, built))
    _distrust_broken_formats(state)
    write_manifests(state)  # <artifact>.delegate.json, once names are final
    failed = [a for a in state.artifacts if a.status not in ("ok", "skipped")]
    return {"artifacts": len(state.artifacts), "failed": len(failed)}


def _materialize(state: ModelState, spec: ArtifactSpec, built: dict[tuple[str, str], Artifact]
                 ) -> Artifact:
    folder = spec.target or "baseline"
    art = Artifact(path=state.out_dir / folder / state.artifact_name(spec.format, spec.quantization),
                   format=spec.format, quantization=spec.quantization, target=spec.target,
                   role=spec.role, delegate=spec.delegate, fallback=spec.fallback)
    if spec.skipped_reason:
        art.status, art.error = "skipped", spec.skipped_reason
        return art
    key = (spec.format, spec.quantization)
    if key not in built:
        built[key] = _build(state, spec)
    work = built[key]
    _copy_result(work, art)
    if work.status == "failed":
        return art
    if art.status == "failed-verification":
        art.path = art.path.with_name(state.artifact_name(spec.format, spec.quantization, True))
    _discard_stale(state, art)
    # op compatibility for this artifact's delegate; .tflite gets the hint in its metadata
    atomic_place(prepare_for_placement(state, art, work.path), art.path)
    art.metrics["size_bytes"] = size_of(art.path)
    art.metrics["gzip_bytes"] = gzip_size(art.path)
    return art


def _copy_result(work: Artifact, art: Artifact) -> None:
    for name in COPIED_FIELDS:
        setattr(art, name, getattr(work, name))
    art.notes.extend(work.notes)
    art.metrics.update(work.metrics)


def _discard_stale(state: ModelState, art: Artifact) -> None:
    """A re-run must not leave a previous run's verified/unverified twin beside the new file."""
    for twin in (state.artifact_name(art.format, art.quantization, False),
                 state.artifact_name(art.format, art.quantization, True)):
        p = art.path.with_name(twin)
        if p != art.path and p.exists():
            remove_artifact(p)


def _build(state: ModelState, spec: ArtifactSpec) -> Artifact:
    fmt = get_format(spec.format)
    dest = state.work_dir / "build" / state.artifact_name(spec.format, spec.quantization)
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Artifact(path=dest, format=spec.format, quantization=spec.quantization, target=spec.target)
    try:
        fmt.build(state, work, dest)
    except MobilecError as exc:
        stop_if_interrupted(exc)  # the converter may wrap the signal's exception in its own
        work.status, work.error = "failed", exc.message
        return work
    except OSError as exc:  # disk full or `ulimit -f` in the temp dir: an environment problem
        work.status = "failed"
        work.error = f"cannot write {dest.name} in the temp dir {dest.parent.parent}: {os_error_reason(exc)}"
        return work
    except Exception as exc:  # noqa: BLE001 - a converter bug must not stop other formats
        stop_if_interrupted(exc)
        if state.options.get("verbose"):
            raise
        work.status, work.error = "failed", f"{type(exc).__name__}: {str(exc).strip()[:400]}"
        return work
    _verify(state, fmt, work)
    return work


def verification_inputs(state: ModelState) -> np.ndarray:
    if state.eval_x is not None:
        return state.eval_x[:VERIFY_SAMPLES]
    if state.data is not None and state.data.calibration is not None:
        return state.data.calibration.x[:VERIFY_SAMPLES]
    shape = [16] + [d or 1 for d in state.inputs[0].shape[1:]]
    return np.random.default_rng(0).standard_normal(shape).astype("float32")


def _verify(state: ModelState, fmt: Any, work: Artifact) -> None:
    """Compare the artifact with the model it was converted from, on the same inputs."""
    runner = fmt.runner(state, work)
    if runner is None:
        check = getattr(fmt, "structural_check", None)
        if check is not None:
            check(state, work)
        return
    x = verification_inputs(state)
    key = ("converter_input_outputs", state.model_version, len(x))
    if key not in state.memo:
        state.memo[key] = source_runner(state)(x)
    try:
        got = runner(x)
    except Exception as exc:  # noqa: BLE001 - a model that cannot run failed verification
        work.status = "failed-verification"
        work.error = f"artifact does not run on this host: {str(exc).strip()[:300]}"
        return
    fid = fidelity(state.memo[key], got)
    work.verification = {"against": "converter input", "samples": len(x), **fid}
    if work.quantization not in GATED_MODES:
        return
    ok, why = passes(fid, state.recipe.verify.min_top1_agreement, state.recipe.verify.min_snr_db)
    if not ok:
        work.status = "failed-verification"
        work.error = f"{work.format} {work.quantization} output differs from the source model: {why}"


def _distrust_broken_formats(state: ModelState) -> None:
    broken = {a.format for a in state.artifacts
              if a.quantization == "float32" and a.status == "failed-verification"}
    for a in state.artifacts:
        if a.format in broken and a.status == "ok":
            a.status = "failed-verification"
            a.error = (f"the float32 {a.format} conversion failed verification, so this "
                       "variant is not trusted")
            new = a.path.with_name(state.artifact_name(a.format, a.quantization, True))
            a.path.rename(new)
            a.path = new


def fail_if_all_failed(state: ModelState) -> None:
    produced = [a for a in state.artifacts if a.status != "skipped"]
    if produced and all(a.status == "failed" for a in produced):
        raise StageError("every conversion failed: " + "; ".join(
            f"{a.format} {a.quantization}: {a.error}" for a in produced[:4]))


def rel(state: ModelState, path: Path) -> str:
    try:
        return str(path.relative_to(state.out_dir))
    except ValueError:
        return str(path)
