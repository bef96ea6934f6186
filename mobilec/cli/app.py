"""The click group, the flags every command shares, and how errors and signals end a command.

Nothing here imports TensorFlow: `mobilec --help`, `validate`, `schema` and `targets`
must stay fast.
"""

from __future__ import annotations

import functools
import sys
import traceback
from collections.abc import Callable
from typing import Any

import click

from mobilec._version import __version__
from mobilec.errors import EXIT_SIGINT, EXIT_SIGTERM, EXIT_STAGE, Interrupted, MobilecError
from mobilec.util import signals


class Ctx:
    verbose: bool = False
    quiet: bool = False
    json: bool = False


_JSON = Ctx()
_JSON.json = True


def _err(text: str) -> None:
    click.echo(text, err=True)


def _fail(ctx: Ctx, code: int, text: str, message: str, where: str | None = None,
          hint: str | None = None) -> None:
    """Print the error (stderr always; under --json also a JSON object on stdout, so CI
    parses a failure like a result) and exit with its code."""
    _err(f"error: {text}")
    if ctx.json:
        import json

        click.echo(json.dumps({"error": {"code": code, "message": message, "where": where,
                                         "hint": hint}}, indent=2))
    sys.exit(code)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """User mistakes print one paragraph and exit 2/3; bugs say so, -v shows the traceback."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context().find_object(Ctx) or Ctx()
        previous = signals.install()
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
            _fail(ctx, exc.exit_code, exc.render(), exc.message, exc.where, exc.hint)
        except Interrupted as exc:  # SIGINT/SIGTERM (a BaseException: no stage swallowed it)
            _fail(ctx, exc.exit_code, exc.render(), exc.message)
        except KeyboardInterrupt:
            message = "interrupted by SIGINT; no partial artifact was kept"
            _fail(ctx, EXIT_SIGINT, message, message)
        except click.exceptions.Exit:
            raise
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            if ctx.verbose:
                traceback.print_exc()
            message = (f"internal error ({type(exc).__name__}: {str(exc)[:300]}). This is a "
                       "mobilec bug; rerun with -v for the traceback and report it.")
            _fail(ctx, EXIT_STAGE, message, message)
        finally:
            signals.restore(previous)

    return wrapper


def _flag(name: str) -> Callable[[click.Context, click.Parameter, bool], None]:
    """Store a shared flag on the context object, wherever on the line it was typed."""
    def store(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if value:
            setattr(ctx.ensure_object(Ctx), name, True)

    return store


def common_flags(fn: Callable[..., Any]) -> Callable[..., Any]:
    """-v, -q and --json, accepted before the sub-command (on the group) and after it."""
    fn = click.option("-v", "--verbose", is_flag=True, expose_value=False, is_eager=True,
                      callback=_flag("verbose"), help="Show tracebacks and converter logs.")(fn)
    fn = click.option("-q", "--quiet", is_flag=True, expose_value=False, is_eager=True,
                      callback=_flag("quiet"), help="Only errors on stderr.")(fn)
    return click.option("--json", is_flag=True, expose_value=False, is_eager=True,
                        callback=_flag("json"),
                        help="Machine output on stdout (logs go to stderr).")(fn)


class Group(click.Group):
    """click's group, but under --json a usage error (a bad option value, an unknown
    option) is also the JSON error object on stdout, like every other error."""

    def main(self, args: Any = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        if not standalone_mode or "--json" not in argv:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, False, **extra)
        except click.ClickException as exc:
            exc.show()
            param = getattr(exc, "param", None)
            command = exc.ctx.command_path if getattr(exc, "ctx", None) else "mobilec"
            _fail(_JSON, exc.exit_code, exc.format_message(),
                  exc.format_message(), where=param.opts[0] if param is not None and
                  getattr(param, "opts", None) else None, hint=f"{command} --help")
        except click.Abort:
            _fail(_JSON, EXIT_SIGINT, "aborted", "aborted")
        sys.exit(rv if isinstance(rv, int) else 0)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mobilec")
@common_flags
@click.pass_context
def main(ctx: click.Context) -> None:
    """mobilec: make trained models fit on phones.

    Load a Keras, SavedModel or ONNX model, prune and quantize it, convert it to
    TFLite, Core ML and ONNX for each target device, verify every conversion and
    report size, accuracy, fidelity and latency.

    Exit codes: 0 ok, 1 budget violated, 2 usage or invalid input, 3 a stage failed.
    """
    ctx.ensure_object(Ctx)


set_option = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                          help="Override a recipe key, e.g. --set stages.1.quantize.mode=float16.")
unsafe_option = click.option("--unsafe-deserialization", is_flag=True,
                             help="Allow Lambda layers (arbitrary code) in Keras models you trust.")
force_option = click.option("--force", is_flag=True,
                            help="Overwrite files in the output dir (and the --junit file) "
                                 "that no earlier mobilec run wrote.")
trust_option = click.option("--trust-code", is_flag=True,
                            help="Allow the recipe to run Python code: model.module factories "
                                 "and data.python hooks. Only for recipes you trust.")
