"""The report as a rich table on the terminal (plain text when not a TTY)."""

from __future__ import annotations

import sys
from typing import Any

from mobilec.report.table import ARTIFACT_HEADERS, artifact_cells


def print_report(report: dict[str, Any], wide: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 200)
    m = report["model"]
    acc = "-" if m.get("accuracy") is None else f"{m['accuracy'] * 100:.2f}%"
    console.print(f"[bold]{report['name']}[/]: {m['format']} model, {m['params']} params, "
                  f"accuracy {acc}")
    table = Table(*ARTIFACT_HEADERS, show_lines=False)
    for a in report["artifacts"]:
        cells = artifact_cells(a)
        color = {"ok": "green", "skipped": "yellow"}.get(a["status"], "red")
        cells[-1] = f"[{color}]{cells[-1]}[/]"
        table.add_row(*cells)
    console.print(table)
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
    first = next((a["path"] for a in report["artifacts"]), None)
    if first is not None:
        console.print(f"artifacts under the output dir: {first.split('/')[0]}/…")


def print_targets(rows: list[dict[str, Any]], wide: bool = False) -> None:
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
