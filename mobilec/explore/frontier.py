"""explore's candidate rows: one per artifact a point built, and which of them are worth it.

A row's accuracy_drop is against the ORIGINAL float model (a pruned model's own
report measures drops against the pruned model it was converted from). The Pareto
frontiers are over every measured row, baselines included: size (gzip) vs accuracy
and latency vs accuracy; a row another row beats or equals on both, and beats on one,
is dominated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mobilec.explore.space import Point

TOLERANCE = 1e-9  # accuracies are ratios of counts
MEASURED = ("ok", "degraded")  # artifact statuses whose figures are real measurements


def candidate_rows(point: Point, overrides: dict[str, Any], formats: list[str],
                   report: dict[str, Any], run_dir: Path | None, ref: dict[str, Any],
                   budget: float, *, error: str | None, cached: bool, seconds: float,
                   baseline: bool) -> list[dict[str, Any]]:
    """Rows for one point's run; on an unpruned run also the float32 baselines (once)."""
    rows: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    arts = report.get("artifacts") or []
    for a in arts:
        key = (a["format"], a["quantization"])
        if key in seen or a["format"] not in formats:
            continue
        is_float = a["quantization"] == "float32"
        if is_float and not baseline:
            continue  # a transformed model's float32 is not the baseline
        seen.add(key)
        rows.append(_row(point, overrides, a, run_dir, ref, budget, cached, seconds, is_float))
    for fmt in formats:  # a format the run did not produce: say so, do not drop it silently
        if not any(r["format"] == fmt and r["status"] != "baseline" for r in rows):
            rows.append(_failed(point, overrides, fmt, error or _why_missing(arts, fmt),
                                cached, seconds))
    return rows


def _row(point: Point, overrides: dict[str, Any], a: dict[str, Any], run_dir: Path | None,
         ref: dict[str, Any], budget: float, cached: bool, seconds: float,
         is_float: bool) -> dict[str, Any]:
    acc = a.get("accuracy")
    drop = None if acc is None or ref["accuracy"] is None else round(ref["accuracy"] - acc, 6)
    measured = a.get("status") in MEASURED and acc is not None
    status = ("baseline" if is_float else "failed" if not measured
              else "ok" if drop is not None and drop <= budget + TOLERANCE else "over-budget")
    if is_float and a["format"] == "tflite" and ref.get("float32_tflite_bytes") is None:
        ref["float32_tflite_bytes"] = a.get("size_bytes")
    fmt, quant = a["format"], a["quantization"]
    label = "float32" if is_float else point.label
    return {"id": f"{label}/{fmt}", "overrides": {"stages": [{"convert": {"formats": [fmt]}}]}
            if is_float else _for_format(overrides, fmt),
            "sparsity": None if is_float else point.sparsity,
            "factorize": "off" if is_float else point.factorize, "format": fmt,
            "quantization": quant, "size_bytes": a.get("size_bytes"),
            "gzip_bytes": a.get("gzip_bytes"), "accuracy": acc, "accuracy_drop": drop,
            "latency_ms": (a.get("latency_ms") or {}).get("median"), "status": status,
            "path": str(Path(run_dir) / a["path"]) if run_dir and a.get("path") else None,
            "cached": cached, "seconds": round(seconds, 2),
            "error": a.get("error") if not measured else None}


def _failed(point: Point, overrides: dict[str, Any], fmt: str, error: str, cached: bool,
            seconds: float) -> dict[str, Any]:
    return {"id": f"{point.label}/{fmt}", "overrides": _for_format(overrides, fmt),
            "sparsity": point.sparsity, "factorize": point.factorize, "format": fmt,
            "quantization": point.mode, "size_bytes": None, "gzip_bytes": None, "accuracy": None,
            "accuracy_drop": None, "latency_ms": None, "status": "failed", "path": None,
            "cached": cached, "seconds": round(seconds, 2), "error": error}


def _why_missing(arts: list[dict[str, Any]], fmt: str) -> str:
    errs = [a.get("error") for a in arts if a["format"] == fmt and a.get("error")]
    return errs[0] if errs else f"the run produced no {fmt} artifact"


def _for_format(overrides: dict[str, Any], fmt: str) -> dict[str, Any]:
    """The point's overrides with convert narrowed to this row's format."""
    stages = [s if "convert" not in s else {"convert": {"formats": [fmt]}}
              for s in overrides["stages"]]
    return {"stages": stages}


def point_passes(rows: list[dict[str, Any]]) -> bool:
    return any(r["status"] == "ok" for r in rows)


def best_of(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The smallest (gzip) artifact within budget; ties go to the more accurate."""
    ok = [r for r in rows if r["status"] == "ok" and r["gzip_bytes"] is not None]
    return min(ok, key=lambda r: (r["gzip_bytes"], -(r["accuracy"] or 0.0)), default=None)


def mark_frontiers(rows: list[dict[str, Any]]) -> None:
    for key, flag in (("gzip_bytes", "pareto_size"), ("latency_ms", "pareto_latency")):
        pts = [r for r in rows if r.get(key) is not None and r.get("accuracy") is not None]
        for r in rows:
            r[flag] = r in pts and not any(_dominates(o, r, key) for o in pts if o is not r)


def _dominates(a: dict[str, Any], b: dict[str, Any], key: str) -> bool:
    cost_a, cost_b, acc_a, acc_b = a[key], b[key], a["accuracy"], b["accuracy"]
    return cost_a <= cost_b and acc_a >= acc_b - TOLERANCE and (
        cost_a < cost_b or acc_a > acc_b + TOLERANCE)
