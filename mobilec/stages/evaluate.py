"""evaluate: run each artifact on this host and measure accuracy, fidelity, latency.

Formats this host cannot execute (Core ML off macOS) report accuracy null with
the reason; no number is ever invented.
"""

from __future__ import annotations

import sys
from typing import Any

from mobilec.errors import stop_if_interrupted
from mobilec.formats import get_format
from mobilec.state import Artifact, ModelState
from mobilec.util.metrics import accuracy, fidelity

SLOWER_THAN_FLOAT = 1.10  # warn when >10% slower than the float32 sibling


def run(state: ModelState, config: Any = None) -> dict[str, Any]:
    measured = 0
    for art in state.artifacts:
        stop_if_interrupted()  # between artifacts: a signal a runtime swallowed stops here
        if art.status in ("ok", "failed-verification") and art.path.exists():
            evaluate_artifact(state, art)
            measured += 1
    _size_ratios(state)
    _slower_than_float(state)
    return {"evaluated": measured}


def evaluate_artifact(state: ModelState, art: Artifact) -> None:
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
        fid = fidelity(state.reference, outs) if state.reference is not None else None
        art.metrics["fidelity"] = fid
        if state.eval_y is not None:
            acc = accuracy(outs[0], state.eval_y)
            art.metrics["accuracy"] = acc
            if acc is not None and state.reference_accuracy is not None:
                art.metrics["accuracy_drop"] = round(state.reference_accuracy - acc, 6)
        sample = x[:1]
    else:
        import numpy as np

        sample = np.zeros([1] + [d or 1 for d in state.inputs[0].shape[1:]], dtype="float32")
    art.metrics["latency_ms"] = fmt.latency(state, art, sample)


def _size_ratios(state: ModelState) -> None:
    base = {a.format: a.metrics.get("size_bytes") for a in state.artifacts
            if a.quantization == "float32" and a.metrics.get("size_bytes")}
    for a in state.artifacts:
        size = a.metrics.get("size_bytes")
        if size and base.get(a.format):
            a.metrics["size_ratio"] = round(base[a.format] / size, 3)


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
