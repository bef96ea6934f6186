"""Showing a diagnosis: a terminal table, and an HTML section with an inline SVG bar
chart of the worst layers (self-contained: report.html must work offline).

Works on the JSON form (Diagnosis.as_dict / the diagnose stage's metrics), so
report.html can be re-rendered from report.json alone.
"""

from __future__ import annotations

import html
import sys
from typing import Any

CHART_ROWS = 20
BAR_W, ROW_H, LABEL_W, VALUE_W = 360, 18, 260, 70


def chart_metric(diag: dict[str, Any]) -> tuple[str, str, bool]:
    """(row key, axis label, higher_is_worse) for the diagnosis' ranking."""
    if diag.get("scope") == "cumulative":
        return "loss_db", "SNR lost at this op (dB, longer = worse)", True
    return "snr_db", "SNR of the op's int8 output (dB, shorter = worse)", False


def _num(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table_rows(diag: dict[str, Any], limit: int | None = None) -> list[list[str]]:
    rows = diag.get("rows") or []
    return [[str(r["rank"]), r["name"] + (" (cause)" if r.get("cause") else ""), r["op"],
             _num(r.get("rmse_scale"), ".3f"), _num(r.get("max_abs_error"), ".4g"),
             _num(r.get("snr_db"), ".1f")]
            + ([_num(r.get("loss_db"), ".1f")] if diag.get("scope") == "cumulative" else [])
            + [_num(r.get("range_ratio"), ".3g"), _num(r.get("worst_channel_snr_db"), ".1f")]
            for r in (rows if limit is None else rows[:limit])]


def headers(diag: dict[str, Any]) -> list[str]:
    head = ["#", "layer", "op", "RMSE/scale", "max abs err", "SNR dB"]
    return head + (["SNR lost dB"] if diag.get("scope") == "cumulative" else []) + [
        "channel range ratio", "worst channel SNR dB"]


def causes(diag: dict[str, Any]) -> list[str]:
    """One line per op blamed for damage downstream (its output's channels are unbalanced)."""
    return [f"{r['name']} ({r['op']}): {r['cause']}" for r in diag.get("rows") or []
            if r.get("cause")]


def print_table(diag: dict[str, Any], limit: int | None = CHART_ROWS, file: Any = None,
                width: int | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    out = file or sys.stdout
    if width is None and not getattr(out, "isatty", lambda: False)():
        width = 160
    console = Console(file=out, width=width)
    table = Table(title=f"int8 error per op ({diag['backend']}, "
                  f"{diag['samples']} calibration samples), worst first")
    for head in headers(diag):
        # Layer and op names are what keep_float takes: wrap them onto more lines, never cut.
        table.add_column(head, overflow="fold" if head in ("layer", "op") else "ellipsis",
                         min_width=16 if head == "layer" else None)
    for cells in table_rows(diag, limit):
        table.add_row(*cells)
    console.print(table)
    worst = [r["name"] for r in (diag.get("rows") or [])[:3]]
    if worst:
        # One unwrapped line to paste into the recipe, whatever the terminal's width.
        names = ", ".join(repr(n) for n in worst)
        console.print(f"to keep the worst in float: quantize: {{keep_float: [{names}]}}",
                      markup=False, highlight=False, soft_wrap=True)
    shown = min(len(diag["rows"]), limit or len(diag["rows"]))
    console.print(f"{shown} of {diag['ops']} ops shown; ranked by {diag['ranked_by']}. "
                  "RMSE/scale ~0.29 is plain rounding; far above it, int8 does not fit the op. "
                  "Channel range ratio: widest / median channel range of the op's output.")
    for line in causes(diag):
        console.print(f"cause: {line}", markup=False)


def svg_chart(diag: dict[str, Any], limit: int = CHART_ROWS) -> str:
    key, label, worse_high = chart_metric(diag)
    rows = (diag.get("rows") or [])[:limit]
    values = [max(0.0, r.get(key) or 0.0) for r in rows]
    top = max(values, default=0.0) or 1.0
    height = ROW_H * len(rows) + 30
    width = LABEL_W + BAR_W + VALUE_W
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'role="img" aria-label="{html.escape(label)}" font-family="system-ui,sans-serif" '
             'font-size="12">']
    for i, (r, v) in enumerate(zip(rows, values, strict=True)):
        y = i * ROW_H
        w = BAR_W * v / top
        bad = v >= 3.0 if worse_high else v < 20.0  # 20 dB: the default verify.min_snr_db
        color = "#d9534f" if bad else "#5b8def"
        name = html.escape(f"{r['name']} ({r['op']})")
        parts.append(f'<text x="{LABEL_W - 6}" y="{y + 13}" text-anchor="end">{name}</text>'
                     f'<rect x="{LABEL_W}" y="{y + 3}" width="{w:.1f}" height="{ROW_H - 6}" '
                     f'fill="{color}"><title>{name}: {key} {_num(r.get(key), ".2f")}</title></rect>'
                     f'<text x="{LABEL_W + w + 4:.1f}" y="{y + 13}">{_num(r.get(key), ".1f")}</text>')
    parts.append(f'<text x="{LABEL_W}" y="{height - 8}" fill="#555">{html.escape(label)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def html_section(diag: dict[str, Any] | None) -> str:
    """The report.html section; empty when there is no diagnosis."""
    if not diag or not diag.get("rows"):
        return ""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers(diag))
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"
                   for cells in table_rows(diag, CHART_ROWS))
    shown = min(len(diag["rows"]), CHART_ROWS)
    return (f'<section id="diagnose"><h2>int8 error per layer (worst {shown} of '
            f'{diag.get("ops", len(diag["rows"]))})</h2>'
            f'<p>{html.escape(diag["backend"])}, ranked by {html.escape(diag["ranked_by"])}. '
            "RMSE/scale near 0.29 is plain rounding; layers far above it, or below 20 dB SNR, "
            "are the ones to keep in float (<code>keep_float</code>). Channel range ratio: "
            "widest / median channel range of the op's output.</p>"
            + "".join(f"<p><b>cause</b>: {html.escape(c)}</p>" for c in causes(diag))
            + f"{svg_chart(diag)}<table><tr>{head}</tr>{body}</table></section>")


def report_diagnosis(report: dict[str, Any]) -> dict[str, Any] | None:
    """The diagnosis a report carries (the diagnose stage's metrics), if any."""
    if report.get("diagnose"):
        return report["diagnose"]
    for stage in report.get("stages") or []:
        if stage.get("name") == "diagnose" and stage.get("status") == "ok":
            m = stage.get("metrics") or {}
            return {"backend": m.get("backend"), "samples": None, "scope": m.get("scope"),
                    "ranked_by": m.get("ranked_by"), "ops": m.get("ops"), "rows": m.get("rows")}
    return None


def report_section(report: dict[str, Any]) -> str | None:
    """report.html section (registered in report_html): None when the run did not diagnose."""
    return html_section(report_diagnosis(report)) or None


def html_page(diag: dict[str, Any], title: str) -> str:
    """diagnose.html for `mobilec diagnose`: the same section as a page of its own."""
    t = html.escape(title)
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{t}</title><style>'
            "body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}</style></head>"
            f"<body><h1>{t}</h1>{html_section(diag)}</body></html>\n")
