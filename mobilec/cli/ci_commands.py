"""What mobilec gives a CI system: `mobilec compare` between two runs, JUnit XML and
GitHub annotations after a compress."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import click

from mobilec.cli.app import Ctx, common_flags, handle_errors, main
from mobilec.errors import MobilecError


def ci_outputs(report: dict[str, Any], recipe: str, junit: str | None, *, quiet: bool,
               to_stderr: bool, force: bool = False, strict: bool = False) -> None:
    """--junit FILE, and `::error file=…,line=…::` lines when running in GitHub Actions."""
    from mobilec.ci.annotations import github_annotations
    from mobilec.ci.junit import junit_xml, write_junit

    if junit:
        path = write_junit(junit, junit_xml(report, recipe, strict=strict), force)
        if not quiet:
            click.echo(f"wrote {path}", err=True)
    if os.environ.get("GITHUB_ACTIONS") == "true":
        # Workflow commands are read from the step's output; with --json stdout is the report.
        for line in github_annotations(report, recipe, Path(recipe).read_text(), strict=strict):
            click.echo(line, err=to_stderr)


def junit_for_error(recipe: str, junit: str | None, exc: MobilecError, force: bool = False
                    ) -> None:
    """A run refused before it made a report (exit 2: bad recipe or model, --locked) still
    leaves the JUnit file a CI step will look for: one errored case with the reason."""
    from mobilec.ci.junit import junit_xml, write_junit

    if not junit:
        return
    report = {"name": Path(recipe).stem, "exit_code": exc.exit_code, "artifacts": [],
              "budget": {"passed": True, "violations": []},
              "stages": [{"name": "plan", "status": "failed", "seconds": 0.0,
                          "error": exc.render()}]}
    try:
        write_junit(junit, junit_xml(report, recipe), force)
    except MobilecError:
        pass  # --junit names a file mobilec must not overwrite: the first error is the one to show


@main.command(name="compare")
@click.argument("base", type=click.Path(exists=True))
@click.argument("new", type=click.Path(exists=True))
@click.option("--max-size-increase", type=float, metavar="FRACTION",
              help="Fail (exit 1) when an artifact grows by more, e.g. 0.05 = 5%.")
@click.option("--max-accuracy-loss", type=float, metavar="POINTS",
              help="Fail when accuracy falls by more (absolute, 0.005 = half a point).")
@click.option("--max-latency-increase", type=float, metavar="FRACTION",
              help="Fail when median latency grows by more, e.g. 0.2 = 20%.")
@click.option("--md", is_flag=True, help="Markdown (for a pull-request comment).")
@common_flags
@click.pass_obj
@handle_errors
def compare_command(obj: Ctx, base: str, new: str, max_size_increase: float | None,
                    max_accuracy_loss: float | None, max_latency_increase: float | None,
                    md: bool) -> None:
    """Per-artifact deltas between two runs (report.json files or output dirs).

    Artifacts are matched by target, format and quantization; an artifact whose
    quantization changed is compared with BASE's of the same target and format.
    Exit 1 when a gate is broken or an artifact that verified in BASE failed or
    degraded in NEW; 0 otherwise. Artifacts in only one run are listed, not failed.
    """
    from mobilec.ci.compare import as_dict, compare, load_report, render_markdown, render_text

    cmp = compare(load_report(base), load_report(new), max_size_increase=max_size_increase,
                  max_accuracy_loss=max_accuracy_loss,
                  max_latency_increase=max_latency_increase, base_label=base, new_label=new)
    if obj.json:
        click.echo(json.dumps(as_dict(cmp), indent=2))
    elif md:
        click.echo(render_markdown(cmp))
    elif not obj.quiet or cmp.exit_code:
        click.echo(render_text(cmp, shutil.get_terminal_size((100, 24)).columns))
    sys.exit(cmp.exit_code)
