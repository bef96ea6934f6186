"""Batch progress on stderr: a live rich table on a terminal, one plain line per event in CI."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any

from mobilec.report.table import fmt_bytes

MAX_ROWS = 25  # beyond this the live table shows running, failed and recent models only
COLORS = {"ok": "green", "cached": "cyan", "budget": "yellow", "failed": "red", "running": "bold"}


@dataclass
class _Row:
    name: str
    stage: str = ""
    status: str = "queued"
    size: int | None = None
    accuracy: float | None = None
    seconds: float | None = None
    started: float | None = None
    finished_order: int = 0


def headline(report: dict[str, Any] | None) -> tuple[int | None, float | None]:
    """Size and accuracy of a model's smallest good artifact (what a table row can show)."""
    if not report:
        return None, None
    ok = [a for a in report.get("artifacts", []) if a.get("status") == "ok"
          and a.get("role", "artifact") == "artifact" and a.get("size_bytes") is not None]
    if not ok:
        return None, None
    best = min(ok, key=lambda a: a["size_bytes"])
    return best["size_bytes"], best.get("accuracy")


class BatchProgress:
    def __init__(self, names: list[str], *, quiet: bool = False, stream: Any = None,
                 title: str = "mobilec batch"):
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.rows = {n: _Row(n) for n in names}
        self.title = title
        self._done = 0
        self._live = None
        tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        if tty and not quiet:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(get_renderable=self._render, console=Console(file=self.stream),
                              refresh_per_second=4, transient=False)
            self._live.start()

    # ------------------------------------------------------------------ events
    def started(self, name: str, where: str = "") -> None:
        row = self.rows[name]
        row.status, row.started, row.stage = "running", time.monotonic(), where or "load"
        self.note(f"{name}: started{' on ' + where if where else ''}")

    def stage(self, name: str, stage: str) -> None:
        self.rows[name].stage = stage
        self.note(f"{name}: {stage}")

    def finished(self, name: str, status: str, report: dict[str, Any] | None, seconds: float | None,
                 error: str | None = None) -> None:
        row = self.rows[name]
        self._done += 1
        row.status, row.seconds, row.finished_order = status, seconds, self._done
        row.stage = "" if status != "failed" else row.stage
        row.size, row.accuracy = headline(report)
        size = fmt_bytes(row.size) if row.size is not None else "-"
        acc = "-" if row.accuracy is None else f"{row.accuracy * 100:.2f}%"
        took = "" if seconds is None else f" {seconds:.1f}s"
        text = f"{name}: {status.upper() if status == 'failed' else status} {size} {acc}{took}"
        self.note(text + (f" - {' '.join(error.split())}" if error else ""))

    def close(self) -> None:
        if self._live is not None:
            self._live.refresh()
            self._live.stop()
            self._live = None

    # ------------------------------------------------------------------ output
    def note(self, text: str) -> None:
        if self.quiet or self._live is not None:
            return
        print(f"{time.strftime('%H:%M:%S')} [mobilec] {text}", file=self.stream, flush=True)

    def _render(self) -> Any:
        from rich.table import Table

        rows = list(self.rows.values())
        counts: dict[str, int] = {}
        for r in rows:
            counts[r.status] = counts.get(r.status, 0) + 1
        caption = " · ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        if len(rows) > MAX_ROWS:
            active = [r for r in rows if r.status in ("running", "failed")]
            recent = sorted((r for r in rows if r.finished_order and r.status != "failed"),
                            key=lambda r: -r.finished_order)
            rows = (active + recent)[:MAX_ROWS]
        table = Table("model", "stage", "status", "size", "accuracy", "time",
                      title=self.title, caption=caption)
        now = time.monotonic()
        for r in rows:
            took = r.seconds if r.seconds is not None else (
                now - r.started if r.started is not None else None)
            color = COLORS.get(r.status, "dim")
            table.add_row(r.name, r.stage, f"[{color}]{r.status}[/]",
                          "-" if r.size is None else fmt_bytes(r.size),
                          "-" if r.accuracy is None else f"{r.accuracy * 100:.2f}%",
                          "-" if took is None else f"{took:.1f}s")
        return table


def print_summary(zoo: dict[str, Any]) -> None:
    """The end-of-run table on stdout: one line per model, failures with reasons."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 160)
    table = Table("model", "status", "smallest artifact", "accuracy", "time")
    for m in zoo["models"]:
        size, acc = headline(m.get("report"))
        color = COLORS.get(m["status"], "dim")
        table.add_row(m["name"], f"[{color}]{m['status']}[/]",
                      "-" if size is None else fmt_bytes(size),
                      "-" if acc is None else f"{acc * 100:.2f}%",
                      "-" if m.get("seconds") is None else f"{m['seconds']:.1f}s")
    console.print(table)
    for m in zoo["models"]:
        if m.get("error"):
            console.print(f"  [red]{m['name']}[/]: {m['error']}", highlight=False)
    console.print(totals_line(zoo), highlight=False)


def totals_line(zoo: dict[str, Any]) -> str:
    """The batch in one line (also what -q prints)."""
    t = zoo["totals"]
    failed = [m["name"] for m in zoo["models"] if m["status"] == "failed"]
    return (f"{t['models']} models: {t['ok']} ok, {t['budget']} over budget, {t['failed']} "
            f"failed" + (f" ({', '.join(failed[:5])})" if failed else "") +
            f", {t['cached']} cached in {t['wall_seconds']:.1f}s; "
            f"report: {zoo['out_dir']}/zoo-report.md")
