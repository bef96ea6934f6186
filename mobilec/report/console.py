"""The report as a rich table on the terminal (plain text when not a TTY)."""

from __future__ import annotations

import sys
from typing import Any

from mobilec.report.build import ARTIFACT_HEADERS, artifact_cells


def print_report(report: dict[str, Any]) -> None:
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
    console.print(f"outputs: {report.get('out_dir', '')}")
