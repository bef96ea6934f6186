"""The up-front policy check: target x quantization x format x model x data.

Runs before anything slow (and in `mobilec validate`, without TensorFlow), so an
illegal combination fails in a second with its name, not after a fine-tune.
"""

from __future__ import annotations

import re

from mobilec.errors import ModelLoadError, RecipeError, UnsupportedError
from mobilec.policy.coreml import deployment_target
from mobilec.policy.modes import INT8_MODES, MODES, SEARCHABLE, mode_for_format
from mobilec.policy.targets import TARGETS
from mobilec.recipe.schema import CoreMLConfig, QuantizeConfig, Recipe

TRAINING_STAGES = ("distill", "factorize", "prune")
TORCH_FORMATS = ("pt2", "torch-module")
KERAS_FORMATS = ("keras", "h5", "savedmodel")


def code_keys(recipe: Recipe) -> list[str]:
    """The recipe keys that run Python code (they need --trust-code)."""
    keys = ["model.module"] if recipe.model.module is not None else []
    if recipe.data is not None and recipe.data.python:
        keys.append("data.python")
    return keys


def check_trust(recipe: Recipe, trust_code: bool, where: str | None = None) -> None:
    """Exit 2 up front when the recipe runs code and the run does not trust it (rather than
    after a model load, or in every worker of a batch)."""
    keys = code_keys(recipe)
    if keys and not trust_code:
        raise UnsupportedError(f"{' and '.join(keys)} run{'s' if len(keys) == 1 else ''} Python "
                               "code named in the recipe, and this run does not trust it",
                               where=where or recipe.source,
                               hint="review the code, then pass --trust-code "
                                    "(api: trust_code=True) to run it")


def check_diagnose(recipe: Recipe) -> None:
    """diagnose runs each op on calibration data: without data it cannot start (exit 2, up
    front, not a failed stage after the model has loaded)."""
    if recipe.data is None:
        raise UnsupportedError("diagnose measures each op's int8 error on calibration data, and "
                               "the recipe has no data", where=recipe.source,
                               hint="add data: {source: npz, train: train.npz} (a few hundred "
                                    "representative samples)")


def check_plan(recipe: Recipe, model_format: str | None) -> None:
    if model_format == "tflite":
        raise ModelLoadError(".tflite is an output of mobilec, not an input it can compress",
                             where=str(recipe.model.path),
                             hint="point model.path at the Keras (.keras/.h5), SavedModel or ONNX "
                                  "model the .tflite was made from; `mobilec bench` measures a .tflite")
    data = recipe.data
    has_train = data is not None and (data.train is not None or data.source == "digits"
                                      or data.python is not None)
    has_any = data is not None
    where = recipe.source
    for entry in recipe.stages:
        name = entry.name
        cfg = entry.config
        trains = name in TRAINING_STAGES or (name == "quantize" and cfg.mode in MODES
                                             and MODES[cfg.mode].trains)
        if name == "factorize" and cfg.epochs == 0:
            trains = False
        label = f"quantize mode {cfg.mode}" if name == "quantize" else name
        if trains and not has_train:
            raise UnsupportedError(f"{label} fine-tunes the model and needs data.train "
                                   "(eval data is never trained on)", where=where,
                                   hint="add data: {source: npz, train: train.npz} or drop the stage")
        if trains and model_format == "onnx":
            raise UnsupportedError(
                f"{label} needs a Keras model (tf_keras) to fine-tune; this recipe's model is ONNX",
                where=where, hint="point model.path at the Keras .keras/.h5 or SavedModel "
                "the ONNX came from, or drop the stage and use post-training quantization")
        if name == "quantize":
            _check_quantize(recipe, cfg, has_any)
    if "executorch" in _formats(recipe) and model_format not in TORCH_FORMATS:
        raise UnsupportedError(
            "ExecuTorch (.pte) artifacts are made from PyTorch models; this recipe's model is "
            f"{model_format}", where=where,
            hint="start from the PyTorch model (model.path: x.pt2, or model.module), or drop "
                 "the executorch targets/format")
    _check_coreml(recipe)


def _check_quantize(recipe: Recipe, cfg: QuantizeConfig, has_data: bool) -> None:
    """What the mode table says a mode needs: calibration data, a format that applies it."""
    where, mode, data = recipe.source, cfg.mode, recipe.data
    row = MODES.get(mode)
    if (mode == "auto" or (row is not None and row.calibrates and not row.trains)) \
            and not has_data:
        raise UnsupportedError(f"quantize mode {mode} calibrates on data and the recipe "
                               "has no data: section", where=where,
                               hint="add data (train or eval), or use mode dynamic/float16")
    if mode == "auto":
        if recipe.budget is None or recipe.budget.max_accuracy_drop is None:
            raise UnsupportedError("quantize mode auto needs budget.max_accuracy_drop",
                                   where=where, hint="e.g. budget: {max_accuracy_drop: 0.01}")
        if data is None or (data.eval is None and data.source != "digits"
                            and data.python is None):
            raise UnsupportedError("quantize mode auto measures accuracy and needs labelled "
                                   "data.eval", where=where)
        if cfg.candidates:
            _check_auto_candidates(cfg.candidates, where)
    if cfg.keep_float is not None:
        check_keep_float(recipe, cfg)
    formats = _formats(recipe)
    if row is not None and not formats & set(row.formats):
        can = ", ".join(sorted(row.formats))
        raise UnsupportedError(
            f"quantize mode {mode} applies to {can} only; this recipe produces "
            f"{', '.join(sorted(formats))}", where=where,
            hint="add a target that ships one of those formats (mobilec targets), or choose "
                 "another mode")


def _check_coreml(recipe: Recipe) -> None:
    """Core ML kind x deployment target x quantization (e.g. int4 weights need iOS18)."""
    if "coreml" not in _formats(recipe):
        return

    convert = recipe.stage("convert")
    quant = recipe.stage("quantize")
    mode = quant.mode if quant is not None and quant.mode != "auto" else "float16"
    try:
        deployment_target(convert.coreml if convert is not None else CoreMLConfig(),
                          mode_for_format(mode, "coreml") or "float16")
    except UnsupportedError as exc:
        raise UnsupportedError(exc.message, where=recipe.source, hint=exc.hint) from None


def _check_auto_candidates(candidates: list[str], where: str) -> None:
    bad = [c for c in candidates if c not in SEARCHABLE]
    if bad:
        raise UnsupportedError(f"quantize auto cannot try {', '.join(bad)}: candidates are "
                               f".tflite post-training modes ({', '.join(SEARCHABLE)})", where=where,
                               hint="qat trains and palettize is Core ML only: choose them as the "
                                    "mode itself")


def _formats(recipe: Recipe) -> set[str]:
    cfg = recipe.stage("convert")
    out: set[str] = set()
    for t in recipe.targets:
        out.update(TARGETS[t].formats)
    if cfg is not None and cfg.formats:
        out = (out & set(cfg.formats)) | set(cfg.formats)
    return out


def check_keep_float(recipe: Recipe, cfg: QuantizeConfig) -> None:
    """Up-front check (no TensorFlow): what keep_float needs to run."""
    where = recipe.source
    if cfg.mode not in (*INT8_MODES, "auto"):
        raise UnsupportedError(f"keep_float keeps layers out of full-integer int8; mode "
                               f"'{cfg.mode}' has no int8 activations", where=where,
                               hint="use quantize mode int8 (or int8-io), or drop keep_float")
    if cfg.keep_float == "auto":
        budget = recipe.budget
        if budget is None or budget.max_accuracy_drop is None:
            raise UnsupportedError("keep_float: auto keeps layers in float until "
                                   "budget.max_accuracy_drop holds, and the recipe has none",
                                   where=where, hint="e.g. budget: {max_accuracy_drop: 0.01}, or "
                                   "name the layers: keep_float: [conv1, 'dense_.*']")
        data = recipe.data
        if data is None or (data.eval is None and data.source != "digits" and data.python is None):
            raise UnsupportedError("keep_float: auto measures accuracy and needs labelled "
                                   "data.eval", where=where)
    elif cfg.keep_float is not None:
        for pattern in cfg.keep_float:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise RecipeError(f"quantize.keep_float: {pattern!r} is not a valid regular "
                                  f"expression ({exc})", where=where) from None
