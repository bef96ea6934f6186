"""quantize `equalize: auto|true|false`: cross-layer equalization before int8 activations.

int8 gives each activation tensor one scale; a channel whose range is 10^4 times the
others' crushes them to zero. Equalization (mobilec.training.equalize for Keras,
mobilec.formats.onnx_equalize for ONNX graphs) rescales channels between consecutive
layers so their ranges balance, computing exactly the same float function (verified
by both passes). It runs before qat / auto / keep_float, so everything after sees the
equalized model.

`true` applies it. `auto` applies it only when the calibration data shows a range
imbalance (mobilec.diagnose.channels), and keeps it only when the full-int8 model
built from it is more accurate on the eval data than the one built without it; without
labels the equalized model is kept (it is verified identical in float, and the
imbalance it removes is exactly what int8 cannot represent).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mobilec.diagnose.channels import IMBALANCE_RATIO, onnx_range_imbalance, range_imbalance
from mobilec.errors import MobilecError, UnsupportedError
from mobilec.formats import get_format
from mobilec.formats.onnx_equalize import equalize_onnx
from mobilec.policy.modes import INT8_MODES, mode_for_format
from mobilec.recipe.schema import QuantizeConfig
from mobilec.sources.onnx_input import read_model, save_model
from mobilec.state import Artifact, ModelState
from mobilec.training.equalize import equalize_keras

# Modes whose activations end up int8: the only ones equalization can help.
APPLIES_TO = (*INT8_MODES, "qat", "auto")
TOLERANCE = 1e-9  # accuracies are ratios of counts: "improves" means by at least one sample


@dataclass
class _Saved:
    """The state's model fields, to put back when `auto` rejects the equalized model."""
    keras_model: Any
    graph_dir: Path | None
    onnx_path: Path | None
    tf_bridge: Any
    model_version: int
    memo: dict[Any, Any]


def apply_equalize(state: ModelState, cfg: QuantizeConfig) -> dict[str, Any]:
    """Equalize the state's model when the config asks; the stage metrics' `equalize` entry."""
    setting = cfg.equalize
    if setting is False:
        return {}
    if cfg.mode not in APPLIES_TO:
        return _skip(setting, f"mode {cfg.mode} keeps float activations; equalization only "
                              "helps int8 activations")
    kind = "keras" if state.keras_model is not None else "onnx" if state.onnx_path else None
    if kind is None:
        if setting is True:
            raise UnsupportedError(
                "quantize.equalize rescales the layers of a Keras model or an ONNX graph; this "
                "model is neither (a SavedModel without Keras metadata, or a PyTorch program)",
                where=state.recipe.source, hint="set quantize.equalize: auto or false")
        return _skip(setting, "the model is neither a Keras model nor an ONNX graph")
    calib = state.data.calibration.x if state.data and state.data.calibration else None
    if setting == "auto":
        if calib is None:
            return _skip(setting, "no calibration data to measure channel ranges on")
        unbalanced = _imbalance(state, kind, calib)
        if not unbalanced:
            return _skip(setting, f"no layer's output channel ranges differ by more than "
                                  f"{IMBALANCE_RATIO:g}x on the calibration data")
    else:
        unbalanced = []
    fmt = "tflite" if kind == "keras" else "onnx"
    measure = setting == "auto" and state.eval_y is not None
    before = _int8_accuracy(state, fmt) if measure else None
    saved = _save(state)
    report = _equalize_keras(state, calib) if kind == "keras" else _equalize_onnx(state, calib)
    out: dict[str, Any] = {"setting": setting, "applied": True, "model": kind,
                           "unbalanced": [{k: r[k] for k in ("layer", "range_ratio",
                                                             "widest_channel")}
                                          for r in unbalanced],
                           "pairs": report["pairs"], "bn_folded": report["bn_folded"],
                           "skipped": report["skipped"], "max_rel_diff": report["max_rel_diff"],
                           "verified_on": report["verified_on"]}
    if setting is True:
        out["reason"] = "quantize.equalize: true"
        return {"equalize": out}
    if not measure:
        out["reason"] = ("range imbalance found; no labels to compare int8 accuracy, kept "
                         "(the float function is verified unchanged)")
        state.note("quantize equalize auto: kept without an accuracy check (eval data has no "
                   "labels)")
        return {"equalize": out}
    after = _int8_accuracy(state, fmt)
    out.update({"int8_format": fmt, "int8_accuracy_before": before,
                "int8_accuracy_after": after})
    if after is not None and (before is None or after > before + TOLERANCE):
        out["reason"] = (f"range imbalance found; full-int8 {fmt} accuracy "
                         f"{_pct(before)} -> {_pct(after)}")
        return {"equalize": out}
    _restore(state, saved)
    out["applied"] = False
    out["reason"] = (f"range imbalance found but full-int8 {fmt} accuracy did not improve "
                     f"({_pct(before)} -> {_pct(after)}); model left as it was")
    return {"equalize": out}


def _skip(setting: Any, reason: str) -> dict[str, Any]:
    return {"equalize": {"setting": setting, "applied": False, "reason": reason}}


def _pct(acc: float | None) -> str:
    return "n/a" if acc is None else f"{100 * acc:.2f}%"


def _imbalance(state: ModelState, kind: str, calib: Any) -> list[dict[str, Any]]:
    if kind == "keras":
        return range_imbalance(state.keras_model, calib)
    return onnx_range_imbalance(read_model(state.onnx_path), {state.inputs[0].name: calib})


def _equalize_keras(state: ModelState, calib: Any) -> dict[str, Any]:
    new, report = equalize_keras(state.keras_model, calib_x=calib)
    state.replace_model(new)
    return report


def _equalize_onnx(state: ModelState, calib: Any) -> dict[str, Any]:
    feeds = {state.inputs[0].name: calib} if calib is not None else None
    new, report = equalize_onnx(read_model(state.onnx_path), calib=feeds)
    dest = state.work_dir / f"equalized-v{state.model_version + 1}.onnx"
    save_model(new, dest)
    # The graph changed: the onnx2tf bridge and everything derived from the old graph go.
    state.onnx_path = dest
    state.tf_bridge = None
    state.model_version += 1
    state.memo.clear()
    return report


def _save(state: ModelState) -> _Saved:
    return _Saved(state.keras_model, state.graph_dir, state.onnx_path, state.tf_bridge,
                  state.model_version, dict(state.memo))


def _restore(state: ModelState, saved: _Saved) -> None:
    # The memo and version go back too: what was derived from the original model still holds.
    state.keras_model, state.graph_dir, state.onnx_path = (saved.keras_model, saved.graph_dir,
                                                           saved.onnx_path)
    state.tf_bridge, state.model_version = saved.tf_bridge, saved.model_version
    state.memo.clear()
    state.memo.update(saved.memo)


def _int8_accuracy(state: ModelState, fmt: str) -> float | None:
    """Accuracy on the eval data of the full-int8 artifact `fmt` builds from the current model,
    built and run exactly as convert/evaluate will (None when it cannot be built or run)."""
    mode = mode_for_format("int8", fmt) or "int8"
    dest = state.work_dir / "equalize" / f"v{state.model_version}-{mode}{get_format(fmt).suffix}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    art = Artifact(path=dest, format=fmt, quantization=mode, role="candidate")
    try:
        get_format(fmt).build(state, art, dest)
        runner = get_format(fmt).runner(state, art)
        if runner is None:
            return None
        outs = runner(state.eval_x)
    except MobilecError as exc:
        state.note(f"quantize equalize auto: int8 {fmt} trial failed ({exc.message})")
        return None
    return state.label_accuracy(outs)
