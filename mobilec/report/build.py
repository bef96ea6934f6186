"""report.json / report.md / report.html, and the exit code they imply."""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Any

from mobilec._version import __version__
from mobilec.errors import EXIT_BUDGET, EXIT_OK, EXIT_STAGE
from mobilec.report.budget import check_budget
from mobilec.state import Artifact, ModelState
from mobilec.util.fs import atomic_write_text

ARTIFACT_FIELDS = ("path", "format", "target", "role", "quantization", "precision", "delegate",
                   "fallback", "size_bytes", "gzip_bytes", "size_ratio", "accuracy", "accuracy_drop",
                   "fidelity", "latency_ms", "op_compat", "input_layout", "status", "error", "note")


def _clean(value: Any) -> Any:
    """JSON has no inf/nan: report them as null (the note explains)."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else round(value, 6)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def artifact_row(state: ModelState, a: Artifact) -> dict[str, Any]:
    try:
        rel = str(a.path.relative_to(state.out_dir))
    except ValueError:
        rel = str(a.path)
    m = a.metrics
    row: dict[str, Any] = {
        "path": rel, "format": a.format, "target": a.target, "role": a.role,
        "quantization": a.quantization, "precision": a.precision, "delegate": a.delegate,
        "fallback": a.fallback, "size_bytes": m.get("size_bytes"), "gzip_bytes": m.get("gzip_bytes"),
        "size_ratio": m.get("size_ratio"), "accuracy": m.get("accuracy"),
        "accuracy_drop": m.get("accuracy_drop"),
        "fidelity": m.get("fidelity"), "latency_ms": m.get("latency_ms"),
        "op_compat": a.extra.get("op_compat"), "input_layout": a.input_layout,
        "status": a.status, "error": a.error, "note": "; ".join(a.notes) or None,
    }
    for key in ("verification", "io_quant", "delegate_manifest", "slower_than_float32", "candidates",
                "kept_float"):
        if key in a.extra:
            row[key] = a.extra[key]
    if a.io_quant is not None:
        row["io_quant"] = a.io_quant
    return row


def build_report(state: ModelState) -> dict[str, Any]:
    recipe = state.recipe
    src = state.source
    artifacts = [artifact_row(state, a) for a in state.artifacts]
    report = {
        "mobilec_version": __version__,
        "recipe": recipe.source,
        "recipe_sha256": recipe.sha256,
        "name": recipe.name,
        "model": {
            "path": str(src.path) if src else str(recipe.model.path),
            "format": src.format if src else None,
            "sha256": src.sha256 if src else None,
            "params": src.params if src else None,
            "size_bytes": src.size_bytes if src else None,
            "accuracy": state.reference_accuracy,
            "inputs": [t.as_dict() for t in state.inputs],
            "outputs": [t.as_dict() for t in state.outputs],
        },
        "data": _data_summary(state),
        "stages": [{"name": s.name, "seconds": round(s.seconds, 3), "status": s.status,
                    "metrics": s.metrics, **({"error": s.error} if s.error else {})}
                   for s in state.stages],
        "artifacts": artifacts,
        "budget": check_budget(artifacts, recipe.budget),
        "notes": state.notes,
        "host": {"platform": platform.platform(), "python": platform.python_version(),
                 "machine": platform.machine()},
    }
    from mobilec.delegates.manifest import markdown_sections

    # report.md only: per-target loading snippets (report.json keeps the manifests' paths)
    report.setdefault("markdown_sections", []).extend(markdown_sections(state))
    report["exit_code"] = exit_code(report)
    return _clean(report)


def _data_summary(state: ModelState) -> dict[str, Any] | None:
    d = state.data
    if d is None or state.recipe.data is None:
        return None
    return {"source": state.recipe.data.source,
            "train_samples": len(d.train) if d.train is not None else 0,
            "eval_samples": len(d.eval) if d.eval is not None else 0,
            "calibration_samples": len(d.calibration) if d.calibration is not None else 0,
            "labels": d.has_labels}


def exit_code(report: dict[str, Any]) -> int:
    if any(s["status"] == "failed" for s in report["stages"]):
        return EXIT_STAGE
    if any(a["status"] in ("failed", "failed-verification") for a in report["artifacts"]):
        return EXIT_STAGE
    if not report["budget"]["passed"]:
        return EXIT_BUDGET
    return EXIT_OK


# ---------------------------------------------------------------------------- writers

def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.2f}%"


def artifact_cells(a: dict[str, Any]) -> list[str]:
    fid = a.get("fidelity") or {}
    lat = a.get("latency_ms") or {}
    drop = a.get("accuracy_drop")
    return [a["path"], a.get("target") or a["role"], a["quantization"], a.get("delegate") or "-",
            _fmt_bytes(a.get("size_bytes")), _fmt_bytes(a.get("gzip_bytes")),
            "-" if a.get("size_ratio") is None else f"{a['size_ratio']:.2f}x",
            _pct(a.get("accuracy")), "-" if drop is None else f"{drop * 100:+.2f} pt",
            "-" if fid.get("top1_agreement") is None else f"{fid['top1_agreement']:.3f}",
            "-" if fid.get("snr_db") is None else f"{fid['snr_db']:.1f}",
            "-" if lat.get("median") is None else f"{lat['median']:.3f}", a["status"]]


ARTIFACT_HEADERS = ["artifact", "target", "quant", "delegate", "size", "gzip", "smaller",
                    "accuracy", "drop", "top-1 agree", "SNR dB", "ms (median)", "status"]


def render_markdown(report: dict[str, Any]) -> str:
    m = report["model"]
    lines = [f"# mobilec report: {report['name']}", "",
             f"- model: `{m['path']}` ({m['format']}, {m['params']} params, "
             f"{_fmt_bytes(m['size_bytes'])}), accuracy {_pct(m['accuracy'])}",
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
            lines.append(f"| {c['mode']} | {_fmt_bytes(c.get('size_bytes'))} | "
                         f"{_pct(c.get('accuracy'))} | "
                         f"{'-' if drop is None else f'{drop * 100:+.2f} pt'} | "
                         f"{'yes' if c.get('chosen') else c.get('error') or 'no'} |")
    lines += ["", "## Artifacts", "", "| " + " | ".join(ARTIFACT_HEADERS) + " |",
              "|" + "---|" * len(ARTIFACT_HEADERS)]
    for a in report["artifacts"]:
        lines.append("| " + " | ".join(artifact_cells(a)) + " |")
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
    extra = report.get("markdown_sections") or []
    for section in extra:
        lines += ["", section]
    return "\n".join(lines) + "\n"


def write_reports(report: dict[str, Any], out_dir: Path, kinds: list[str]) -> list[Path]:
    written: list[Path] = []
    for kind in kinds:
        path = out_dir / f"report.{kind}"
        if kind == "json":
            body = {k: v for k, v in report.items() if k != "markdown_sections"}
            atomic_write_text(path, json.dumps(body, indent=2) + "\n")
        elif kind == "md":
            atomic_write_text(path, render_markdown(report))
        elif kind == "html":
            from mobilec.report.html import render_html

            atomic_write_text(path, render_html(report))
        written.append(path)
    return written
