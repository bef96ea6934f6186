"""The command line. Thin: every command calls a library function.

Nothing here imports TensorFlow at module level: `mobilec --help`, `validate`,
`schema` and `targets` must stay fast.
"""

from __future__ import annotations

import functools
import json
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from mobilec._version import __version__
from mobilec.errors import EXIT_SIGINT, EXIT_SIGTERM, EXIT_STAGE, Interrupted, MobilecError
from mobilec.util.nativeio import stdout_to_stderr

BUNDLED_RECIPES = Path(__file__).resolve().parent / "recipes"


class Ctx:
    verbose: bool = False
    quiet: bool = False


def _err(text: str) -> None:
    click.echo(text, err=True)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """User mistakes print one paragraph and exit 2/3; bugs say so, -v shows the traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context().find_object(Ctx) or Ctx()
        previous = _install_signal_handlers()
        try:
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                # A library turned the signal's exception into its own error: still an
                # interruption (unless the error already says so, like batch's summary).
                if Interrupted.received is not None and \
                        getattr(exc, "exit_code", None) not in (EXIT_SIGINT, EXIT_SIGTERM):
                    raise Interrupted(Interrupted.received) from exc
                raise
        except MobilecError as exc:
            if ctx.verbose:
                traceback.print_exc()
            _err(f"error: {exc.render()}")
            sys.exit(exc.exit_code)
        except Interrupted as exc:  # SIGINT/SIGTERM (a BaseException: no stage swallowed it)
            _err(f"error: {exc.render()}")
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            _err("error: interrupted by SIGINT; no partial artifact was kept")
            sys.exit(EXIT_SIGINT)
        except click.exceptions.Exit:
            raise
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            if ctx.verbose:
                traceback.print_exc()
            _err(f"error: internal error ({type(exc).__name__}: {str(exc)[:300]}). This is a "
                 "mobilec bug; rerun with -v for the traceback and report it.")
            sys.exit(EXIT_STAGE)
        finally:
            _restore_signal_handlers(previous)  # an in-process caller gets its own back

    return wrapper


def _install_signal_handlers() -> dict[int, Any]:
    def on_term(signum: int, frame: Any) -> None:
        Interrupted.received = signum
        raise Interrupted(signum)

    Interrupted.received = None
    previous: dict[int, Any] = {}
    try:
        # SIGINT too, as Interrupted rather than KeyboardInterrupt: a KeyboardInterrupt that
        # crosses a C-level PyRun_* call (inside TensorFlow's import) sets a CPython flag that
        # makes the process kill itself with SIGINT at exit, whatever exit code we chose.
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, on_term)
    except ValueError:  # not the main thread (e.g. inside a test runner thread)
        pass
    return previous


def _restore_signal_handlers(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        try:
            signal.signal(signum, handler)
        except (ValueError, TypeError):  # not the main thread, or a handler set from C
            pass


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mobilec")
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks and converter logs.")
@click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr.")
@click.pass_context
def main(ctx: click.Context, verbose: bool, quiet: bool) -> None:
    """mobilec: make trained models fit on phones.

    Load a Keras, SavedModel or ONNX model, prune and quantize it, convert it to
    TFLite, Core ML and ONNX for each target device, verify every conversion and
    report size, accuracy, fidelity and latency.

    Exit codes: 0 ok, 1 budget violated, 2 usage or invalid input, 3 a stage failed.
    """
    obj = ctx.ensure_object(Ctx)
    obj.verbose, obj.quiet = verbose, quiet


def _load(recipe: str, overrides: tuple[str, ...]) -> Any:
    from mobilec.recipe.loader import load_recipe

    return load_recipe(recipe, list(overrides))


set_option = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                          help="Override a recipe key, e.g. --set stages.1.quantize.mode=float16.")
json_option = click.option("--json", "as_json", is_flag=True,
                           help="Machine output on stdout (logs go to stderr).")


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@set_option
@click.option("--out", type=click.Path(file_okay=False), help="Output directory.")
@json_option
@click.option("--no-eval", is_flag=True, help="Convert only: sizes, no accuracy or latency.")
@click.option("--unsafe-deserialization", is_flag=True,
              help="Allow Lambda layers (arbitrary code) in Keras models you trust.")
@click.option("--diagnose", "run_diagnose", is_flag=True,
              help="Also rank int8 error per layer: diagnose.json and a report.html section.")
@click.pass_obj
@handle_errors
def compress(obj: Ctx, recipe: str, overrides: tuple[str, ...], out: str | None, as_json: bool,
             no_eval: bool, unsafe_deserialization: bool, run_diagnose: bool = False) -> None:
    """Run RECIPE: load, prune, quantize, convert, evaluate, report."""
    from mobilec import pipeline
    from mobilec.util.progress import Progress

    r = _load(recipe, overrides)
    progress = Progress(quiet=obj.quiet)
    try:
        # Converters' C++ code prints to fd 1; with --json, stdout must hold only JSON.
        with stdout_to_stderr(as_json):
            report = pipeline.run(r, out=out, evaluate=not no_eval, progress=progress,
                                  unsafe_deserialization=unsafe_deserialization, verbose=obj.verbose,
                                  diagnose=run_diagnose)
    finally:
        progress.close()
    if as_json:
        click.echo(json.dumps({k: v for k, v in report.items() if k != "markdown_sections"}, indent=2))
    elif not obj.quiet:
        from mobilec.report.console import print_report

        print_report(report)
    sys.exit(report["exit_code"])


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@set_option
@click.option("--out", type=click.Path(file_okay=False), help="Output directory.")
@click.option("--format", "backend", type=click.Choice(["tflite", "onnx"]), default=None,
              help="Which int8 conversion to diagnose (default: tflite when the model has a "
                   "TensorFlow form, else onnx).")
@click.option("--top", type=int, default=20, show_default=True, help="Rows in the table.")
@json_option
@click.option("--unsafe-deserialization", is_flag=True,
              help="Allow Lambda layers (arbitrary code) in Keras models you trust.")
@click.pass_obj
@handle_errors
def diagnose(obj: Ctx, recipe: str, overrides: tuple[str, ...], out: str | None,
             backend: str | None, top: int, as_json: bool, unsafe_deserialization: bool) -> None:
    """Rank RECIPE's layers by int8 quantization error, worst first.

    Runs the recipe's stages before quantize, quantizes to int8 with the
    calibration data and compares every op with its float twin: RMSE/scale,
    max abs error, SNR. Writes diagnose.json and diagnose.html to the output dir.
    """
    from mobilec.diagnose.core import run_recipe
    from mobilec.diagnose.view import html_page, print_table
    from mobilec.util.fs import atomic_write_text
    from mobilec.util.progress import Progress

    r = _load(recipe, overrides)
    progress = Progress(quiet=obj.quiet)
    try:
        with stdout_to_stderr(as_json):
            diag, path = run_recipe(r, out=out, backend=backend, progress=progress,
                                    unsafe_deserialization=unsafe_deserialization,
                                    verbose=obj.verbose)
    finally:
        progress.close()
    data = json.loads(path.read_text())
    atomic_write_text(path.with_name("diagnose.html"), html_page(data, f"mobilec diagnose: {r.name}"))
    if as_json:
        click.echo(json.dumps({**data, "path": str(path)}, indent=2))
    elif not obj.quiet:
        print_table(data, limit=top)
        click.echo(f"wrote {path} and {path.with_name('diagnose.html')}")


@main.command()
@click.argument("recipe", type=click.Path(dir_okay=False))
@set_option
@json_option
@click.pass_obj
@handle_errors
def validate(obj: Ctx, recipe: str, overrides: tuple[str, ...], as_json: bool) -> None:
    """Check RECIPE (schema, paths, plan) without loading TensorFlow."""
    from mobilec.policy.plancheck import check_plan
    from mobilec.sources.detect import detect_format

    r = _load(recipe, overrides)
    fmt = detect_format(Path(r.model.path), r.model.format)
    student = getattr(r.stage("distill"), "student", None)
    needed = {"data.train": r.data and r.data.train, "data.eval": r.data and r.data.eval,
              "distill.student": student if isinstance(student, Path) else None}
    for key, p in needed.items():
        if p is not None and not Path(p).exists():
            from mobilec.errors import RecipeError

            raise RecipeError(f"{key}: file not found", where=str(p),
                              hint="relative paths resolve against the recipe file's folder")
    check_plan(r, fmt)
    if as_json:
        click.echo(json.dumps({"valid": True, "name": r.name, "model_format": fmt,
                               "recipe": json.loads(r.effective_json())}, indent=2))
    else:
        stages = " -> ".join(["load", *[e.name for e in r.stages], "convert", "evaluate"])
        click.echo(f"{recipe}: valid ({fmt} model; {stages}; targets {', '.join(r.targets)})")


@main.command()
def schema() -> None:
    """Print the recipe's JSON Schema (for editors)."""
    from mobilec.recipe.loader import json_schema

    click.echo(json.dumps(json_schema(), indent=2))


@main.command()
@json_option
def targets(as_json: bool) -> None:
    """List target devices with their artifact, quantization and delegate."""
    from mobilec.policy.targets import describe

    rows = describe()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("target", "artifacts", "quantization", "delegate", "fallback", "constraints")
    for r in rows:
        table.add_row(r["target"], r["artifacts"], r["quantization"], r["delegate"], r["fallback"],
                      r["constraints"])
    console = Console()
    console.print(table)
    for r in rows:  # below the table: a warning is a sentence, not a cell
        if r["warning"]:
            console.print(f"[yellow]{r['target']}[/]: {r['warning']}")


@main.group()
def recipes() -> None:
    """Ready recipes to copy."""


def _recipe_files() -> dict[str, Path]:
    return {p.stem: p for p in sorted(BUNDLED_RECIPES.glob("*.yaml"))}


@recipes.command("list")
def recipes_list() -> None:
    """List bundled recipes."""
    for name, path in _recipe_files().items():
        first = next((ln[1:].strip() for ln in path.read_text().splitlines() if ln.startswith("#")), "")
        click.echo(f"{name:<16} {first}")


@recipes.command("show")
@click.argument("name")
@handle_errors
def recipes_show(name: str) -> None:
    """Print a bundled recipe."""
    files = _recipe_files()
    if name not in files:
        import difflib

        close = difflib.get_close_matches(name, list(files), n=1)
        raise MobilecError(f"no recipe named '{name}'" + (f"; did you mean '{close[0]}'?" if close else ""),
                           hint=f"recipes: {', '.join(files)}")
    click.echo(files[name].read_text(), nl=False)


STARTER = """\
# mobilec recipe: edit, then `mobilec validate {path}` and `mobilec compress {path}`
version: 1
name: {name}
model:
  path: model.keras            # .keras, .h5, SavedModel directory or .onnx (relative to this file)
  format: auto
data:                          # needed for int8 calibration, pruning and accuracy
  source: npz                  # digits (built-in) | npz | images
  train: data/train.npz        # arrays x (inputs) and y (labels, optional)
  eval: data/eval.npz          # never trained on; used for accuracy and fidelity
  calibration_samples: 200
stages:
  # - prune: {{sparsity: 0.5, schedule: constant, epochs: 2}}
  - quantize: {{mode: int8}}    # dynamic | float16 | int8 | int8-io | int16x8 | int4 | palettize | qat | auto
targets: [cpu]                 # android-nnapi | android-gpu | ios-coreml | cpu
verify: {{min_top1_agreement: 0.99, min_snr_db: 20}}
budget:
  max_accuracy_drop: 0.01      # CI fails (exit 1) past this
output:
  report: [json, md, html]
"""


@main.command()
@click.argument("path", default="mobilec.yaml", type=click.Path(dir_okay=False))
@handle_errors
def init(path: str) -> None:
    """Write a commented starter recipe (never overwrites)."""
    from mobilec.util.fs import atomic_write_text

    p = Path(path)
    if p.exists():
        raise MobilecError("file exists; mobilec init never overwrites", where=str(p),
                           hint="pass another path: mobilec init my-recipe.yaml")
    name = "".join(c if c.isalnum() or c in "-_" else "-" for c in p.stem) or "model"
    atomic_write_text(p, STARTER.format(path=path, name=name))
    click.echo(f"wrote {p}")


@main.command()
@click.argument("model", type=click.Path())
@click.option("--runs", default=100, show_default=True, help="Timed runs after warm-up.")
@click.option("--threads", default=1, show_default=True, help="CPU threads for the runtime.")
@json_option
@handle_errors
def bench(model: str, runs: int, threads: int, as_json: bool) -> None:
    """Measure host latency (median, p90) of a .tflite, .onnx or Keras model."""
    from mobilec.tools.bench import bench_model

    with stdout_to_stderr(as_json):
        result = bench_model(Path(model), runs=runs, threads=threads)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    lat = result["latency_ms"]
    click.echo(f"{model}: {result['format']}, {result['size_bytes']} bytes, input "
               f"{result['input']['shape']} {result['input']['dtype']}: median {lat['median']:.4f} ms, "
               f"p90 {lat['p90']:.4f} ms over {lat['runs']} runs ({threads} thread(s))")


@main.command()
@click.argument("model", type=click.Path())
@json_option
@click.option("--unsafe-deserialization", is_flag=True)
@handle_errors
def inspect(model: str, as_json: bool, unsafe_deserialization: bool) -> None:
    """Show a model's format, inputs, outputs, parameters and ops."""
    from mobilec.tools.inspect import inspect_model

    info = inspect_model(Path(model), unsafe_deserialization=unsafe_deserialization)
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
        return
    for key, value in info.items():
        if isinstance(value, dict):
            click.echo(f"{key}:")
            for k, v in value.items():
                click.echo(f"  {k}: {v}")
        elif isinstance(value, list):
            click.echo(f"{key}:")
            for v in value:
                click.echo(f"  - {v}")
        else:
            click.echo(f"{key}: {value}")


@main.command()
@click.argument("inputs", nargs=-1, required=True, metavar="ZOO.yaml | MODEL_OR_FOLDER…")
@click.option("--recipe", "base_recipe", type=click.Path(dir_okay=False),
              help="Base recipe when the arguments are models or folders of models.")
@set_option
@click.option("--out", type=click.Path(file_okay=False), help="Output folder (one sub-folder per model).")
@click.option("--executor", type=click.Choice(["local", "ray"]), help="Default: the zoo's, else local.")
@click.option("--workers", type=click.IntRange(min=1), help="Parallel models (default: CPU cores).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), help="Seconds per model.")
@click.option("--address", help="Ray cluster address (with --executor ray).")
@click.option("--force", is_flag=True, help="Convert again even when cached.")
@click.option("--no-eval", is_flag=True, help="Convert only: sizes, no accuracy or latency.")
@click.option("--unsafe-deserialization", is_flag=True,
              help="Allow Lambda layers (arbitrary code) in Keras models you trust.")
@json_option
@click.pass_obj
@handle_errors
def batch(obj: Ctx, inputs: tuple[str, ...], base_recipe: str | None, overrides: tuple[str, ...],
          out: str | None, executor: str | None, workers: int | None, timeout: float | None,
          address: str | None, force: bool, no_eval: bool, unsafe_deserialization: bool,
          as_json: bool) -> None:
    """Convert a zoo of models: ZOO.yaml, or --recipe BASE.yaml with models/folders.

    Parallel, cached by content (a re-run skips what is done), one model's failure never
    stops the others; writes zoo-report.{json,md,html}. Exit 3 if any model failed,
    1 if any broke its budget.
    """
    from mobilec.batch.run import run_batch

    if base_recipe is None and len(inputs) != 1:
        raise MobilecError("give one zoo file, or --recipe BASE.yaml followed by models",
                           hint="mobilec batch zoo.yaml | mobilec batch --recipe r.yaml a.onnx b.keras")
    with stdout_to_stderr(as_json):
        zoo = run_batch(None if base_recipe else inputs[0], recipe=base_recipe,
                        models=list(inputs) if base_recipe else [], overrides=list(overrides),
                        out=out, executor=executor, workers=workers, timeout=timeout,
                        address=address, force=force, evaluate=not no_eval,
                        unsafe_deserialization=unsafe_deserialization, verbose=obj.verbose,
                        quiet=obj.quiet)
    if as_json:
        click.echo(json.dumps(zoo, indent=2))
    elif not obj.quiet:
        from mobilec.batch.progress import print_summary

        print_summary(zoo)
    sys.exit(zoo["totals"]["exit_code"])


if __name__ == "__main__":
    main()
