"""report.html: one self-contained page (inline CSS and SVG, no script, no network).

The page is a list of sections, each a function `report -> html or None` that
reads the report keys it needs and returns None when they are absent. A new
section (e.g. a diagnose chart) is one function plus `register_section(fn)`;
`bar_chart_svg` draws horizontal bars for such sections.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

from mobilec.diagnose.view import report_section
from mobilec.report.plot import FLOOR_COLOR, AccuracyPlot, size_label
from mobilec.report.schema import GOOD_STATUSES
from mobilec.report.table import (
    ARTIFACT_HEADERS,
    artifact_cells,
    fmt_bytes,
    label_source,
    status_legend,
)

Section = Callable[[dict[str, Any]], str | None]

FORMAT_COLORS = {"tflite": "#1f77b4", "onnx": "#ff7f0e", "coreml": "#2ca02c"}
OTHER_COLOR = "#7f7f7f"
STATUS_CLASS = {"ok": "ok", "unverified": "warn", "skipped": "skip", "failed": "bad",
                "failed-verification": "bad"}

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em;color:#222;
max-width:1400px}
h1{font-size:1.5em;margin-bottom:.2em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid
#ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:4px 8px;
font-size:13px;text-align:left;vertical-align:top}th{background:#f4f4f4}
td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.ok{color:#17803d}.bad{color:#b3261e;font-weight:600}.skip{color:#888}
.badge{display:inline-block;padding:2px 10px;border-radius:10px;font-weight:600;font-size:13px}
.badge.ok{background:#e3f4e8}.badge.bad{background:#fbe4e2}
.meta{color:#555;font-size:13px;margin:.2em 0}ul.notes li{font-size:13px;margin:.2em 0}
.warn{color:#9a5b00}svg text{font-family:inherit}
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


# --------------------------------------------------------------------------- sections

def summary_section(report: dict[str, Any]) -> str:
    m = report["model"]
    acc = m.get("accuracy")
    budget = report.get("budget") or {}
    code = report.get("exit_code")
    verdict = ("failed" if code == 3 else "budget violated" if budget.get("passed") is False
               else "ok")
    cls = "ok" if verdict == "ok" else "bad"
    params = "-" if m.get("params") is None else f"{m['params']:,}"
    lines = [
        f'<p><span class="badge {cls}">{_e(verdict)}</span> exit code {_e(code)}</p>',
        f'<p class="meta">model <code>{_e(m.get("path"))}</code> ({_e(m.get("format"))}, '
        f'{params} params, {_e(fmt_bytes(m.get("size_bytes")))}), accuracy '
        f'{"-" if acc is None else f"{acc * 100:.2f}%"}</p>',
        *([f'<p class="meta">{_e(label_source(m))}</p>'] if label_source(m) else []),
        f'<p class="meta">recipe <code>{_e(report.get("recipe"))}</code> · mobilec '
        f'{_e(report.get("mobilec_version"))} · {_e((report.get("host") or {}).get("platform"))}</p>',
    ]
    return "\n".join(lines)


def chart_section(report: dict[str, Any]) -> str | None:
    svg, unplotted = size_accuracy_svg(report)
    if svg is None:
        return None
    out = f"<h2>Size vs accuracy</h2>\n{svg}"
    if unplotted:
        out += ('<p class="meta">not plotted (no size or accuracy on this host): '
                + ", ".join(f"<code>{_e(p)}</code>" for p in unplotted) + "</p>")
    return out


def artifacts_section(report: dict[str, Any]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in ARTIFACT_HEADERS)
    rows = []
    numeric = {4, 5, 6, 7, 8, 9, 10, 11}
    for a in report["artifacts"]:
        cells = artifact_cells(a)
        tds = []
        for i, c in enumerate(cells):
            cls = "num" if i in numeric else ""
            if i == len(cells) - 1:
                cls = STATUS_CLASS.get(a["status"], "")
            tds.append(f'<td class="{cls}">{_e(c)}</td>' if cls else f"<td>{_e(c)}</td>")
        rows.append("<tr>" + "".join(tds) + "</tr>")
    legend = status_legend(report["artifacts"])
    return (f"<h2>Artifacts</h2>\n<table><tr>{head}</tr>\n" + "\n".join(rows) + "</table>"
            + (f'\n<p class="meta warn">{_e(legend)}</p>' if legend else ""))


def stages_section(report: dict[str, Any]) -> str | None:
    stages = report.get("stages") or []
    if not stages:
        return None
    rows = []
    for s in stages:
        scalars = ", ".join(f"{k}={v}" for k, v in (s.get("metrics") or {}).items()
                            if not isinstance(v, (list, dict)))
        if s.get("error"):
            scalars = f'<span class="bad">{_e(s["error"])}</span> ' + _e(scalars)
        else:
            scalars = _e(scalars)
        rows.append(f'<tr><td>{_e(s["name"])}</td><td class="{STATUS_CLASS.get(s["status"], "")}">'
                    f'{_e(s["status"])}</td><td class="num">{s.get("seconds", 0):.2f}</td>'
                    f"<td>{scalars}</td></tr>")
    return ("<h2>Stages</h2>\n<table><tr><th>stage</th><th>status</th><th>seconds</th>"
            "<th>metrics</th></tr>\n" + "\n".join(rows) + "</table>")


def candidates_section(report: dict[str, Any]) -> str | None:
    """quantize auto: every candidate tried, with its size and accuracy."""
    for s in report.get("stages") or []:
        cands = (s.get("metrics") or {}).get("candidates")
        if s["name"] != "quantize" or not cands:
            continue
        limit = s["metrics"].get("max_accuracy_drop")
        rows = []
        for c in cands:
            drop = c.get("accuracy_drop")
            acc = c.get("accuracy")
            mark = "chosen" if c.get("chosen") else (c.get("error") or (
                "over budget" if drop is not None else "-"))
            cls = "ok" if c.get("chosen") else ("bad" if c.get("error") else "")
            rows.append(f"<tr><td>{_e(c['mode'])}</td><td class='num'>"
                        f"{_e(fmt_bytes(c.get('size_bytes')))}</td><td class='num'>"
                        f"{'-' if acc is None else f'{acc * 100:.2f}%'}</td><td class='num'>"
                        f"{'-' if drop is None else f'{drop * 100:+.2f} pt'}</td>"
                        f"<td class='{cls}'>{_e(mark)}</td></tr>")
        lim = "" if limit is None else f" (budget: drop ≤ {limit * 100:.2f} pt)"
        return (f"<h2>quantize auto: candidates{_e(lim)}</h2>\n<table><tr><th>mode</th><th>size</th>"
                "<th>accuracy</th><th>drop</th><th>result</th></tr>\n" + "\n".join(rows)
                + "</table>")
    return None


def notes_section(report: dict[str, Any]) -> str | None:
    items = []
    for a in report["artifacts"]:
        for text, cls in ((a.get("error"), "bad"), (a.get("note"), "warn")):
            if text:
                items.append(f'<li><code>{_e(a["path"])}</code> ({_e(a["status"])}): '
                             f'<span class="{cls}">{_e(text)}</span></li>')
    items += [f"<li>{_e(n)}</li>" for n in report.get("notes") or []]
    if not items:
        return None
    return '<h2>Notes</h2>\n<ul class="notes">' + "\n".join(items) + "</ul>"


def budget_section(report: dict[str, Any]) -> str | None:
    b = report.get("budget")
    if not b:
        return None
    limits = ", ".join(f"{k}={v}" for k, v in (b.get("limits") or {}).items()) or "none set"
    if b.get("passed"):
        body = f'<p class="ok">passed</p><p class="meta">limits: {_e(limits)}</p>'
    else:
        body = (f'<p class="bad">violated</p><p class="meta">limits: {_e(limits)}</p><ul class="notes">'
                + "".join(f"<li>{_e(v)}</li>" for v in b.get("violations") or []) + "</ul>")
    if b.get("not_measured"):
        body += ('<p class="meta">not measured (neither passed nor failed):</p><ul class="notes">'
                 + "".join(f"<li>{_e(v)}</li>" for v in b["not_measured"]) + "</ul>")
    return "<h2>Budget</h2>\n" + body


SECTIONS: list[Section] = [summary_section, chart_section, artifacts_section, candidates_section,
                           stages_section, notes_section, budget_section]


def diagnose_section(report: dict[str, Any]) -> str | None:
    """compress --diagnose: int8 error per layer, worst 20 as bars (mobilec.diagnose.view)."""
    return report_section(report)


SECTIONS.insert(SECTIONS.index(stages_section), diagnose_section)


def lazy_section(module: str, name: str) -> Section:
    """A section whose code is imported only when a report is rendered, e.g.
    `register_section(lazy_section("mobilec.diagnose.view", "report_section"))`."""

    def section(report: dict[str, Any]) -> str | None:
        from importlib import import_module

        return getattr(import_module(module), name)(report)

    section.lazy_key = (module, name)  # type: ignore[attr-defined]
    return section


def register_section(section: Section, *, before: Section | None = None) -> None:
    """Add a section (once); at the end, or before an existing one."""
    key = getattr(section, "lazy_key", None)
    if section in SECTIONS or (key and any(getattr(s, "lazy_key", None) == key for s in SECTIONS)):
        return
    if before is not None and before in SECTIONS:
        SECTIONS.insert(SECTIONS.index(before), section)
    else:
        SECTIONS.append(section)


def render_html(report: dict[str, Any]) -> str:
    title = _e(f"mobilec report: {report['name']}")
    body = [s for s in (section(report) for section in SECTIONS) if s]
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">\n<title>{title}</title>'
            f"\n<style>{CSS}</style></head>\n<body>\n<h1>{title}</h1>\n" + "\n".join(body)
            + "\n</body></html>\n")


# --------------------------------------------------------------------------- charts

def _points(report: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """One point per distinct artifact file (targets may share one), plus the unplotted."""
    points: dict[tuple[Any, ...], dict[str, Any]] = {}
    unplotted = []
    for a in report["artifacts"]:
        if a["status"] == "skipped":
            continue
        size, acc = a.get("size_bytes"), a.get("accuracy")
        if not size or acc is None:
            unplotted.append(a["path"])
            continue
        key = (a["format"], a["quantization"], size, acc)
        p = points.setdefault(key, {"format": a["format"], "label": a["quantization"],
                                    "size": size, "accuracy": acc, "paths": [],
                                    "bad": a["status"] not in GOOD_STATUSES})
        p["paths"].append(a["path"])
    shipped = {(p["format"], p["label"]) for p in points.values()}
    for s in report.get("stages") or []:
        for c in (s.get("metrics") or {}).get("candidates") or []:
            fmt = c.get("format", "tflite")
            if c.get("size_bytes") and c.get("accuracy") is not None and (fmt, c["mode"]) not in shipped:
                points[("candidate", fmt, c["mode"])] = {
                    "format": fmt, "label": f"{c['mode']} (auto, not kept)", "size": c["size_bytes"],
                    "accuracy": c["accuracy"], "paths": [f"auto candidate {c['mode']}"],
                    "bad": False, "candidate": True}
    return list(points.values()), unplotted


def size_accuracy_svg(report: dict[str, Any], width: int = 760, height: int = 380
                      ) -> tuple[str | None, list[str]]:
    """Scatter of size (x, log scale) vs accuracy (y): artifacts, the original model and the
    budget floor. Returns (svg or None when nothing has both numbers, unplotted paths)."""
    points, unplotted = _points(report)
    model = report.get("model") or {}
    ref_acc, ref_size = model.get("accuracy"), model.get("size_bytes")
    if not points:
        return None, unplotted
    limit = ((report.get("budget") or {}).get("limits") or {}).get("max_accuracy_drop")
    floor = ref_acc - limit if ref_acc is not None and limit is not None else None
    plot = AccuracyPlot([p["size"] for p in points] + ([ref_size] if ref_size else []),
                        [p["accuracy"] for p in points]
                        + [v for v in (ref_acc, floor) if v is not None],
                        width=width, height=height)
    parts = plot.frame(x_title="size on disk", x_ticks=plot.cost_ticks(sizes=True), x_label=size_label,
                       aria="size versus accuracy")
    parts += plot.floor(floor)
    if ref_acc is not None:
        parts.append(plot.hline(ref_acc, "#555", "6 4"))
        if ref_size:
            x, y = plot.x(ref_size), plot.y(ref_acc)
            parts.append(f'<path d="M{x:.1f},{y - 7:.1f} L{x + 7:.1f},{y:.1f} L{x:.1f},{y + 7:.1f} '
                         f'L{x - 7:.1f},{y:.1f} Z" fill="#222"><title>original model: '
                         f'{_e(fmt_bytes(ref_size))}, {ref_acc * 100:.2f}%</title></path>'
                         f'<text x="{x + 9:.1f}" y="{y - 8:.1f}" font-size="11">original '
                         f'({_e(model.get("format") or "model")} file)</text>')
    placed: list[tuple[float, float]] = []
    for p in sorted(points, key=lambda p: p["size"]):
        x, y = plot.x(p["size"]), plot.y(p["accuracy"])
        color = FORMAT_COLORS.get(p["format"], OTHER_COLOR)
        ly = y - 8
        while any(abs(px - x) < 60 and abs(py - ly) < 12 for px, py in placed):
            ly -= 12  # labels of near-identical points stack instead of overlapping
        placed.append((x, ly))
        title = (f"{', '.join(p['paths'])}: {fmt_bytes(p['size'])}, "
                 f"{p['accuracy'] * 100:.2f}%")
        stroke = ' stroke="#b3261e" stroke-width="2"' if p["bad"] else ' stroke="#fff"'
        fill = color
        if p.get("candidate"):  # tried by quantize auto, not shipped: hollow
            fill, stroke = "#fff", f' stroke="{color}" stroke-width="2"'
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="6" fill="{fill}"{stroke}>'
                     f"<title>{_e(title)}</title></circle>"
                     f'<text x="{x + 8:.1f}" y="{ly:.1f}" font-size="11" fill="{color}">'
                     f"{_e(p['label'])}</text>")
    formats = sorted({p["format"] for p in points})
    parts += [plot.legend_dot(i, FORMAT_COLORS.get(f, OTHER_COLOR), f".{f}")
              for i, f in enumerate(formats)]
    lines = ([("#555", "6 4", "original accuracy")] if ref_acc is not None else []) + \
        ([(FLOOR_COLOR, "2 3", "budget floor")] if floor is not None else [])
    parts += [plot.legend_line(len(formats) + i, color, dash, text)
              for i, (color, dash, text) in enumerate(lines)]
    parts.append("</svg>")
    return "\n".join(parts), unplotted


def bar_chart_svg(items: list[tuple[str, float]], *, unit: str = "", width: int = 760,
                  bar_height: int = 18, color: str = "#1f77b4") -> str:
    """Horizontal bars (label, value), largest first as given; for sections like diagnose."""
    if not items:
        return ""
    label_w, value_w = 220, 80
    pw = width - label_w - value_w
    top = max((v for _, v in items), default=0.0) or 1.0
    height = len(items) * (bar_height + 6) + 10
    parts = [f'<svg width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img">']
    for i, (label, value) in enumerate(items):
        y = 5 + i * (bar_height + 6)
        w = max(1.0, pw * max(value, 0.0) / top)
        parts.append(f'<text x="{label_w - 6}" y="{y + bar_height - 5}" font-size="12" '
                     f'text-anchor="end">{_e(label)}</text><rect x="{label_w}" y="{y}" '
                     f'width="{w:.1f}" height="{bar_height}" fill="{color}"><title>{_e(label)}: '
                     f'{value:g}{_e(unit)}</title></rect><text x="{label_w + w + 6:.1f}" '
                     f'y="{y + bar_height - 5}" font-size="12">{value:.4g}{_e(unit)}</text>')
    parts.append("</svg>")
    return "\n".join(parts)
