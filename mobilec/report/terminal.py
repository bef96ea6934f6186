"""Tables that fit the terminal: `mobilec compress`'s artifacts and `mobilec targets`.

Below 120 columns the artifact table is compact (artifact, quant, size, smaller, drop,
SNR, status; report.md has every column); from 120 columns, or with --wide, it is full.
No header and no number is ever cut: numbers never wrap, headers are short, and the only
column that gives way is the artifact path, which folds onto a second line. When even that
does not fit, fewer columns are shown (or, for --wide, one small table per artifact).
"""

from __future__ import annotations

import re
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from mobilec.report.table import artifact_cells

WIDE_FROM = 120
MIN_NAME = 12  # the artifact path folds, but not narrower than this

# artifact_cells() order, with headers short enough for 80 columns
FULL_HEADERS = ("artifact", "target", "quant", "delegate", "size", "gzip", "smaller", "accuracy",
                "drop", "top-1", "SNR dB", "p50 ms", "status")
FULL = tuple(range(len(FULL_HEADERS)))
MEDIUM = (0, 1, 2, 4, 6, 7, 8, 10, 11, 12)  # no delegate, gzip, top-1 agreement
COMPACT = (0, 2, 4, 6, 8, 10, 12)  # artifact, quant, size, × smaller, drop, SNR, status
MINIMAL = (0, 2, 4, 12)
TEXT_COLUMNS = frozenset({0, 1, 2, 3, 12})  # left-aligned; the rest are numbers
STATUS_COLOR = {"ok": "green", "unverified": "cyan", "skipped": "yellow"}
LEGEND = "top-1: top-1 agreement with the model converted · p50 ms: median host latency"


def _gaps(n: int) -> int:
    # box.SIMPLE_HEAD without edges, padding collapsed: two spaces between columns
    return 2 * (n - 1)


def _fold_name(name: str, width: int | None) -> str:
    """Break a path that is too wide after a separator (/ - _ .), filling each line; a
    piece still wider than the column is folded by the table itself."""
    if width is None or len(name) <= width:
        return name
    lines = [""]
    for piece in re.findall(r"[^/_.-]+[/_.-]?|[/_.-]", name):
        if lines[-1] and len(lines[-1]) + len(piece) > width:
            lines.append("")
        lines[-1] += piece
    return "\n".join(lines)


def _fold_status(status: str, width: int) -> str:
    # "failed-verification" in a narrow table: break after the hyphen, never inside a word
    return status if len(status) <= width else status.replace("-", "-\n")


def _fits(rows: list[list[str]], cols: tuple[int, ...], width: int, fold: bool
          ) -> tuple[int, int] | None:
    """(artifact width, status width) if these columns fit `width`, else None. Without
    `fold`, only if every path fits whole on one line; with it, the path folds and, if
    that is still not enough, the status breaks at its hyphen."""
    # no rows (a stage failed before convert): the headers alone set the widths
    widths = {i: max([len(FULL_HEADERS[i]), *(len(r[i]) for r in rows)]) for i in cols}
    status_widths = [widths.get(12, 0)]
    if fold and 12 in widths:
        status_widths.append(max([len(FULL_HEADERS[12]),
                                  *(len(part) for r in rows for part in r[12].split("-"))]))
    rooms = []
    for status_w in status_widths:
        widths[12] = status_w
        others = sum(w for i, w in widths.items() if i != 0 and (i != 12 or 12 in cols))
        rooms.append((width - others - _gaps(len(cols)), status_w))
    for room, status_w in rooms:  # whole paths first, with the status whole if possible
        if room >= widths[0]:
            return widths[0], status_w
    room, status_w = rooms[-1]  # then the most room the path can have
    return (room, status_w) if fold and room >= MIN_NAME else None


def _table(rows: list[list[str]], statuses: list[str], cols: tuple[int, ...],
           name_width: int | None, status_width: int | None = None) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True,
                  header_style="bold")
    for i in cols:
        if i == 0:  # the only column that may give way: it folds, it is never cut
            table.add_column(FULL_HEADERS[i], overflow="fold", max_width=name_width,
                             min_width=min(MIN_NAME, name_width or MIN_NAME))
        else:
            table.add_column(FULL_HEADERS[i], no_wrap=True, overflow="ignore",
                             justify="left" if i in TEXT_COLUMNS else "right")
    for cells, status in zip(rows, statuses, strict=True):
        out: list[RenderableType] = []
        for i in cols:
            if i == 12:
                text = _fold_status(cells[i], status_width) if status_width else cells[i]
                out.append(Text(text, style=STATUS_COLOR.get(status, "red")))
            elif i == 0:
                out.append(Text(_fold_name(cells[i], name_width)))
            else:
                out.append(Text(cells[i]))
        table.add_row(*out)
    return table


def _records(rows: list[list[str]], statuses: list[str]) -> Table:
    """--wide on a narrow terminal: every field, one artifact after another, two columns."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True,
                  show_header=False)
    table.add_column("field", style="dim", no_wrap=True)
    table.add_column("value", overflow="fold")
    for n, (cells, status) in enumerate(zip(rows, statuses, strict=True)):
        table.add_row("artifact", Text(cells[0], style="bold"))
        for i in FULL[1:]:
            style = STATUS_COLOR.get(status, "red") if i == 12 else ""
            table.add_row(FULL_HEADERS[i], Text(cells[i], style=style),
                          end_section=(i == FULL[-1] and n < len(rows) - 1))
    return table


def artifact_table(report: dict[str, Any], width: int, wide: bool = False) -> Table:
    """The artifact table for a terminal `width` columns wide."""
    artifacts = report.get("artifacts") or []
    rows = [artifact_cells(a) for a in artifacts]
    statuses = [str(a.get("status")) for a in artifacts]
    if wide:
        tiers: tuple[tuple[int, ...], ...] = (FULL,)
    elif width >= WIDE_FROM:
        tiers = (FULL, MEDIUM, COMPACT, MINIMAL)
    else:
        tiers = (COMPACT, MINIMAL)
    # First the widest table whose paths fit whole; only then let the path fold.
    candidates = [(cols, False) for cols in tiers if cols != MINIMAL or len(tiers) == 1]
    candidates += [(cols, True) for cols in tiers]
    for cols, fold in candidates:
        fit = _fits(rows, cols, width, fold)
        if fit is None:
            continue
        table = _table(rows, statuses, cols, *fit)
        if cols == FULL:
            table.caption = LEGEND
        elif cols == MEDIUM:
            table.caption = "p50 ms: median host latency · every column: report.md, or --wide"
        else:
            table.caption = "every column: report.md, or --wide"
        return table
    if wide:
        return _records(rows, statuses)
    # narrower than the smallest table: still nothing cut, the terminal wraps the lines
    return _table(rows, statuses, MINIMAL, None)


def targets_table(targets: list[dict[str, Any]], width: int) -> Group:
    """`mobilec targets`: the table (words wrap, nothing is cut), then each target's
    constraints and warning as wrapped sentences below it. `targets` is
    mobilec.policy.targets.describe()."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True,
                  header_style="bold")
    # Below ~64 columns five columns of words no longer fit: the fallback moves to the notes.
    with_fallback = width >= 64
    table.add_column("target", no_wrap=True)
    for header in ("artifacts", "quant", "delegate") + (("fallback",) if with_fallback else ()):
        table.add_column(header, overflow="fold")
    for t in targets:
        cells = [str(t.get("target")), str(t.get("artifacts") or "-"),
                 str(t.get("quantization") or "-"), str(t.get("delegate") or "-")]
        table.add_row(*cells, *([str(t.get("fallback") or "-")] if with_fallback else []))
    notes: list[RenderableType] = []
    for t in targets:
        text = str(t.get("constraints") or "")
        if not with_fallback and t.get("fallback") not in (None, "-"):
            text = f"{text}; fallback {t['fallback']}".lstrip("; ")
        if text:
            notes.append(Text.assemble((f"{t['target']}: ", "bold"), text))
        if t.get("warning"):
            notes.append(Text.assemble((f"{t['target']}: ", "bold yellow"), str(t["warning"])))
    parts: list[RenderableType] = [table]
    if notes:
        parts += [Text(""), *notes]
    return Group(*parts)
