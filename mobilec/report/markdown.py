"""report.md: the report as tables, plus per-target loading snippets."""

from __future__ import annotations

from typing import Any

from mobilec.report.table import (
    ARTIFACT_HEADERS,
    artifact_cells,
    fmt_bytes,
    label_source,
    pct,
    status_legend,
)


def render_markdown(report: dict[str, Any], sections: list[str] | None = None) -> str:
    m = report["model"]
    lines = [f"# mobilec report: {report['name']}", "",
             f"- model: `{m['path']}` ({m['format']}, {m['params']} params, "
             f"{fmt_bytes(m['size_bytes'])}), accuracy {pct(m['accuracy'])}",
             *([f"- {label_source(m)}"] if label_source(m) else []),
             f"- recipe: `{report['recipe']}` (sha256 {report['recipe_sha256'][:12]})",
             f"- mobilec {report['mobilec_version']} on {report['host']['platform']}", "",
             "## Stages", "", "| stage | status | seconds | metrics |", "|---|---|---|---|"]
    for s in report["stages"]:
        metrics = ", ".join(f"{k}={v}" for k, v in s["metrics"].items()
                            if not isinstance(v, (list, dict)))
        lines.append(f"| {s['name']} | {s['status']} | {s['seconds']:.2f} | {metrics} |")
    for s in report["stages"]:  # quantize auto: every candidate it tried
        for c in s["metrics"].get("candidates") or []:
            if c is s["metrics"]["candidates"][0]:
                lines += ["", "### quantize auto candidates", "",
                          "| mode | size | accuracy | drop | chosen |", "|---|---|---|---|---|"]
            drop = c.get("accuracy_drop")
            lines.append(f"| {c['mode']} | {fmt_bytes(c.get('size_bytes'))} | "
                         f"{pct(c.get('accuracy'))} | "
                         f"{'-' if drop is None else f'{drop * 100:+.2f} pt'} | "
                         f"{'yes' if c.get('chosen') else c.get('error') or 'no'} |")
    lines += ["", "## Artifacts", "", "| " + " | ".join(ARTIFACT_HEADERS) + " |",
              "|" + "---|" * len(ARTIFACT_HEADERS)]
    for a in report["artifacts"]:
        lines.append("| " + " | ".join(artifact_cells(a)) + " |")
    legend = status_legend(report["artifacts"])
    if legend:
        lines += ["", f"*{legend}*"]
    problems = [a for a in report["artifacts"] if a.get("error") or a.get("note")]
    if problems:
        lines += ["", "## Notes", ""]
        for a in problems:
            text = "; ".join(t for t in (a.get("error"), a.get("note")) if t)
            lines.append(f"- `{a['path']}` ({a['status']}): {text}")
    for note in report.get("notes", []):
        lines.append(f"- {note}")
    b = report["budget"]
    lines += ["", "## Budget", "", "passed" if b["passed"] else "**violated**:"]
    lines += [f"- {v}" for v in b["violations"]]
    if b.get("not_measured"):
        lines += ["", "not measured (neither passed nor failed):"]
        lines += [f"- {v}" for v in b["not_measured"]]
    for section in sections or []:
        lines += ["", section]
    return "\n".join(lines) + "\n"
