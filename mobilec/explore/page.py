"""explore.html: one self-contained page (inline CSS and SVG, no script, no network) with
the two Pareto frontiers (gzip size vs accuracy, latency vs accuracy) and the table.

Frontier points are coloured by format and joined by a step line; dominated points are
grey; the best artifact within budget is ringed; the budget floor is a dashed red line.
"""

from __future__ import annotations

import html
from typing import Any

from mobilec.report.html import CSS, FORMAT_COLORS, OTHER_COLOR
from mobilec.report.plot import AccuracyPlot, size_label
from mobilec.report.table import fmt_bytes

GREY = "#c4c4c4"


def _e(value: Any) -> str:
    return html.escape(str(value))


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.2f}%"


def scatter_svg(doc: dict[str, Any], key: str, flag: str, x_label: str) -> str | None:
    """Cost (x, log scale) vs accuracy (y) of every measured candidate."""
    pts = [c for c in doc["candidates"] if c.get(key) and c.get("accuracy") is not None]
    if not pts:
        return None
    ref = doc.get("reference_accuracy")
    drop = (doc.get("budget") or {}).get("max_accuracy_drop")
    floor = ref - drop if ref is not None and drop is not None else None
    plot = AccuracyPlot([c[key] for c in pts],
                        [c["accuracy"] for c in pts] + [v for v in (ref, floor) if v is not None])
    sx, sy = plot.x, plot.y
    by_size = key == "gzip_bytes"
    out = plot.frame(x_title=x_label, x_ticks=plot.cost_ticks(sizes=by_size),
                     x_label=size_label if by_size else (lambda t: f"{t:g} ms"),
                     aria=f"{x_label} versus accuracy")
    out += plot.floor(floor)
    front = sorted((c for c in pts if c.get(flag)), key=lambda c: c[key])
    if len(front) > 1:  # the frontier as a staircase: accuracy you can buy at each cost
        path = f"M{sx(front[0][key]):.1f},{sy(front[0]['accuracy']):.1f}"
        for c in front[1:]:
            path += f" H{sx(c[key]):.1f} V{sy(c['accuracy']):.1f}"
        out.append(f'<path d="{path}" fill="none" stroke="#555" stroke-width="1.2"/>')
    placed: list[tuple[float, float]] = []
    for c in sorted(pts, key=lambda c: (bool(c.get(flag)), c[key])):  # frontier drawn on top
        x, y = sx(c[key]), sy(c["accuracy"])
        on = bool(c.get(flag))
        color = FORMAT_COLORS.get(c["format"], OTHER_COLOR) if on else GREY
        ring = ' stroke="#222" stroke-width="2.5"' if c["id"] == doc.get("best") else \
            ' stroke="#fff"'
        shape = (f'<rect x="{x - 6:.1f}" y="{y - 6:.1f}" width="12" height="12" fill="{color}"'
                 f'{ring}>' if c["status"] == "baseline" else
                 f'<circle cx="{x:.1f}" cy="{y:.1f}" r="6" fill="{color}"{ring}>')
        cost = fmt_bytes(c[key]) if key == "gzip_bytes" else f"{c[key]:.3g} ms"
        title = f"{c['id']}: {cost}, {_pct(c['accuracy'])} ({c['status']})"
        out.append(f"{shape}<title>{_e(title)}</title></{shape[1:shape.index(' ')]}>")
        if on:
            ly = y - 8
            while any(abs(px - x) < 70 and abs(py - ly) < 12 for px, py in placed):
                ly -= 12
            placed.append((x, ly))
            out.append(f'<text x="{x + 8:.1f}" y="{ly:.1f}" font-size="11" fill="{color}">'
                       f'{_e(c["id"])}</text>')
    formats = sorted({c["format"] for c in pts if c.get(flag)})
    legend = [(FORMAT_COLORS.get(f, OTHER_COLOR), f".{f} (frontier)") for f in formats]
    legend += [(GREY, "dominated"), ("#fff", "float32 (square)")]
    out += [plot.legend_dot(i, color, text, ' stroke="#888"')
            for i, (color, text) in enumerate(legend)]
    out.append("</svg>")
    return "\n".join(out)


def _table(doc: dict[str, Any]) -> str:
    head = ["candidate", "format", "quantization", "size", "gzip", "accuracy", "drop",
            "latency ms", "status", "frontier"]
    rows = []
    for c in sorted(doc["candidates"], key=lambda c: (c["gzip_bytes"] is None,
                                                      c["gzip_bytes"] or 0)):
        cls = {"ok": "ok", "failed": "bad", "over-budget": "warn"}.get(c["status"], "")
        front = ", ".join(k for k, f in (("size", "pareto_size"), ("latency", "pareto_latency"))
                          if c.get(f))
        drop = "-" if c["accuracy_drop"] is None else f"{c['accuracy_drop'] * 100:+.2f} pt"
        cells = [c["id"] + (" (best)" if c["id"] == doc.get("best") else ""), c["format"],
                 c["quantization"], fmt_bytes(c["size_bytes"]), fmt_bytes(c["gzip_bytes"]),
                 _pct(c["accuracy"]), drop,
                 "-" if c["latency_ms"] is None else f"{c['latency_ms']:.3g}",
                 c["status"] + (f": {c['error']}" if c.get("error") else ""), front or "-"]
        rows.append(f'<tr class="{cls}">' + "".join(f"<td>{_e(x)}</td>" for x in cells) + "</tr>")
    return ("<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"
            + "".join(rows) + "</table>")


def explore_html(doc: dict[str, Any]) -> str:
    title = f"mobilec explore: {doc.get('name')}"
    best = next((c for c in doc["candidates"] if c["id"] == doc.get("best")), None)
    base = doc.get("float32_tflite_bytes")
    if best:
        times = (f", {base / best['gzip_bytes']:.1f}x smaller than the float32 .tflite "
                 f"({fmt_bytes(base)})" if base and best["gzip_bytes"] else "")
        verdict = (f'<p><span class="badge ok">best</span> <code>{_e(best["id"])}</code>: '
                   f"{_e(fmt_bytes(best['gzip_bytes']))} gzip{_e(times)}, accuracy "
                   f"{_e(_pct(best['accuracy']))}; recipe <code>{_e(doc.get('best_recipe'))}</code>"
                   "</p>")
    else:
        verdict = '<p><span class="badge bad">no candidate within budget</span></p>'
    stopped = doc["stopped"]
    built = sum(1 for c in doc["candidates"] if c["status"] != "baseline")
    meta = (f'<p class="meta">budget: max accuracy drop '
            f'{_e((doc.get("budget") or {}).get("max_accuracy_drop"))}; original accuracy '
            f"{_e(_pct(doc.get('reference_accuracy')))}; {built} candidates in "
            f"{doc['seconds']:.0f} s{' (all from the cache)' if not doc['cache']['misses'] else ''}"
            f"; stopped: {_e(stopped['reason'])} ({_e(stopped['detail'])})"
            f"; cache hits {doc['cache']['hits']}, misses {doc['cache']['misses']}</p>")
    charts = []
    for key, flag, label, heading in (("gzip_bytes", "pareto_size", "gzip size", "Size vs accuracy"),
                                      ("latency_ms", "pareto_latency", "host latency (median)",
                                       "Latency vs accuracy")):
        svg = scatter_svg(doc, key, flag, label)
        if svg:
            charts.append(f"<h2>{_e(heading)}</h2>{svg}")
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f"<style>{CSS}</style></head><body><h1>{_e(title)}</h1>{verdict}{meta}"
            + "".join(charts) + f"<h2>Candidates</h2>{_table(doc)}</body></html>\n")
