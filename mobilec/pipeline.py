"""The one runner: plan the stages, run them over one ModelState, write the report.

Every command that touches a model (compress, diagnose, batch, explore) comes
through `run`, so every run gets the same guarantees: the plan check before
anything slow, the write check and the output-dir lock, a pid-tagged work dir
that the next run sweeps if this one is killed, interrupts honoured between
stages. Only `mobilec.api` imports this module.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mobilec.ci.lockfile import write_lock
from mobilec.delegates.manifest import markdown_sections
from mobilec.errors import (
    EXIT_STAGE,
    Interrupted,
    MobilecError,
    StageError,
    stop_if_interrupted,
)
from mobilec.policy.plancheck import check_plan, check_trust
from mobilec.recipe.schema import Recipe
from mobilec.report.build import build_report
from mobilec.report.write import write_reports
from mobilec.sources.detect import model_format
from mobilec.stages import get_stage
from mobilec.state import ModelState, StageResult
from mobilec.util.fs import (
    check_can_write,
    check_not_locked,
    clean_temp,
    output_lock,
    sweep_stale_work_dirs,
    work_dir_prefix,
)
from mobilec.util.nativeio import native_quiet
from mobilec.util.progress import Progress, active

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
        **options: Any) -> RunResult:
    """Run `plan` (from compress_plan / diagnose_plan) over the recipe's model.

    A stage failing with a user error (exit 2) raises; one failing otherwise ends the
    plan and, when `report` is set, the report says so (exit 3). Without a report, a
    failed stage raises StageError. `pin`: what produced the run (mobilec.ci.lockfile),
    written as mobilec.lock.json beside the report.
    """
    progress = progress or Progress(quiet=True)
    check_plan(recipe, model_format(recipe.model))
    check_trust(recipe, bool(options.get("trust_code")))
    out_dir = output_dir(recipe, out)
    check_can_write(out_dir)  # before a long load or fine-tune, not after
    check_not_locked(out_dir)  # another run is writing there: say so now, not after load
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
            clean_temp(out_dir)
            for name, config in plan[1:]:
                run_stage(state, name, config, progress)
                if state.stages[-1].status == "failed":
                    break
            if not report:
                failed = state.stages[-1]
                if failed.status == "failed":
                    raise StageError(f"{failed.name} failed: {failed.error}")
                return RunResult(out_dir, state, None)
            body = build_report(state)
            write_reports(body, out_dir, list(recipe.output.report), markdown_sections(state))
            if pin is not None:
                write_lock(out_dir, pin)
    return RunResult(out_dir, state, body)


def md_sections(state: ModelState) -> list[str]:
    return markdown_sections(state)


def run_stage(state: ModelState, name: str, config: Any, progress: Progress) -> None:
    result = StageResult(name=name)
    progress.stage_start(name)
    start = time.perf_counter()
    detail = ""
    try:
        with native_quiet(not state.options.get("verbose")), active(progress):
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
