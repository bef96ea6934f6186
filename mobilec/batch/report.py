"""zoo-report.{json,md,html}: one row per model and artifact, totals, failures, a chart.

The HTML is self-contained (inline CSS and SVG, no scripts, no network), like report.html.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from mobilec._version import __version__
from mobilec.errors import EXIT_BUDGET, EXIT_OK, EXIT_STAGE
from mobilec.report.html import CSS
from mobilec.report.html import size_accuracy_svg as report_chart
from mobilec.report.plot import AccuracyPlot, size_label
from mobilec.report.table import fmt_bytes, pct
from mobilec.util.fs import atomic_write_text

STATUSES = ("ok", "budget", "failed", "cached")
HEADERS = ["model", "status", "artifact", "target", "quant", "size", "smaller", "accuracy", "drop",
           "ms (median)", "time"]
LABELLED_POINTS = 40  # more labelled points than this are unreadable (and slow to place)
PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf"]


def outcome(entry: dict[str, Any]) -> str:
    """What a model's result means for the exit code: cached results keep their original one."""
    if entry["status"] != "cached":
        return entry["status"]
    code = (entry.get("report") or {}).get("exit_code", EXIT_OK)
    return {EXIT_OK: "ok", EXIT_BUDGET: "budget"}.get(code, "failed")


def build_zoo_report(models: list[dict[str, Any]], *, zoo: str, out_dir: Path, executor: str,
                     workers: int | None, wall_s: float) -> dict[str, Any]:
    counts = {s: sum(1 for m in models if m["status"] == s) for s in STATUSES}
    outcomes = [outcome(m) for m in models]
    code = EXIT_STAGE if "failed" in outcomes else EXIT_BUDGET if "budget" in outcomes else EXIT_OK
    artifacts = [a for m in models for a in (m.get("report") or {}).get("artifacts", [])]
    totals = {
        "models": len(models), **counts,
        "artifacts": sum(1 for a in artifacts if a.get("role", "artifact") == "artifact"),
        "artifacts_ok": sum(1 for a in artifacts
                            if a.get("role", "artifact") == "artifact" and a.get("status") == "ok"),
        # structure checked, numerics on the graph they were built from: not counted as ok
        "artifacts_unverified": sum(1 for a in artifacts if a.get("role", "artifact") ==
                                    "artifact" and a.get("status") == "unverified"),
        "wall_seconds": round(wall_s, 3),
        "model_seconds": round(sum(m.get("seconds") or 0.0 for m in models if m["status"] != "cached"),
                               3),
        "exit_code": code,
    }
    return {"mobilec_version": __version__, "zoo": zoo, "out_dir": str(out_dir),
            "executor": executor, "workers": workers, "models": models, "totals": totals}


ZOO_REPORTS = ("zoo-report.json", "zoo-report.md", "zoo-report.html")


def write_zoo_reports(zoo: dict[str, Any], out_dir: Path) -> list[Path]:
    paths = [out_dir / name for name in ZOO_REPORTS]
    atomic_write_text(paths[0], json.dumps(zoo, indent=2) + "\n")
    atomic_write_text(paths[1], render_markdown(zoo))
    atomic_write_text(paths[2], render_html(zoo))
    return paths


# ----------------------------------------------------------------------------- rows

def table_rows(zoo: dict[str, Any]) -> list[list[str]]:
    """One row per artifact of each model; a model without artifacts gets one row."""
    rows: list[list[str]] = []
    for m in zoo["models"]:
        took = "-" if m.get("seconds") is None else f"{m['seconds']:.1f}s"
        arts = (m.get("report") or {}).get("artifacts", [])
        if not arts:
            rows.append([m["name"], m["status"], "-", "-", "-", "-", "-", "-", "-", "-", took])
        for a in arts:
            drop = a.get("accuracy_drop")
            lat = (a.get("latency_ms") or {}).get("median")
            status = m["status"] if a.get("status") == "ok" else f"{m['status']} ({a.get('status')})"
            rows.append([m["name"], status, a["path"], a.get("target") or a.get("role", "-"),
                         a.get("quantization", "-"), fmt_bytes(a.get("size_bytes")),
                         "-" if a.get("size_ratio") is None else f"{a['size_ratio']:.2f}x",
                         pct(a.get("accuracy")), "-" if drop is None else f"{drop * 100:+.2f} pt",
                         "-" if lat is None else f"{lat:.3f}", took])
    return rows


def _summary(zoo: dict[str, Any]) -> str:
    t = zoo["totals"]
    parts = [f"{t[s]} {label}" for s, label in (("ok", "ok"), ("budget", "over budget"),
                                               ("failed", "failed"), ("cached", "cached")) if t[s]]
    unverified = t.get("artifacts_unverified") or 0
    return (f"{t['models']} models: {', '.join(parts) or 'none'}; {t['artifacts_ok']}/"
            f"{t['artifacts']} artifacts ok"
            + (f", {unverified} unverified (not run here)" if unverified else "")
            + f"; exit code {t['exit_code']}")


def _problems(zoo: dict[str, Any]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    failures = [(m["name"], m.get("error") or "failed") for m in zoo["models"] if outcome(m) == "failed"]
    budget = [(m["name"], v) for m in zoo["models"]
              for v in ((m.get("report") or {}).get("budget") or {}).get("violations", [])]
    return failures, budget


def render_markdown(zoo: dict[str, Any]) -> str:
    t = zoo["totals"]
    workers = f" ({zoo['workers']} workers)" if zoo.get("workers") else ""
    lines = [f"# mobilec zoo report: {zoo['zoo']}", "", f"- {_summary(zoo)}",
             f"- executor {zoo['executor']}{workers}; wall time {t['wall_seconds']:.1f} s, "
             f"model time {t['model_seconds']:.1f} s; mobilec {zoo['mobilec_version']}", "",
             "## Models and artifacts", "", "| " + " | ".join(HEADERS) + " |",
             "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in table_rows(zoo)]
    failures, budget = _problems(zoo)
    if failures:
        lines += ["", "## Failures", ""] + [f"- `{n}`: {e}" for n, e in failures]
    if budget:
        lines += ["", "## Budget violations", ""] + [f"- `{n}`: {v}" for n, v in budget]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- html

def chart_points(zoo: dict[str, Any]) -> list[dict[str, Any]]:
    points = []
    for m in zoo["models"]:
        for a in (m.get("report") or {}).get("artifacts", []):
            if a.get("status") == "ok" and a.get("size_bytes") and a.get("accuracy") is not None:
                points.append({"model": m["name"], "artifact": a["path"],
                               "size": a["size_bytes"], "accuracy": a["accuracy"]})
    return points


def zoo_chart(zoo: dict[str, Any]) -> str:
    """report.html's size-vs-accuracy chart over every model's artifacts (labelled
    "model: quantization"); past LABELLED_POINTS, a compact scatter colored by model."""
    points = chart_points(zoo)
    if not points:
        return "<p>No artifact has both a size and an accuracy to chart.</p>"
    if len(points) <= LABELLED_POINTS:
        merged = {"model": {}, "budget": None, "stages": [], "artifacts": [
            {**a, "path": f"{m['name']}/{a['path']}", "quantization": f"{m['name']}: "
             f"{a.get('quantization')}"}
            for m in zoo["models"] for a in (m.get("report") or {}).get("artifacts", [])
            if a.get("status") == "ok"]}
        svg, _ = report_chart(merged)
        if svg:
            return svg
    return compact_scatter_svg(points)


def compact_scatter_svg(points: list[dict[str, Any]], width: int = 760, height: int = 380) -> str:
    """Scatter of size (log x) vs accuracy (y), one color per model, hover titles, no labels."""
    plot = AccuracyPlot([p["size"] for p in points], [p["accuracy"] for p in points],
                        width=width, height=height)
    models = list(dict.fromkeys(p["model"] for p in points))
    color = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(models)}
    parts = plot.frame(x_title="size on disk", x_ticks=plot.cost_ticks(sizes=True), x_label=size_label,
                       aria="size versus accuracy")
    for p in points:
        tip = html.escape(f"{p['model']} / {p['artifact']}: {fmt_bytes(p['size'])}, "
                          f"{p['accuracy'] * 100:.2f}%")
        parts.append(f'<circle cx="{plot.x(p["size"]):.1f}" cy="{plot.y(p["accuracy"]):.1f}" '
                     f'r="5" fill="{color[p["model"]]}" fill-opacity="0.8"><title>{tip}</title>'
                     "</circle>")
    parts += [plot.legend_dot(i, color[m], m[:22]) for i, m in enumerate(models[:20])]
    parts.append("</svg>")
    return "".join(parts)


def render_html(zoo: dict[str, Any]) -> str:
    title = html.escape(f"mobilec zoo report: {zoo['zoo']}")
    head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADERS)
    body = []
    for row in table_rows(zoo):
        status = row[1].split(" ")[0]
        body.append(f'<tr class="{html.escape(status)}">'
                    + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>")
    failures, budget = _problems(zoo)
    sections = ""
    if failures:
        sections += "<h2>Failures</h2><ul>" + "".join(
            f"<li><code>{html.escape(n)}</code>: {html.escape(e)}</li>" for n, e in failures) + "</ul>"
    if budget:
        sections += "<h2>Budget violations</h2><ul>" + "".join(
            f"<li><code>{html.escape(n)}</code>: {html.escape(v)}</li>" for n, v in budget) + "</ul>"

    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>{CSS}tr.failed td{{background:#fde8e8}}tr.budget td{{background:#fff6dd}}
tr.cached td{{color:#456}}</style></head>
<body><h1>{title}</h1><p class="meta">{html.escape(_summary(zoo))}</p>
<h2>Size vs accuracy</h2>{zoo_chart(zoo)}
<h2>Models and artifacts</h2><table><tr>{head}</tr>{"".join(body)}</table>{sections}
</body></html>
"""
