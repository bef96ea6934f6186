"""quantize mode auto: the smallest .tflite that keeps accuracy within the budget.

Candidates are tried smallest first (int4, int8, int16x8, float16, then float32);
each is built with the TFLite format's own builder and run with its own runner on
the eval data, exactly as convert/evaluate will, so the choice and the report's
figures agree. The first candidate within `budget.max_accuracy_drop` wins.
"""

from __future__ import annotations

from typing import Any

from mobilec.errors import MobilecError, UnsupportedError
from mobilec.formats import get_format
from mobilec.policy.modes import SEARCHABLE
from mobilec.state import Artifact, ModelState
from mobilec.util.fs import size_of

DEFAULT_CANDIDATES = ("int4", "int8", "int16x8", "float16")
TOLERANCE = 1e-9  # accuracy is a ratio of counts: compare without float noise


def search(state: ModelState, candidates: list[str] | None) -> tuple[str, list[dict[str, Any]]]:
    """(chosen mode, every candidate tried with its size and accuracy)."""
    budget = state.recipe.budget
    if budget is None or budget.max_accuracy_drop is None:
        raise UnsupportedError("quantize mode auto needs budget.max_accuracy_drop",
                               where=state.recipe.source, hint="e.g. budget: {max_accuracy_drop: 0.01}")
    if state.eval_y is None or state.reference_accuracy is None:
        raise UnsupportedError("quantize mode auto measures accuracy and needs labelled eval data "
                               "(x and y)", where=state.recipe.source,
                               hint="add data.eval with labels, or pick a mode explicitly")
    modes = list(candidates or DEFAULT_CANDIDATES)
    bad = [m for m in modes if m not in SEARCHABLE and m != "float32"]
    if bad:
        raise UnsupportedError(f"quantize auto cannot try {', '.join(bad)} (candidates: "
                               f"{', '.join(SEARCHABLE)})", where=state.recipe.source)
    if "float32" not in modes:
        modes.append("float32")
    tried: list[dict[str, Any]] = []
    chosen = None
    for mode in modes:
        row = try_candidate(state, mode)
        tried.append(row)
        drop = row.get("accuracy_drop")
        if drop is not None and drop <= budget.max_accuracy_drop + TOLERANCE:
            chosen = mode
            row["chosen"] = True
            break
    if chosen is None:
        # Even float32 lost accuracy (a converter problem): ship it, the budget check says so.
        chosen = "float32"
        state.note("quantize auto: no candidate kept accuracy within budget.max_accuracy_drop; "
                   "float32 was kept")
    return chosen, tried


def try_candidate(state: ModelState, mode: str) -> dict[str, Any]:
    fmt = get_format("tflite")
    dest = state.work_dir / "auto" / f"{state.recipe.name}-{mode}.tflite"
    dest.parent.mkdir(parents=True, exist_ok=True)
    art = Artifact(path=dest, format="tflite", quantization=mode, role="candidate")
    row: dict[str, Any] = {"mode": mode, "format": "tflite", "size_bytes": None, "accuracy": None,
                           "accuracy_drop": None, "chosen": False}
    try:
        fmt.build(state, art, dest)
        row["size_bytes"] = size_of(dest)
        outs = fmt.runner(state, art)(state.eval_x)
    except MobilecError as exc:
        row["error"] = exc.message
        return row
    except Exception as exc:  # noqa: BLE001 - one failing candidate must not end the search
        row["error"] = f"{type(exc).__name__}: {str(exc).strip()[:300]}"
        return row
    acc = state.label_accuracy(outs)
    row["accuracy"] = acc
    if acc is not None:
        row["accuracy_drop"] = round(state.reference_accuracy - acc, 6)
    return row
