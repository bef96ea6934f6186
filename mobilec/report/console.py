"""The report as a rich table on the terminal (plain text when not a TTY)."""

from __future__ import annotations

import sys
from typing import Any

from mobilec.report.table import label_source, status_legend
from mobilec.report.terminal import artifact_table, targets_table


def print_report(report: dict[str, Any], wide: bool = False) -> None:
    from rich.console import Console

    console = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 200)
    m = report["model"]
    acc = "-" if m.get("accuracy") is None else f"{m['accuracy'] * 100:.2f}%"
    console.print(f"[bold]{report['name']}[/]: {m['format']} model, {m['params']} params, "
                  f"accuracy {acc}")
    if label_source(m):
        console.print(f"  {label_source(m)}")
    console.print(artifact_table(report, console.width, wide))
    legend = status_legend(report["artifacts"])
    if legend:
        console.print(f"  [cyan]{legend}[/]")
    for a in report["artifacts"]:
        for text in filter(None, (a.get("error"), a.get("note"))):
            console.print(f"  [yellow]{a['path']}[/]: {text}")
    for note in report.get("notes", []):
        console.print(f"  note: {note}")
    b = report["budget"]
    if b["violations"]:
        console.print("[red]budget violated:[/]")
        for v in b["violations"]:
            console.print(f"  - {v}")
    if b.get("not_measured"):
        console.print("[yellow]budget not measured[/] (neither passed nor failed):")
        for v in b["not_measured"]:
            console.print(f"  - {v}", markup=False)
    console.print(f"outputs: {report['output_dir']}")


def verdict(report: dict[str, Any]) -> str:
    """The run in one line, for -q (which drops the table, never the outcome)."""
    name, code = report["name"], report["exit_code"]
    arts = [a for a in report["artifacts"] if a["status"] != "skipped"]
    failed_stage = next((s for s in report["stages"] if s["status"] == "failed"), None)
    bad = [a for a in arts if a["status"] in ("failed", "failed-verification")]
    if failed_stage is not None:
        text = f"failed: stage {failed_stage['name']} failed"
    elif bad:
        text = (f"failed: {len(bad)} of {len(arts)} artifacts failed ({bad[0]['path']}: "
                f"{(bad[0].get('error') or bad[0]['status'])[:200]})")
    elif code == 1 and report["budget"]["violations"]:
        v = report["budget"]["violations"]
        text = f"budget violated: {v[0]}" + (f" (+{len(v) - 1} more)" if len(v) > 1 else "")
    elif code == 1:
        low = [a["path"] for a in arts if a["status"] == "degraded"]
        text = f"degraded: {', '.join(low)} below the quality floor"
    else:
        text = f"ok: {len(arts)} artifacts verified"
    return f"{name}: {text} (exit {code}); outputs: {report['output_dir']}"


def print_targets(rows: list[dict[str, Any]], wide: bool = False) -> None:
    from rich.console import Console

    console = Console()
    if not wide:
        console.print(targets_table(rows, console.width))
        return
    # --wide: the table at its natural width, every word whole (the terminal wraps its lines;
    # a console as narrow as the terminal would fold headers mid-word: "artifac/ts"); the
    # sentences below it still wrap at the terminal's width, between words.
    table, *notes = targets_table(rows, 10_000).renderables
    Console(width=10_000).print(table)
    for note in notes:
        console.print(note)
