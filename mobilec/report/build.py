"""report.json / report.md / report.html, and the exit code they imply."""

from __future__ import annotations

import math
import platform
from pathlib import Path
from typing import Any

from mobilec._version import __version__
from mobilec.errors import EXIT_BUDGET, EXIT_OK, EXIT_STAGE
from mobilec.report.budget import check_budget
from mobilec.report.schema import validated
from mobilec.state import Artifact, ModelState


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
        "op_compat": a.op_compat, "input_layout": a.input_layout,
        "status": a.status, "error": a.error, "note": "; ".join(a.notes) or None,
    }
    for key in ("route", "verification", "delegate_manifest", "slower_than_float32", "kept_float",
                "quantizer", "coreml", "delegation", "inputs", "outputs", "io_names",
                "io_dtypes",
                "built_from"):
        if getattr(a, key) is not None:
            row[key] = getattr(a, key)
    row["routes_failed"] = a.routes_failed
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
        "output_dir": str(state.out_dir),
        "model": {
            "path": str(src.path) if src else str(recipe.model.path),
            "format": src.format if src else None,
            "sha256": src.sha256 if src else None,
            "params": src.params if src else None,
            "size_bytes": src.size_bytes if src else None,
            "accuracy": state.reference_accuracy,
            "label_output": state.label_output.as_dict() if state.label_output else None,
            "inputs": [t.as_dict() for t in state.inputs],
            "outputs": [t.as_dict() for t in state.outputs],
        },
        "data": _data_summary(state),
        "stages": [{"name": s.name, "seconds": round(s.seconds, 3), "status": s.status,
                    "metrics": s.metrics, **({"error": s.error} if s.error else {})}
                   for s in state.stages],
        "artifacts": artifacts,
        "budget": check_budget(artifacts, recipe.budget,
                               evaluated=any(s.name == "evaluate" for s in state.stages)),
        "notes": state.notes,
        "host": {"platform": platform.platform(), "python": platform.python_version(),
                 "machine": platform.machine()},
    }
    report["exit_code"] = exit_code(report, strict=bool(state.options.get("strict")))
    return validated(_clean(report))


def _data_summary(state: ModelState) -> dict[str, Any] | None:
    d = state.data
    if d is None or state.recipe.data is None:
        return None
    return {"source": state.recipe.data.source,
            "train_samples": len(d.train) if d.train is not None else 0,
            "eval_samples": len(d.eval) if d.eval is not None else 0,
            "calibration_samples": len(d.calibration) if d.calibration is not None else 0,
            "labels": d.has_labels}


def exit_code(report: dict[str, Any], strict: bool = False) -> int:
    """`strict`: an `unverified` artifact (no runtime here to measure the file) is a failure."""
    if any(s["status"] == "failed" for s in report["stages"]):
        return EXIT_STAGE
    bad = ("failed", "failed-verification", "unverified") if strict else \
        ("failed", "failed-verification")
    if any(a["status"] in bad for a in report["artifacts"]):
        return EXIT_STAGE
    if not report["budget"]["passed"]:
        return EXIT_BUDGET
    if any(a["status"] == "degraded" for a in report["artifacts"]):
        return EXIT_BUDGET  # the default quality floor, in place of a budget
    return EXIT_OK
