"""The commands: parse, call `mobilec.api`, print. No logic a Python user could not reach."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from mobilec.cli.app import (
    Ctx,
    common_flags,
    force_option,
    handle_errors,
    main,
    set_option,
    trust_option,
    unsafe_option,
)
from mobilec.cli.ci_commands import ci_outputs, junit_for_error
from mobilec.errors import MobilecError
from mobilec.util.nativeio import native_quiet, stdout_to_stderr


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@set_option
@click.option("--out", type=click.Path(file_okay=False), help="Output directory.")
@click.option("--no-eval", is_flag=True, help="Convert only: sizes, no accuracy or latency.")
@click.option("--wide", is_flag=True, help="Every column of the artifact table, at any width.")
@unsafe_option
@trust_option
@click.option("--diagnose", "run_diagnose", is_flag=True,
              help="Also rank int8 error per layer: diagnose.json and a report.html section.")
@click.option("--junit", type=click.Path(dir_okay=False),
              help="Write JUnit XML: one case per artifact and per budget rule.")
@click.option("--locked", type=click.Path(dir_okay=False, exists=True),
              help="Refuse (exit 2) unless tools and inputs match this mobilec.lock.json.")
@force_option
@click.option("--strict", is_flag=True,
              help="Exit 3 when an artifact is `unverified` (no runtime here ran the file, "
                   "e.g. Core ML off macOS); without it such a run exits 0.")
@common_flags
@click.pass_obj
@handle_errors
def compress(obj: Ctx, recipe: str, overrides: tuple[str, ...], out: str | None, no_eval: bool,
             wide: bool, unsafe_deserialization: bool, trust_code: bool,
             run_diagnose: bool = False, junit: str | None = None,
             locked: str | None = None, force: bool = False,
             strict: bool = False) -> None:
    """Run RECIPE: load, prune, quantize, convert, evaluate, report."""
    from mobilec import api
    from mobilec.ci.junit import check_junit_target
    from mobilec.report.console import print_report, verdict
    from mobilec.util.progress import Progress

    if junit:
        check_junit_target(junit, force)  # before the run, not after it
    progress = Progress(quiet=obj.quiet or obj.json)
    try:
        # Converters' C++ code prints to fd 1; with --json, stdout must hold only JSON.
        with stdout_to_stderr(obj.json):
            report = api.compress(recipe, overrides=list(overrides), out=out,
                                  evaluate=not no_eval, progress=progress,
                                  diagnose=run_diagnose, locked=locked, force=force,
                                  unsafe_deserialization=unsafe_deserialization,
                                  trust_code=trust_code, verbose=obj.verbose, strict=strict)
    except MobilecError as exc:
        junit_for_error(recipe, junit, exc, force)
        raise
    finally:
        progress.close()
    ci_outputs(report, recipe, junit, quiet=obj.quiet, to_stderr=obj.json, force=force,
               strict=strict)
    if obj.json:
        _echo_json(report)
    elif not obj.quiet:
        print_report(report, wide=wide)
    else:
        click.echo(verdict(report))  # -q drops the table and progress, never the outcome
    sys.exit(report["exit_code"])


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@set_option
@click.option("--out", type=click.Path(file_okay=False), help="Output directory.")
@click.option("--format", "backend", type=click.Choice(["tflite", "onnx"]), default=None,
              help="Which int8 conversion to diagnose (default: tflite when the model has a "
                   "TensorFlow form, else onnx).")
@click.option("--top", type=int, default=20, show_default=True, help="Rows in the table.")
@unsafe_option
@trust_option
@force_option
@common_flags
@click.pass_obj
@handle_errors
def diagnose(obj: Ctx, recipe: str, overrides: tuple[str, ...], out: str | None,
             backend: str | None, top: int, unsafe_deserialization: bool,
             trust_code: bool, force: bool = False) -> None:
    """Rank RECIPE's layers by int8 quantization error, worst first.

    Runs the recipe's stages before quantize, quantizes to int8 with the
    calibration data and compares every op with its float twin: RMSE/scale,
    max abs error, SNR. Writes diagnose.json and diagnose.html to the output dir.
    """
    from mobilec import api
    from mobilec.diagnose.view import print_table
    from mobilec.util.progress import Progress

    progress = Progress(quiet=obj.quiet or obj.json)
    try:
        with stdout_to_stderr(obj.json):
            data = api.diagnose(recipe, overrides=list(overrides), out=out, backend=backend,
                                progress=progress, unsafe_deserialization=unsafe_deserialization,
                                trust_code=trust_code, verbose=obj.verbose, force=force)
    finally:
        progress.close()
    if obj.json:
        _echo_json(data)
    elif not obj.quiet:
        path = Path(data["path"])
        print_table(data, limit=top)
        click.echo(f"wrote {path} and {path.with_name('diagnose.html')}")


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@set_option
@common_flags
@click.pass_obj
@handle_errors
def validate(obj: Ctx, recipe: str, overrides: tuple[str, ...]) -> None:
    """Check RECIPE (schema, paths, plan) without loading TensorFlow."""
    from mobilec import api

    result = api.validate(recipe, overrides=list(overrides))
    if obj.json:
        _echo_json(result)
    else:
        click.echo(f"{recipe}: valid ({result['model_format']} model; "
                   f"{' -> '.join(result['stages'])}; targets {', '.join(result['targets'])})")
        if obj.quiet:
            return
        for role, split in result["data"]["splits"].items():
            arrays = ", ".join(f"{n} {tuple(shape)}" for n, shape in split["arrays"].items())
            click.echo(f"  data.{role}: {split['samples']} samples ({arrays})")
        for line in result["data"]["checked"]:
            click.echo(f"  checked: {line}")
        for line in result["data"]["not_checked"]:
            click.echo(f"  not checked: {line}")
        if result["needs_trust_code"]:
            click.echo(f"  needs --trust-code: {', '.join(result['needs_trust_code'])} "
                       "run(s) Python code")


@main.command()
@click.option("--report", "kind", flag_value="report", help="report.json's schema.")
@click.option("--explore", "kind", flag_value="explore", help="explore.json's schema.")
@handle_errors
def schema(kind: str | None) -> None:
    """Print the recipe's JSON Schema (for editors), or the report's / explore's."""
    from mobilec import api

    _echo_json(api.schema(kind or "recipe"))


@main.command()
@click.option("--wide", is_flag=True, help="Every column, at any width.")
@common_flags
@click.pass_obj
def targets(obj: Ctx, wide: bool) -> None:
    """List target devices with their artifact, quantization and delegate."""
    from mobilec import api
    from mobilec.report.console import print_targets

    rows = api.targets()
    if obj.json:
        _echo_json(rows)
        return

    print_targets(rows, wide=wide)


@main.group()
def recipes() -> None:
    """Ready recipes to copy."""


@recipes.command("list")
def recipes_list() -> None:
    """List bundled recipes."""
    from mobilec import api

    for name, path in api.bundled_recipes().items():
        first = next((ln[1:].strip() for ln in path.read_text().splitlines()
                      if ln.startswith("#")), "")
        click.echo(f"{name:<16} {first}")


@recipes.command("show")
@click.argument("name")
@handle_errors
def recipes_show(name: str) -> None:
    """Print a bundled recipe."""
    from mobilec import api

    click.echo(api.bundled_recipe(name), nl=False)


@main.command()
@click.argument("path", default="mobilec.yaml", type=click.Path(dir_okay=False))
@handle_errors
def init(path: str) -> None:
    """Write a commented starter recipe (never overwrites)."""
    from mobilec.recipe.starter import write_starter

    click.echo(f"wrote {write_starter(Path(path))}")


@main.command()
@click.argument("model", type=click.Path())
@click.option("--runs", default=100, show_default=True, type=click.IntRange(min=1),
              help="Timed runs after warm-up.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1),
              help="CPU threads for the runtime.")
@common_flags
@click.pass_obj
@handle_errors
def bench(obj: Ctx, model: str, runs: int, threads: int) -> None:
    """Measure host latency (median, p90) of a .tflite, .onnx or Keras model."""
    from mobilec import api

    with native_quiet(not obj.verbose):  # LiteRT announces its delegate on fd 1
        result = api.bench(model, runs=runs, threads=threads)
    if obj.json:
        _echo_json(result)
        return
    lat = result["latency_ms"]
    click.echo(f"{model}: {result['format']}, {result['size_bytes']} bytes, input "
               f"{result['input']['shape']} {result['input']['dtype']}: median "
               f"{lat['median']:.4f} ms, p90 {lat['p90']:.4f} ms over {lat['runs']} runs "
               f"({threads} thread(s))")


@main.command()
@click.argument("model", type=click.Path())
@unsafe_option
@common_flags
@click.pass_obj
@handle_errors
def inspect(obj: Ctx, model: str, unsafe_deserialization: bool) -> None:
    """Show a model's format, inputs, outputs, parameters and ops."""
    from mobilec import api

    with native_quiet(not obj.verbose):
        info = api.inspect(model, unsafe_deserialization=unsafe_deserialization)
    if obj.json:
        _echo_json(info)
        return
    for key, value in info.items():
        if isinstance(value, dict):
            click.echo(f"{key}:")
            for k, v in value.items():
                click.echo(f"  {k}: {v}")
        elif isinstance(value, list):
            click.echo(f"{key}:")
            for v in value:
                if isinstance(v, dict) and {"name", "shape", "dtype"} <= set(v):
                    shape = "[" + ", ".join("?" if d is None else str(d) for d in v["shape"]) + "]"
                    v = f"{v['name']} {shape} {v['dtype']}"
                click.echo(f"  - {v}")
        else:
            click.echo(f"{key}: {value}")


@main.command()
@click.argument("inputs", nargs=-1, required=True, metavar="ZOO.yaml | MODEL_OR_FOLDER…")
@click.option("--recipe", "base_recipe", type=click.Path(dir_okay=False),
              help="Base recipe when the arguments are models or folders of models.")
@set_option
@click.option("--out", type=click.Path(file_okay=False),
              help="Output folder (one sub-folder per model).")
@click.option("--executor", type=click.Choice(["local", "ray"]),
              help="Default: the zoo's, else local.")
@click.option("--workers", type=click.IntRange(min=1), help="Parallel models (default: CPU cores).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), help="Seconds per model.")
@click.option("--address", help="Ray cluster address (with --executor ray).")
@click.option("--force", is_flag=True, help="Convert again even when cached.")
@click.option("--no-eval", is_flag=True, help="Convert only: sizes, no accuracy or latency.")
@unsafe_option
@trust_option
@common_flags
@click.pass_obj
@handle_errors
def batch(obj: Ctx, inputs: tuple[str, ...], base_recipe: str | None, overrides: tuple[str, ...],
          out: str | None, executor: str | None, workers: int | None, timeout: float | None,
          address: str | None, force: bool, no_eval: bool, unsafe_deserialization: bool,
          trust_code: bool) -> None:
    """Convert a zoo of models: ZOO.yaml, or --recipe BASE.yaml with models/folders.

    Parallel, cached by content (a re-run skips what is done), one model's failure never
    stops the others; writes zoo-report.{json,md,html}. Exit 3 if any model failed,
    1 if any broke its budget.
    """
    from mobilec.batch.progress import print_summary, totals_line
    from mobilec.batch.run import run_batch

    if base_recipe is None and len(inputs) != 1:
        raise MobilecError("give one zoo file, or --recipe BASE.yaml followed by models",
                           hint="mobilec batch zoo.yaml | mobilec batch --recipe r.yaml a.onnx")

    with stdout_to_stderr(obj.json):
        zoo = run_batch(None if base_recipe else inputs[0], recipe=base_recipe,
                        models=list(inputs) if base_recipe else [], overrides=list(overrides),
                        out=out, executor=executor, workers=workers, timeout=timeout,
                        address=address, force=force, evaluate=not no_eval,
                        unsafe_deserialization=unsafe_deserialization, trust_code=trust_code,
                        verbose=obj.verbose, quiet=obj.quiet)
    if obj.json:
        _echo_json(zoo)
    elif not obj.quiet:
        print_summary(zoo)
    else:
        click.echo(totals_line(zoo))  # -q: the outcome in one line
    sys.exit(zoo["totals"]["exit_code"])
