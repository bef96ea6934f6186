"""The library: every command of the CLI is one call here that a Python user can make too.

    import mobilec.api as mc
    report = mc.compress("recipe.yaml")          # == report.json
    mc.validate("recipe.yaml")                   # no TensorFlow import
    diag = mc.diagnose("recipe.yaml")            # == diagnose.json

Batch (mobilec.batch.run.run_batch) and explore (mobilec.explore.explore) are clients of
this module, like the CLI; `transform` is the call explore builds its shared models with.

Heavy libraries load inside the calls that need them; importing this module is cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mobilec.ci.lockfile import build_lock, check_locked, recipe_inputs
from mobilec.errors import MobilecError, RecipeError
from mobilec.policy.plancheck import check_diagnose, check_plan, code_keys
from mobilec.policy.targets import describe
from mobilec.recipe.loader import json_schema, load_recipe
from mobilec.recipe.schema import Recipe
from mobilec.report.explore_schema import ExploreReport
from mobilec.report.schema import Report
from mobilec.sources.data_validate import check_data  # numpy, no TensorFlow
from mobilec.sources.detect import model_format
from mobilec.util.fs import check_regular
from mobilec.util.progress import Progress
from mobilec.util.tfenv import SEEDS

BUNDLED_RECIPES = Path(__file__).resolve().parent / "recipes"


def _recipe(recipe: str | Path | Recipe, overrides: list[str] | None) -> Recipe:
    return recipe if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)


def _run(recipe: Recipe, plan: Any, progress: Progress | None, quiet: bool,
         **kwargs: Any) -> Any:
    """pipeline.run with a progress display: the caller's, or one of ours, closed after."""
    from mobilec import pipeline  # the runner: only the commands that run one

    own = progress is None
    prog = Progress(quiet=quiet) if own else progress
    try:
        return pipeline.run(recipe, plan, progress=prog, **kwargs)
    finally:
        if own:
            prog.close()


def compress(recipe: str | Path | Recipe, *, overrides: list[str] | None = None,
             out: str | Path | None = None, evaluate: bool = True, quiet: bool = True,
             progress: Progress | None = None, diagnose: bool = False,
             locked: str | Path | None = None, unsafe_deserialization: bool = False,
             trust_code: bool = False, verbose: bool = False, force: bool = False,
             strict: bool = False) -> dict[str, Any]:
    """Run a recipe end to end; returns exactly what report.json holds.

    Writes mobilec.lock.json beside report.json (tool versions, input hashes, seeds, the
    files the run wrote); `locked`: a lockfile this run must match, else it refuses before
    loading (exit 2). `force`: overwrite files in the output dir mobilec did not write.
    `strict`: an `unverified` artifact (not run on this host) makes the exit code 3.
    """
    from mobilec import pipeline  # the runner: only the commands that run one

    r = _recipe(recipe, overrides)
    if diagnose:
        check_diagnose(r)
    # A missing input is the load stage's to report, with its own hint.
    inputs = {k: v for k, v in recipe_inputs(r).items() if Path(v).exists()}
    pin = build_lock(r.source, r.sha256, inputs, seeds=SEEDS, overrides=list(overrides or []))
    if locked is not None:
        check_locked(locked, pin)
    result = _run(r, pipeline.compress_plan(r, evaluate, diagnose), progress, quiet, out=out,
                  pin=pin, force=force, unsafe_deserialization=unsafe_deserialization,
                  trust_code=trust_code, verbose=verbose, strict=strict)
    assert result.report is not None
    return result.report


def diagnose(recipe: str | Path | Recipe, *, overrides: list[str] | None = None,
             out: str | Path | None = None, backend: str | None = None, quiet: bool = True,
             progress: Progress | None = None, unsafe_deserialization: bool = False,
             trust_code: bool = False, verbose: bool = False, force: bool = False
             ) -> dict[str, Any]:
    """Per-op int8 error, worst first; returns diagnose.json's content plus its `path`.

    Runs the same pipeline as compress (lock, work dir, sweep), planned up to quantize.
    """
    import json

    from mobilec import pipeline  # the runner: only the commands that run one

    r = _recipe(recipe, overrides)
    check_diagnose(r)
    result = _run(r, pipeline.diagnose_plan(r, backend), progress, quiet, out=out,
                  report=False, force=force, unsafe_deserialization=unsafe_deserialization,
                  trust_code=trust_code, verbose=verbose)
    path = result.out_dir / result.state.stages[-1].metrics["json"]
    return {**json.loads(path.read_text()), "path": str(path)}


def transform(recipe: str | Path | Recipe, dest: str | Path, *,
              overrides: list[str] | dict[str, Any] | None = None, quiet: bool = True,
              progress: Progress | None = None, unsafe_deserialization: bool = False,
              trust_code: bool = False, verbose: bool = False) -> dict[str, Any]:
    """Run the recipe's model-changing stages (distill, factorize, prune) and save the model
    to `dest` (.h5 for Keras, .onnx for ONNX); quantize and convert are not run.

    Returns {"path", "stages": [{name, status, seconds, metrics}], "save": the saved model's
    format, sha256, size, accuracy and the source's reference_accuracy}. `mobilec explore`
    builds each transformed model once this way and runs its candidates from the file.
    """
    from mobilec import pipeline  # the runner: only the commands that run one

    r = recipe if isinstance(recipe, Recipe) else load_recipe(recipe, overrides)
    dest = Path(dest).resolve()
    result = _run(r, pipeline.transform_plan(r, dest), progress, quiet, out=dest.parent,
                  report=False, unsafe_deserialization=unsafe_deserialization,
                  trust_code=trust_code, verbose=verbose)
    stages = [{"name": s.name, "status": s.status, "seconds": round(s.seconds, 3),
               "metrics": s.metrics} for s in result.state.stages]
    return {"path": str(dest), "stages": stages, "save": result.state.stages[-1].metrics}


def validate(recipe: str | Path | Recipe, *, overrides: list[str] | None = None) -> dict[str, Any]:
    """Schema, paths, the plan check and the data's contents, without importing TensorFlow.

    `data`: what was checked in the data files and what could not be without TensorFlow;
    `needs_trust_code`: the recipe keys that run code (compress needs --trust-code)."""
    import json

    r = _recipe(recipe, overrides)
    fmt = model_format(r.model)
    student = getattr(r.stage("distill"), "student", None)
    needed = {"data.train": r.data and r.data.train, "data.eval": r.data and r.data.eval,
              "distill.student": student if isinstance(student, Path) else None}
    for key, p in needed.items():
        if p is not None and not Path(p).exists():
            raise RecipeError(f"{key}: file not found", where=str(p),
                              hint="relative paths resolve against the recipe file's folder")
        if p is not None:
            check_regular(Path(p), key, RecipeError)
    check_plan(r, fmt)
    data = check_data(r, fmt)
    return {"valid": True, "name": r.name, "model_format": fmt,
            "stages": ["load", *[e.name for e in r.stages if e.name != "convert"], "convert",
                       "evaluate"],
            "targets": list(r.targets), "needs_trust_code": code_keys(r), "data": data,
            "recipe": json.loads(r.effective_json())}


def inspect(model: str | Path, *, unsafe_deserialization: bool = False) -> dict[str, Any]:
    """A model's format, inputs, outputs, parameters and ops."""
    from mobilec.tools.inspect import inspect_model  # loads models: not for validate & co.

    return inspect_model(Path(model), unsafe_deserialization=unsafe_deserialization)


def bench(model: str | Path, *, runs: int = 100, threads: int = 1) -> dict[str, Any]:
    """Host latency (median, p90) of a .tflite, .onnx or Keras model."""
    from mobilec.tools.bench import bench_model  # loads models: not for validate & co.

    return bench_model(Path(model), runs=runs, threads=threads)


def targets() -> list[dict[str, Any]]:
    return describe()


def schema(kind: str = "recipe") -> dict[str, Any]:
    """JSON Schema of the recipe, the report (report.json) or explore.json."""
    if kind == "recipe":
        return json_schema()
    if kind == "report":
        return Report.model_json_schema()
    if kind == "explore":
        return ExploreReport.model_json_schema()
    raise MobilecError(f"no schema named '{kind}'", hint="recipe | report | explore")


def bundled_recipes() -> dict[str, Path]:
    return {p.stem: p for p in sorted(BUNDLED_RECIPES.glob("*.yaml"))}


def bundled_recipe(name: str) -> str:
    files = bundled_recipes()
    if name not in files:
        import difflib

        close = difflib.get_close_matches(name, list(files), n=1)
        raise MobilecError(f"no recipe named '{name}'" + (f"; did you mean '{close[0]}'?"
                                                          if close else ""),
                           hint=f"recipes: {', '.join(files)}")
    return files[name].read_text()
