"""Verification of one converted file against the model it was converted from.

Not a stage: the convert stage calls it for every route it tries. A float
conversion (float32, float16) must match the source (recipe `verify:`); a
quantized one must at least keep every output above the quality floor, so that a
route that wrecks the model is not shipped while another route would not.
"""

from __future__ import annotations

from typing import Any

from mobilec.errors import first_line
from mobilec.formats.intermediate import reference_outputs
from mobilec.state import Artifact, ModelState
from mobilec.util.metrics import QUANT_FLOOR_DB, below_floor, fidelity, passes

GATED_MODES = ("float32", "float16")


def verify(state: ModelState, fmt: Any, work: Artifact, x: Any) -> tuple[bool, str]:
    """Run the built file on `x` and hold it against the source; fills work.verification.

    Returns (acceptable, why not). A format that cannot run here (Core ML off macOS)
    is checked structurally instead; when that passes it is acceptable as `unverified`
    (never `ok`: the file's numbers were not measured), provided whatever intermediate it
    was built from verified (a route built from one that did not raised before this).
    """
    runner = fmt.runner(state, work)
    if runner is None:
        check = getattr(fmt, "structural_check", None)
        if check is not None:
            check(state, work)
        if work.status != "ok":
            return False, work.error or ""
        work.status = "unverified"  # what it means: report.schema.UNVERIFIED_MEANING
        return True, ""
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
