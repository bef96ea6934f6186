"""The one runner: plan the stages, run them over one ModelState, write the report.

Every command that touches a model (compress, diagnose, batch, explore) comes
through `run`, so every run gets the same guarantees: the plan check before
anything slow, the write check and the output-dir lock, a pid-tagged work dir
that the next run sweeps if this one is killed, interrupts honoured between
stages. Only `mobilec.api` imports this module.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mobilec.ci.lockfile import LOCK_NAME, run_inputs, write_lock
from mobilec.delegates.manifest import manifest_path, markdown_sections
from mobilec.errors import (
    EXIT_STAGE,
    Interrupted,
    MobilecError,
    StageError,
    stop_if_interrupted,
)
from mobilec.policy.plancheck import check_plan, check_trust
from mobilec.policy.targets import plan_artifacts
from mobilec.recipe.schema import Recipe
from mobilec.report.build import build_report
from mobilec.report.write import write_reports
from mobilec.sources.detect import model_format
from mobilec.stages import get_stage
from mobilec.state import ModelState, StageResult
from mobilec.util.fs import (
    TMP_PREFIX,
    check_can_write,
    check_not_locked,
    check_regular,
    clean_temp,
    output_lock,
    sweep_stale_work_dirs,
    work_dir_prefix,
)
from mobilec.util.nativeio import native_quiet
from mobilec.util.outguard import check_no_overlap, check_out_dir
from mobilec.util.progress import Progress, active
from mobilec.util.publish import (
    DIAGNOSE_FILES,
    foreign,
    owned_files,
    pending,
    publish,
    recover,
    refuse_foreign,
    units,
)
from mobilec.util.scratch import scratch_cwd

Plan = list[tuple[str, Any]]


@dataclass
class RunResult:
    out_dir: Path
    state: ModelState
    report: dict[str, Any] | None  # exactly report.json; None when the plan writes no report


def compress_plan(recipe: Recipe, evaluate: bool = True, diagnose: bool = False) -> Plan:
    """load, the recipe's stages in order, convert (always), evaluate (unless --no-eval)."""
    plan: Plan = [("load", None)]
    plan += [(e.name, e.config) for e in recipe.stages if e.name != "convert"]
    plan.append(("convert", recipe.stage("convert")))
    if evaluate:
        plan.append(("evaluate", None))
    if diagnose:
        plan.append(("diagnose", {}))  # compress --diagnose: per-op int8 error, last
    return plan


def diagnose_plan(recipe: Recipe, backend: str | None = None) -> Plan:
    """load, the stages that change the model before quantize (int8 must see the model it
    will quantize), then the diagnose stage."""
    plan: Plan = [("load", None)]
    plan += [(e.name, e.config) for e in recipe.stages if e.name not in ("quantize", "convert")]
    plan.append(("diagnose", {"backend": backend, "html": True}))
    return plan


TRANSFORM_STAGES = ("distill", "factorize", "prune")


def transform_plan(recipe: Recipe, dest: str | Path) -> Plan:
    """load, the recipe's stages that change the model (distill, factorize, prune), then save
    the result to `dest` (explore builds each transformed model once, from its cache)."""
    plan: Plan = [("load", None)]
    plan += [(e.name, e.config) for e in recipe.stages if e.name in TRANSFORM_STAGES]
    plan.append(("save", {"path": str(dest)}))
    return plan


def output_dir(recipe: Recipe, out: str | Path | None) -> Path:
    if out is not None:
        return Path(out).resolve()
    if recipe.output.dir is not None:
        return Path(recipe.output.dir)
    return (Path.cwd() / "mobilec-out" / str(recipe.name)).resolve()


def run(recipe: Recipe, plan: Plan, *, out: str | Path | None = None,
        progress: Progress | None = None, report: bool = True, pin: dict[str, Any] | None = None,
        force: bool = False, **options: Any) -> RunResult:
    """Run `plan` (from compress_plan / diagnose_plan) over the recipe's model.

    A stage failing with a user error (exit 2) raises; one failing otherwise ends the
    plan and, when `report` is set, the report says so (exit 3). Without a report, a
    failed stage raises StageError. `pin`: what produced the run (mobilec.ci.lockfile),
    written as mobilec.lock.json beside the report, with the list of files the run wrote.

    Everything is built in a staging dir inside the output dir and published in one
    journaled swap (mobilec.util.publish): the dir then holds exactly this run's files
    (a run with a report retires every file of the previous run) or, if the run stops
    first, exactly the previous run's. `force`: overwrite files mobilec did not write.
    """
    progress = progress or Progress(quiet=True)
    inputs = run_inputs(recipe)
    for role, path in inputs.items():  # a FIFO would block the first read forever
        check_regular(path, role)
    check_plan(recipe, model_format(recipe.model))
    check_trust(recipe, bool(options.get("trust_code")))
    out_dir = output_dir(recipe, out)
    check_out_dir(out_dir)
    check_can_write(out_dir)  # before a long load or fine-tune, not after
    check_not_locked(out_dir)  # another run is writing there: say so now, not after load
    if pending(out_dir):  # a killed run's half swap: settle it before judging what is ours
        with output_lock(out_dir):
            recover(out_dir)
    check_outputs(recipe, plan, out_dir, inputs, report=report, pin=pin, force=force)
    # The work dir is outside the output dir until load has succeeded, so a bad
    # model or recipe leaves nothing behind.
    sweep_stale_work_dirs()  # what SIGKILLed runs left in the system temp dir
    with tempfile.TemporaryDirectory(prefix=work_dir_prefix()) as work:
        state = ModelState(recipe=recipe, out_dir=out_dir, work_dir=Path(work), options=options)
        run_stage(state, *plan[0], progress)
        if state.stages[-1].status == "failed":
            # Nothing was loaded, so nothing can follow; the output dir stays untouched.
            raise StageError(f"load failed: {state.stages[-1].error}")
        with output_lock(out_dir):
            recover(out_dir)  # a publish a killed run left half done: finish or undo it
            clean_temp(out_dir)
            stage = out_dir / f"{TMP_PREFIX}stage-{os.getpid()}"
            stage.mkdir()
            state.out_dir = stage  # every stage writes here; the swap publishes it
            try:
                body = _run_stages(state, out_dir, plan, progress, report, pin)
                # A report-less run (diagnose) replaces only its own files of an earlier run.
                if units(stage):  # transform saves its model elsewhere: nothing to swap
                    owned = owned_files(out_dir)
                    publish(out_dir, stage, force=force,
                            retire=owned if report else owned & set(units(stage)))
                for art in state.artifacts:
                    art.path = _moved(art.path, stage, out_dir)
            finally:
                state.out_dir = out_dir
                shutil.rmtree(stage, ignore_errors=True)
    return RunResult(out_dir, state, body)


def _run_stages(state: ModelState, out_dir: Path, plan: Plan, progress: Progress, report: bool,
                pin: dict[str, Any] | None) -> dict[str, Any] | None:
    """The stages after load, then the report and the lock, all into state.out_dir."""
    for name, config in plan[1:]:
        run_stage(state, name, config, progress)
        if state.stages[-1].status == "failed":
            break
    if not report:
        failed = state.stages[-1]
        if failed.status == "failed":
            raise StageError(f"{failed.name} failed: {failed.error}")
        return None
    stage = state.out_dir
    body = build_report(state)
    body["output_dir"] = str(out_dir)  # where the files will be, not the staging dir
    write_reports(body, stage, list(state.recipe.output.report), markdown_sections(state))
    if pin is not None:
        # The list of what this run wrote: the next run retires exactly these.
        write_lock(stage, {**pin, "outputs": sorted({*units(stage), LOCK_NAME})})
    return body


def _moved(path: Path, stage: Path, out_dir: Path) -> Path:
    try:
        return out_dir / path.relative_to(stage)
    except ValueError:
        return path


def planned_outputs(recipe: Recipe, plan: Plan, *, report: bool, pin: bool) -> list[str]:
    """The paths (relative to the output dir) the plan will write, as far as they are known
    before the model is loaded (an `auto` mode picks its artifacts' names later; the
    publish checks those)."""
    names: list[str] = []
    if report:
        names += [f"report.{kind}" for kind in recipe.output.report]
        names += [LOCK_NAME] if pin else []
    stages = dict(plan)
    if "diagnose" in stages:
        names += list(DIAGNOSE_FILES if (stages["diagnose"] or {}).get("html")
                      else DIAGNOSE_FILES[:1])
    if "convert" in stages:
        namer = ModelState(recipe=recipe, out_dir=Path("."), work_dir=Path("."))
        quantize = recipe.stage("quantize")
        mode = getattr(quantize, "mode", None)
        cfg = recipe.stage("convert")
        for spec in plan_artifacts(list(recipe.targets), mode, cfg.formats if cfg else None,
                                   recipe.data is not None):
            if spec.skipped_reason:
                continue
            for unverified in (False, True):
                name = f"{spec.target or 'baseline'}/" \
                       f"{namer.artifact_name(spec.format, spec.quantization, unverified)}"
                names += [name, str(manifest_path(Path(name)))]
    return names


def check_outputs(recipe: Recipe, plan: Plan, out_dir: Path, inputs: dict[str, Path], *,
                  report: bool, pin: dict[str, Any] | None, force: bool) -> None:
    """Before anything runs: no output is an input (or inside an input folder), and no file
    the run would replace is one mobilec did not write (unless `force`)."""
    planned = planned_outputs(recipe, plan, report=report, pin=pin is not None)
    owned = owned_files(out_dir)
    written = [out_dir / n for n in planned]
    if report:  # a run with a report retires the previous run's files
        written += [out_dir / n for n in owned]
    check_no_overlap({"output": written}, inputs, where=recipe.source,
                     write_into={"output dir": out_dir} if planned else None)
    if not force:
        refuse_foreign(out_dir, foreign(out_dir, planned, owned))


def md_sections(state: ModelState) -> list[str]:
    return markdown_sections(state)


def run_stage(state: ModelState, name: str, config: Any, progress: Progress) -> None:
    result = StageResult(name=name)
    progress.stage_start(name)
    start = time.perf_counter()
    detail = ""
    try:
        # Libraries' scratch files (onnxruntime's shape inference writes into the cwd) land
        # in the work dir. load keeps the cwd: it may run the user's code (model.module,
        # data.python), which may read paths relative to where the user started.
        with native_quiet(not state.options.get("verbose")), active(progress), \
                scratch_cwd(state.work_dir, chdir=name != "load"):
            result.metrics = get_stage(name)(state, config) or {}
        _stop_if_interrupted(result)  # the stage (or a library) swallowed the signal's exception
    except MobilecError as exc:
        _stop_if_interrupted(result, exc)
        result.status, result.error = "failed", exc.message
        if exc.exit_code != EXIT_STAGE:
            raise  # a usage problem (exit 2): the CLI prints it; no report is written
        detail = exc.message
    except Exception as exc:
        _stop_if_interrupted(result, exc)
        if state.options.get("verbose"):
            raise
        result.status = "failed"
        result.error = detail = (f"internal error in {name} ({type(exc).__name__}: "
                                 f"{str(exc).strip()[:300]}); a mobilec bug: rerun with -v")
    except BaseException:  # Ctrl-C / SIGTERM: say so instead of "ok", and keep unwinding
        result.status = "interrupted"
        raise
    finally:
        result.seconds = time.perf_counter() - start
        state.stages.append(result)
        progress.stage_end(name, result.seconds, result.status, detail)


def _stop_if_interrupted(result: StageResult, cause: BaseException | None = None) -> None:
    """SIGINT/SIGTERM arrived (see Interrupted.received): whatever the stage made of it, stop."""
    if Interrupted.received is not None:
        result.status = "interrupted"
        stop_if_interrupted(cause)
