"""Write report.json, report.md and report.html into the output dir."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mobilec.report.html import render_html
from mobilec.report.markdown import render_markdown
from mobilec.util.fs import atomic_write_text


def write_reports(report: dict[str, Any], out_dir: Path, kinds: list[str],
                  md_sections: list[str] | None = None) -> list[Path]:
    """report.json / .md / .html, each written atomically. `md_sections`: per-target loading
    snippets, which only report.md carries (report.json keeps the manifests' paths)."""
    written: list[Path] = []
    for kind in kinds:
        path = out_dir / f"report.{kind}"
        if kind == "json":
            atomic_write_text(path, json.dumps(report, indent=2) + "\n")
        elif kind == "md":
            atomic_write_text(path, render_markdown(report, md_sections))
        elif kind == "html":
            atomic_write_text(path, render_html(report))
        written.append(path)
    return written
