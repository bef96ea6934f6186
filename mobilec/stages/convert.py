"""convert: build every planned artifact along its format's routes, verify each result
against the model it came from, and publish the verified files into the output dir.

Routes: a format may offer several ways to build the same artifact (TFLite from a
SavedModel's serving signature, from its concrete function, from the Keras model…).
They are tried in order; the first whose result verifies ships, the row names it
(`route`) and lists the ones that failed with their reason (`routes_failed`).
Only when every route fails is the row `failed-verification` (a file that runs but
differs ships under its `.unverified.` name) or `failed` (nothing was built).

Each artifact fails alone: one format's converter crashing, or writing a file its
runtime rejects, leaves the others built, verified and reported.

Nothing reaches the output dir before every artifact is built and verified: an
interrupted convert leaves the previous state, never an unverified file under a
normal name.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mobilec.delegates.manifest import prepare_for_placement, write_manifests
from mobilec.errors import MobilecError, first_line, stop_if_interrupted
from mobilec.formats import FORMATS, get_format
from mobilec.formats.intermediate import verification_inputs
from mobilec.policy.targets import ArtifactSpec, plan_artifacts
from mobilec.recipe.schema import ConvertConfig
from mobilec.stages.verify import verify
from mobilec.state import Artifact, ModelState
from mobilec.util import progress
from mobilec.util.fs import atomic_place, gzip_size, os_error_reason, size_of

# What a build fills on its work-dir artifact and each placed copy inherits.
COPIED_FIELDS = ("status", "error", "input_layout", "input_transpose", "io_quant", "precision",
                 "route", "routes_failed", "verification", "kept_float", "quantizer", "coreml",
                 "delegation", "not_run_reason", "built_from")


@dataclass
class Route:
    name: str
    build: Callable[[Artifact, Path], None]  # write the file at the path, fill the artifact


def run(state: ModelState, config: ConvertConfig | None) -> dict[str, Any]:
    cfg = config or ConvertConfig()
    has_calib = state.data is not None and state.data.calibration is not None
    plan_mode = state.plan.mode if state.plan else None
    specs = plan_artifacts(list(state.recipe.targets), plan_mode, cfg.formats, has_calib)
    for fmt_name in dict.fromkeys(s.format for s in specs if not s.skipped_reason):
        precheck = getattr(get_format(fmt_name), "precheck", None)
        if precheck is not None:
            precheck(state)  # a format this model cannot reach is a usage error (exit 2)
    built: dict[tuple[str, str, str | None], Artifact] = {}
    staged: list[tuple[Artifact, Path | None]] = []
    for spec in specs:
        stop_if_interrupted()  # a signal lost inside the converter stops here, not at the end
        staged.append(_stage(state, spec, built))
    _distrust_broken_formats([a for a, _ in staged], state)
    for art, work_path in staged:  # every file verified: publish
        if work_path is not None:
            _publish(state, art, work_path)
        state.artifacts.append(art)
    write_manifests(state)  # <artifact>.delegate.json, once names are final
    _size_ratios(state)
    failed = [a for a in state.artifacts if a.status not in ("ok", "unverified", "skipped")]
    return {"artifacts": len(state.artifacts), "failed": len(failed)}


def _stage(state: ModelState, spec: ArtifactSpec,
           built: dict[tuple[str, str, str | None], Artifact]) -> tuple[Artifact, Path | None]:
    """The artifact row, and the verified file in the work dir that will be published."""
    folder = spec.target or "baseline"
    art = Artifact(path=state.out_dir / folder / state.artifact_name(spec.format,
                                                                      spec.quantization),
                   format=spec.format, quantization=spec.quantization, target=spec.target,
                   role=spec.role, delegate=spec.delegate, fallback=spec.fallback)
    if spec.skipped_reason:
        art.status, art.error = "skipped", spec.skipped_reason
        return art, None
    # One build per format and mode, shared by every target — unless the file itself
    # depends on the delegate (an ExecuTorch program lowered for XNNPACK or Core ML).
    key = (spec.format, spec.quantization,
           spec.delegate if FORMATS[spec.format].per_delegate else None)
    if key not in built:
        built[key] = build_artifact(state, spec)
    work = built[key]
    for name in COPIED_FIELDS:
        setattr(art, name, getattr(work, name))
    art.notes.extend(work.notes)
    art.metrics.update(work.metrics)
    if work.status == "failed":
        return art, None
    if work.delegation is not None and not work.delegation.get("delegated"):
        _undelegated(art, work)
    if art.status == "failed-verification":
        art.path = art.path.with_name(state.artifact_name(spec.format, spec.quantization, True))
    return art, work.path


def _undelegated(art: Artifact, work: Artifact) -> None:
    """The route that shipped has no delegate: the row says `portable`, and for a target
    that promises a delegate (XNNPACK) the artifact is `degraded`, never plain ok."""
    promised = art.delegate
    art.delegate, art.fallback = "portable", None
    if promised in (None, "portable") or art.status != "ok":
        return
    d = work.delegation or {}
    total = d.get("delegated", 0) + d.get("non_delegated", 0)
    tried = "; ".join(f"{f['route']}: {f['reason']}" for f in art.routes_failed)
    art.status = "degraded"
    art.error = (f"no op is delegated to {promised}, which target {art.target} promises: "
                 f"{d.get('delegated', 0)} of {total} ops delegated "
                 f"({d.get('delegated_fraction', 0.0):.0%}); every op runs on ExecuTorch's "
                 "kernel libraries (" + ", ".join(d.get("kernels") or ["portable_ops_lib"])
                 + ")" + (f". The delegated routes failed: {tried}" if tried else ""))


def _publish(state: ModelState, art: Artifact, work_path: Path) -> None:
    # into the run's staging dir (state.out_dir): the pipeline swaps it in as one step,
    # retiring the previous run's files, stale twins included
    # op compatibility for this artifact's delegate; .tflite gets the hint in its metadata
    atomic_place(prepare_for_placement(state, art, work_path), art.path)
    art.metrics["size_bytes"] = size_of(art.path)
    art.metrics["gzip_bytes"] = gzip_size(art.path)


def routes(state: ModelState, fmt: Any, work: Artifact) -> list[Route]:
    """The format's routes for this artifact, or its one build as the route 'default'."""
    offered = getattr(fmt, "routes", None)
    if offered is not None:
        found = offered(state, work)
        if found:
            return [Route(name, build) for name, build in found]
    return [Route(getattr(fmt, "default_route", "default"),
                  lambda art, dest: fmt.build(state, art, dest))]


def build_artifact(state: ModelState, spec: ArtifactSpec) -> Artifact:
    """One artifact along the format's routes, in the work dir: the first route whose result
    verifies, else the best that runs (failed-verification), else `failed` with every reason."""
    fmt = get_format(spec.format)
    name = state.artifact_name(spec.format, spec.quantization)
    base = Artifact(path=state.work_dir / "build" / name, format=spec.format,
                    quantization=spec.quantization, target=spec.target, delegate=spec.delegate)
    candidates = routes(state, fmt, base)
    x = verification_inputs(state)
    failed: list[dict[str, Any]] = []
    fallback: Artifact | None = None  # built and runs, but did not verify
    for i, route in enumerate(candidates):
        dest = state.work_dir / "build" / f"{spec.delegate}-{i}-{route.name}" / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        work = Artifact(path=dest, format=spec.format, quantization=spec.quantization,
                        target=spec.target, delegate=spec.delegate)
        label = f"{spec.format} {spec.quantization} via {route.name}"
        progress.step(f"{label}: building")
        reason = _try_build(state, route, work, dest)
        if reason is None:
            ok, reason = _try_verify(state, fmt, work, x)
            progress.step(f"{label}: {_verdict(work, ok, reason)}")
            if ok:
                work.route = work.route or route.name
                work.routes_failed = failed + work.routes_failed
                return work
            entry = {"route": route.name, "reason": reason}
            if work.verification:
                entry["snr_db"] = work.verification.get("snr_db")
                entry["top1_agreement"] = work.verification.get("top1_agreement")
            # Only a file that ran (and was measured) can ship as unverified; one its runtime
            # rejects is no artifact at all.
            if work.verification is not None and (fallback is None or _better(work, fallback)):
                fallback = work
                fallback.route = route.name
        else:
            progress.step(f"{label}: build failed: {reason[:160]}")
            entry = {"route": route.name, "reason": reason}
        failed.append(entry)
        if fallback is not work:
            _remove(dest)
    summary = _summary(failed)
    if fallback is not None:
        fallback.routes_failed = [f for f in failed if f["route"] != fallback.route]
        if fallback.quantization in ("float32", "float16"):
            fallback.status = "failed-verification"
            fallback.error = (f"{spec.format} {spec.quantization} differs from the source "
                              f"model on every route: {summary}")
        # A quantized file that runs ships as built: the evaluate stage judges its quality.
        return fallback
    base.status, base.error, base.routes_failed = "failed", summary, failed
    return base


def _summary(failed: list[dict[str, Any]]) -> str:
    """Every route's reason; a hint they all share (a known failure: what to do) said once."""
    sep = " (hint: "
    hints = {f["reason"].partition(sep)[2] for f in failed}
    if len(failed) > 1 and len(hints) == 1 and "" not in hints:
        return "; ".join(f"{f['route']}: {f['reason'].partition(sep)[0]}" for f in failed) + \
            sep + hints.pop()
    return "; ".join(f"{f['route']}: {f['reason']}" for f in failed)


def _verdict(work: Artifact, ok: bool, reason: str) -> str:
    """A progress line's end: built size and what verification found."""
    size = size_of(work.path) if work.path.exists() else None
    snr = (work.verification or {}).get("snr_db")
    text = f"built {size / 1024:.1f} KB, " if size else "built, "
    text += "verified" if ok else f"not verified ({reason[:160]})"
    return text + (f" ({snr:.1f} dB)" if isinstance(snr, (int, float)) else "")


def _try_build(state: ModelState, route: Route, work: Artifact, dest: Path) -> str | None:
    """None when the route built a file, else why not (never raises for a model's fault)."""
    try:
        route.build(work, dest)
    except MobilecError as exc:
        stop_if_interrupted(exc)  # the converter may wrap the signal's exception in its own
        return exc.one_line()
    except OSError as exc:  # disk full or `ulimit -f` in the temp dir: an environment problem
        return f"cannot write {dest.name} in the temp dir: {os_error_reason(exc)}"
    except Exception as exc:  # noqa: BLE001 - a converter's bug must not stop other formats
        stop_if_interrupted(exc)
        if state.options.get("verbose"):
            raise
        first = first_line(exc)
        return f"{type(exc).__name__}: {first[:400]}"
    return None


def _try_verify(state: ModelState, fmt: Any, work: Artifact, x: Any) -> tuple[bool, str]:
    try:
        return verify(state, fmt, work, x)
    except MobilecError as exc:
        stop_if_interrupted(exc)
        return False, exc.one_line()
    except Exception as exc:  # noqa: BLE001 - e.g. a runtime that rejects the file's graph
        stop_if_interrupted(exc)
        if state.options.get("verbose"):
            raise
        first = first_line(exc)
        return False, f"the runtime rejects the file ({type(exc).__name__}: {first[:300]})"


def _better(a: Artifact, b: Artifact) -> bool:
    def snr(x: Artifact) -> float:
        v = (x.verification or {}).get("snr_db")
        return float("-inf") if v is None else float(v)

    return snr(a) > snr(b)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _distrust_broken_formats(arts: list[Artifact], state: ModelState) -> None:
    """A format whose float32 conversion does not match the source: none of its quantized
    variants is trusted either."""
    broken = {a.format for a in arts
              if a.quantization == "float32" and a.status == "failed-verification"}
    for a in arts:
        if a.format in broken and a.status in ("ok", "unverified"):
            a.status = "failed-verification"
            a.error = (f"the float32 {a.format} conversion failed verification, so this "
                       "variant is not trusted")
            a.path = a.path.with_name(state.artifact_name(a.format, a.quantization, True))


def _size_ratios(state: ModelState) -> None:
    """How many times smaller than the float32 file of the same format (every file counted)."""
    base = {a.format: a.metrics.get("size_bytes") for a in state.artifacts
            if a.quantization == "float32" and a.metrics.get("size_bytes")}
    for a in state.artifacts:
        size = a.metrics.get("size_bytes")
        if size and base.get(a.format):
            a.metrics["size_ratio"] = round(base[a.format] / size, 3)
