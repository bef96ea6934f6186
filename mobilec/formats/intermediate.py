"""The graphs artifacts are built from, verified against the source before anything is built
from them.

A converter often does not start from the source model but from a graph another tool made
of it: onnx2tf's TensorFlow SavedModel (TFLite and Core ML of an ONNX or PyTorch source), the
bridge `.onnx` a PyTorch source is exported to for onnx2tf, the decomposed ExportedProgram
coremltools is handed. Each is run here on the verification inputs and held against the
source once per model version (memoized: every artifact built from it reuses the verdict).

A graph that fails raises ConversionError with the figures, so every route built from it
fails with that reason and the next route is tried. A graph that passes leaves its figures
on every artifact built from it (`verification.built_from`): that is what an artifact no
runtime here can run (Core ML off macOS) stands on when it is reported `unverified`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mobilec.errors import ConversionError, first_line
from mobilec.formats.runtime import loaded_saved_model, ort_session_runner, source_runner
from mobilec.sources.batch import as_list, batched, length
from mobilec.sources.onnx2tf_bridge import ensure_graph, tf_input_layout
from mobilec.sources.onnx2tf_saved import signature_name, unique_names
from mobilec.state import Artifact, ModelState
from mobilec.util.metrics import QUANT_FLOOR_DB, below_floor, fidelity, passes
from mobilec.util.tfenv import import_tf

VERIFY_SAMPLES = 128
MEMO = "intermediate"


def verification_inputs(state: ModelState) -> Any:
    """The inputs every conversion and intermediate graph is checked on (always the same)."""
    return state.sample_inputs(VERIFY_SAMPLES)


def reference_outputs(state: ModelState, x: Any) -> list[np.ndarray]:
    # verification_inputs gives the same rows every time: the source runs once per model
    key = ("converter_input_outputs", state.model_version, length(x))
    if key not in state.memo:
        state.memo[key] = source_runner(state)(x)
    return state.memo[key]


def require_verified(state: ModelState, graph: str, ident: Any,
                     runner: Callable[[], Callable[[Any], list[np.ndarray]]],
                     quantized: bool = False) -> dict[str, Any]:
    """Verify the intermediate `graph` (a human name, e.g. "onnx2tf's TensorFlow graph";
    `ident` tells two graphs of one kind apart) against the source, once per model version.

    `runner()` makes a callable batch -> outputs in the source's output order (recipe data
    layout in). Returns the figures; raises ConversionError when the graph differs or fails.
    `quantized`: the graph is itself quantized (a QAT model), held to the quality floor
    quantized artifacts are held to, not to the float gates.
    """
    key = (MEMO, graph, str(ident), state.model_version)
    if key not in state.memo:
        state.memo[key] = _check(state, graph, runner, quantized)
    verdict = state.memo[key]
    if isinstance(verdict, ConversionError):
        raise verdict
    return verdict


def record(artifact: Artifact, figures: dict[str, Any]) -> None:
    """Note on `artifact` that it was built from this verified graph (once per graph)."""
    rows = artifact.built_from if artifact.built_from is not None else []
    if all(r.get("graph") != figures.get("graph") for r in rows):
        rows.append(dict(figures))
    artifact.built_from = rows


def _check(state: ModelState, graph: str, runner: Callable[[], Any], quantized: bool) -> Any:
    cfg = state.recipe.verify
    x = verification_inputs(state)
    ref = reference_outputs(state, x)
    try:
        got = runner()(x)
    except ConversionError as exc:
        return ConversionError(f"{graph} does not run: {exc.message}")
    except Exception as exc:  # noqa: BLE001 - a third-party graph fails in many ways
        return ConversionError(f"{graph} does not run: {type(exc).__name__}: "
                               f"{first_line(exc, 300)}")
    fid = fidelity(ref, got, names=[t.name for t in state.outputs], axis=cfg.channel_axis)
    if quantized:
        why = str(fid.get("error") or below_floor(fid, QUANT_FLOOR_DB) or "")
        ok = not why
    else:
        ok, why = passes(fid, cfg.min_top1_agreement, cfg.min_snr_db)
    figures = {"graph": graph, "samples": len(ref[0]) if ref else 0,
               "top1_agreement": fid.get("top1_agreement"), "snr_db": fid.get("snr_db"),
               "max_abs_err": fid.get("max_abs_err")}
    if not ok:
        return ConversionError(
            f"{graph} differs from the source model ({why}), so nothing is built from it",
            hint="artifacts built without it (other routes or formats) are unaffected")
    return figures


def verified_onnx2tf_graph(state: ModelState, onnx_path: Path | None = None
                           ) -> list[dict[str, Any]]:
    """onnx2tf's SavedModel of the model (an ONNX source, or `onnx_path`: a PyTorch source's
    bridge .onnx, itself verified first), converted on first use and verified; the figures of
    every graph checked on the way. state.graph_dir then holds the SavedModel."""
    figures = []
    if onnx_path is not None:
        bridge = onnx_path
        figures.append(require_verified(
            state, "the bridge .onnx (torch.onnx.export)", bridge,
            lambda: ort_session_runner(bridge, state.outputs, None, state.inputs)))
    saved = ensure_graph(state, onnx_path)
    figures.append(require_verified(state, "onnx2tf's TensorFlow graph", saved,
                                    lambda: _onnx2tf_runner(state)))
    return figures


def _onnx2tf_runner(state: ModelState) -> Callable[[Any], list[np.ndarray]]:
    """onnx2tf's serving signature (batch 1 unless the ONNX fixed another, TF layout in, ONNX
    outputs by name) on recipe data, transposed as every artifact built from it is fed."""
    tf = import_tf()
    fn = loaded_saved_model(state).signatures["serving_default"]
    specs = fn.structured_input_signature[1]
    keys = [signature_name(t.name) for t in state.inputs]
    outs = unique_names([signature_name(t.name) for t in state.outputs])
    _, perm = tf_input_layout(state)

    def one(x: Any) -> list[np.ndarray]:
        feed = {}
        for key, a in zip(keys, as_list(x), strict=True):
            if perm and a.ndim == len(perm):
                a = np.transpose(a, perm)
            feed[key] = tf.constant(a, dtype=specs[key].dtype)
        res = fn(**feed)
        return [np.asarray(res[k].numpy(), dtype=np.float32) for k in outs]

    batch = specs[keys[0]].shape[0] if keys and keys[0] in specs else None
    return lambda x: batched(one, x, size=int(batch) if batch else 256)
