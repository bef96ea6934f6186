"""Verification of one converted file against the model it was converted from.

Not a stage: the convert stage calls it for every route it tries. A float
conversion (float32, float16) must match the source (recipe `verify:`); a
quantized one must at least keep every output above the quality floor, so that a
route that wrecks the model is not shipped while another route would not.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mobilec.errors import first_line
from mobilec.formats.runtime import source_runner
from mobilec.sources.batch import length
from mobilec.state import Artifact, ModelState
from mobilec.util.metrics import below_floor, fidelity, passes

GATED_MODES = ("float32", "float16")
VERIFY_SAMPLES = 128
#: A quantized route below this SNR on any output (or output channel) is not the one to ship
#: when another route may do better; it is also the default floor of the evaluate stage.
QUANT_FLOOR_DB = 10.0


def verification_inputs(state: ModelState) -> Any:
    """The inputs every conversion is checked on (the same for every artifact and route)."""
    return state.sample_inputs(VERIFY_SAMPLES)


def reference_outputs(state: ModelState, x: Any) -> list[np.ndarray]:
    # verification_inputs gives the same rows every time: the source runs once per model
    key = ("converter_input_outputs", state.model_version, length(x))
    if key not in state.memo:
        state.memo[key] = source_runner(state)(x)
    return state.memo[key]


def verify(state: ModelState, fmt: Any, work: Artifact, x: Any) -> tuple[bool, str]:
    """Run the built file on `x` and hold it against the source; fills work.verification.

    Returns (acceptable, why not). A format that cannot run here (Core ML off macOS)
    is checked structurally instead and is acceptable when that check passes.
    """
    runner = fmt.runner(state, work)
    if runner is None:
        check = getattr(fmt, "structural_check", None)
        if check is not None:
            check(state, work)
        return work.status == "ok", work.error or ""
    ref = reference_outputs(state, x)
    try:
        got = runner(x)
    except Exception as exc:  # noqa: BLE001 - a model that cannot run failed verification
        return False, f"does not run on this host: {first_line(exc)}"
    fid = fidelity(ref, got, names=[t.name for t in state.outputs],
                   axis=state.recipe.verify.channel_axis)
    work.verification = {"against": "converter input", "samples": len(ref[0]) if ref else 0,
                         **fid}
    if work.quantization in GATED_MODES:
        return passes(fid, state.recipe.verify.min_top1_agreement, state.recipe.verify.min_snr_db)
    if fid.get("error"):
        return False, str(fid["error"])
    problem = below_floor(fid, QUANT_FLOOR_DB)
    return problem is None, problem or ""
