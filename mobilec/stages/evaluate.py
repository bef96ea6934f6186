"""evaluate: run each artifact on this host and measure accuracy, fidelity, latency.

Formats this host cannot execute (Core ML off macOS) report accuracy null with
the reason; no number is ever invented. One artifact that cannot be measured
fails alone, with its reason.

The quality floor: without a budget, a quantized artifact that loses more than
5 points of accuracy, or falls below 10 dB SNR on any channel of any output, is
`degraded` and the run exits 1, as a budget violation would. A recipe's budget replaces
the floor; `verify: {quantized_floor: off}` turns it off.

Fidelity and the floor hold an artifact against the model it was converted from (after
distill, factorize or prune, that model, not the original); accuracy_drop is always against
the original.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from mobilec.errors import MobilecError, first_line, stop_if_interrupted
from mobilec.formats import get_format
from mobilec.policy.modes import is_quantized
from mobilec.stages.verify import reference_outputs
from mobilec.state import Artifact, ModelState
from mobilec.util import progress
from mobilec.util.metrics import QUANT_FLOOR_DB, below_floor, fidelity

SLOWER_THAN_FLOAT = 1.10  # warn when >10% slower than the float32 sibling
MAX_DROP = 0.05  # the default floor: more than 5 points below the source is broken
MODEL_STAGES = ("distill", "factorize", "prune")  # stages that make a new model to convert
FLOOR_HINT = ("run `mobilec diagnose RECIPE` to see which layers lose it, and try "
              "`quantize: {keep_float: auto}` (or equalize: auto) — or set a budget: to "
              "gate on your own limits")


def run(state: ModelState, config: Any = None) -> dict[str, Any]:
    measured = 0
    base = converted_from(state)
    for art in state.artifacts:
        stop_if_interrupted()  # between artifacts: a signal a runtime swallowed stops here
        if art.status in ("ok", "unverified", "failed-verification") and art.path.exists():
            progress.step(f"measuring {art.path.parent.name}/{art.path.name}")
            try:
                evaluate_artifact(state, art, base)
            except MobilecError as exc:
                stop_if_interrupted(exc)
                _fail(art, exc.message)
            except Exception as exc:  # noqa: BLE001 - one artifact's runtime failure is its own
                stop_if_interrupted(exc)
                if state.options.get("verbose"):
                    raise
                first = first_line(exc)
                _fail(art, f"cannot be measured on this host ({type(exc).__name__}: "
                           f"{first[:300]})")
            measured += 1
    _slower_than_float(state)
    degraded = apply_floor(state, base)
    return {"evaluated": measured, "degraded": degraded}


@dataclass
class ConvertedFrom:
    """The model the artifacts were converted from, on the eval data: the source as loaded,
    or the model a training stage (distill, factorize, prune) made of it. Fidelity and the
    quality floor hold an artifact against it; accuracy_drop stays against the original."""
    outputs: list[Any] | None
    accuracy: float | None
    against: str | None  # None: the source model itself


def converted_from(state: ModelState) -> ConvertedFrom:
    if state.model_version == 0 or state.eval_x is None:
        return ConvertedFrom(state.reference, state.reference_accuracy, None)
    outs = reference_outputs(state, state.eval_x)  # memoized per model version
    made_by = [s.name for s in state.stages if s.name in MODEL_STAGES and s.status == "ok"]
    against = f"the model after {' + '.join(made_by)}" if made_by else "the model as converted"
    return ConvertedFrom(outs, state.label_accuracy(outs), against)


def _fail(art: Artifact, reason: str) -> None:
    art.status, art.error = "failed", reason


def evaluate_artifact(state: ModelState, art: Artifact, base: ConvertedFrom) -> None:
    fmt = get_format(art.format)
    runner = fmt.runner(state, art)
    if runner is None:
        art.metrics["accuracy"] = None
        reason = art.not_run_reason or f"{art.format} runtime is not available on {sys.platform}"
        art.notes.append(reason)
        return
    x = state.eval_x
    if x is not None:
        outs = runner(x)
        if base.outputs is not None:
            art.metrics["fidelity"] = fidelity(base.outputs, outs,
                                               names=[t.name for t in state.outputs],
                                               axis=state.recipe.verify.channel_axis)
            if base.against:
                art.metrics["fidelity"]["against"] = base.against
        if state.eval_y is not None:
            acc = state.label_accuracy(outs)
            art.metrics["accuracy"] = acc
            if acc is not None and state.reference_accuracy is not None:
                art.metrics["accuracy_drop"] = round(state.reference_accuracy - acc, 6)
    art.metrics["latency_ms"] = fmt.latency(state, art, state.sample_inputs(1))


def apply_floor(state: ModelState, base: ConvertedFrom) -> int:
    """Mark quantized artifacts below the default floor `degraded`; returns how many. The
    floor holds each one against the model it was converted from (`base`)."""
    if state.recipe.budget is not None or state.recipe.verify.quantized_floor == "off":
        return 0
    count = 0
    for art in state.artifacts:
        if art.status != "ok" or not is_quantized(art.quantization):
            continue
        why = floor_problem(art, base.accuracy)
        if why is not None:
            art.status = "degraded"
            art.error = f"{why}; {FLOOR_HINT}"
            count += 1
    return count


def floor_problem(art: Artifact, base_accuracy: float | None) -> str | None:
    acc = art.metrics.get("accuracy")
    drop = None if acc is None or base_accuracy is None else base_accuracy - acc
    if drop is not None and drop > MAX_DROP + 1e-9:
        return (f"quantization lost {drop * 100:.1f} points of accuracy (floor: "
                f"{MAX_DROP * 100:.0f})")
    fid = art.metrics.get("fidelity") or art.verification
    return below_floor(fid, QUANT_FLOOR_DB) if fid else None


def _slower_than_float(state: ModelState) -> None:
    base = {a.format: (a.metrics.get("latency_ms") or {}).get("median") for a in state.artifacts
            if a.quantization == "float32"}
    for a in state.artifacts:
        lat = (a.metrics.get("latency_ms") or {}).get("median")
        ref = base.get(a.format)
        if a.quantization != "float32" and lat and ref and lat > ref * SLOWER_THAN_FLOAT:
            a.notes.append(f"slower than float32 on this host: {lat:.3f} ms vs {ref:.3f} ms median "
                           f"({lat / ref:.2f}x); measure on the device before shipping")
            a.slower_than_float32 = round(lat / ref, 2)
