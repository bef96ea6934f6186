"""The CI gate: budget violations make the run exit 1 (artifacts are still written)."""

from __future__ import annotations

from typing import Any

from mobilec.recipe.schema import BudgetConfig
from mobilec.report.schema import GOOD_STATUSES


def check_budget(artifacts: list[dict[str, Any]], budget: BudgetConfig | None,
                 evaluated: bool = True) -> dict[str, Any]:
    """Violations of the measured rules (exit 1), and the rules that could not be measured.

    Only the artifacts the recipe asked for (role `artifact`) are judged, never the float32
    baselines. A rule without a number (--no-eval, no labelled eval data, a runtime this host
    lacks) is listed in `not_measured`: it neither passes nor fails the run.
    """
    if budget is None:
        return {"passed": True, "violations": [], "limits": {}, "not_measured": []}
    limits = budget.model_dump(exclude_none=True)
    violations: list[str] = []
    not_measured: list[str] = []
    for a in artifacts:
        if a["role"] != "artifact" or a["status"] not in GOOD_STATUSES:
            continue
        name = a["path"]
        # Why there is no number: the run skipped evaluation, or the artifact says why.
        why = "--no-eval" if not evaluated else (a.get("note") or "no labelled eval data")
        if budget.max_accuracy_drop is not None and a.get("accuracy_drop") is None:
            not_measured.append(f"{name}: max_accuracy_drop not measured ({why})")
        if budget.max_latency_ms is not None and not (a.get("latency_ms") or {}).get("median"):
            not_measured.append(f"{name}: max_latency_ms not measured ({why})")
        drop = a.get("accuracy_drop")
        if budget.max_accuracy_drop is not None and drop is not None and drop > budget.max_accuracy_drop + 1e-9:
            violations.append(f"{name}: accuracy drop {drop * 100:.2f} points > "
                              f"max_accuracy_drop {budget.max_accuracy_drop * 100:.2f} points")
        size = a.get("size_bytes")
        if budget.max_size_bytes is not None and size is not None and size > budget.max_size_bytes:
            violations.append(f"{name}: size {size} bytes > max_size_bytes {budget.max_size_bytes}")
        lat = (a.get("latency_ms") or {}).get("median")
        if budget.max_latency_ms is not None and lat is not None and lat > budget.max_latency_ms:
            violations.append(f"{name}: median latency {lat:.3f} ms > max_latency_ms "
                              f"{budget.max_latency_ms}")
    return {"passed": not violations, "violations": violations, "limits": limits,
            "not_measured": not_measured}
