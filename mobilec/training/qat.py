"""Quantization-aware training with tfmot: fake-quantize, fine-tune, hand back the model.
PyTorch sources: training/torch_qat.py (PT2E), and training/coreml_qat.py (coremltools'
LinearQuantizer) for a Core ML artifact.

The QAT model replaces the live model; the converters then emit int8 from its
learned ranges (TFLite: Optimize.DEFAULT, mode "qat").
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mobilec.errors import UnsupportedError, first_line
from mobilec.recipe.schema import QuantizeConfig
from mobilec.stages.prune import import_tfmot
from mobilec.state import ModelState
from mobilec.training import coreml_qat, torch_qat
from mobilec.training.finetune import fit, require_trainable, training_targets
from mobilec.training.torch_model import is_torch


def quantization_aware_train(state: ModelState, cfg: QuantizeConfig) -> dict[str, Any]:
    if is_torch(state):
        # Core ML's QAT starts from the model as found, so it trains before PT2E commits
        apple, metrics = coreml_qat.quantization_aware_train(state, cfg) \
            if coreml_qat.wanted(state) else (None, {})
        metrics = {**torch_qat.quantization_aware_train(state, cfg), **metrics}
        state.coreml_qat = apple  # after the commit, which clears it
        return metrics
    model = require_trainable(state, "quantize mode qat")

    tfmot = import_tfmot()
    targets = training_targets(state, model)
    pruned = any(s.name == "prune" and s.status == "ok" for s in state.stages)
    try:
        # quantize_apply clones the layers, so the loaded model is left untouched.
        qk = tfmot.quantization.keras
        annotated = qk.quantize_annotate_model(model)
        if pruned:
            # Plain QAT would regrow the pruned zeros; this scheme keeps the sparsity mask.
            scheme = tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme()
            qat_model = qk.quantize_apply(annotated, scheme)
        else:
            qat_model = qk.quantize_apply(annotated)
    except (RuntimeError, ValueError, TypeError) as exc:
        first = first_line(exc)
        raise UnsupportedError(
            f"tfmot cannot make this model quantization-aware: {first[:300]}",
            where=str(state.recipe.model.path),
            hint="use post-training quantization (mode int8) instead of qat, or annotate the "
                 "layer with a tfmot QuantizeConfig") from None
    calibrate_ranges(qat_model, state.data.calibration.x if state.data.calibration is not None
                     else state.data.train.x)
    trained = fit(state, qat_model, epochs=cfg.epochs, batch_size=cfg.batch_size,
                  learning_rate=cfg.learning_rate, targets=targets)
    state.replace_model(qat_model)
    state.note("quantize qat: the float32 artifacts are the quantization-aware model itself "
               "(fake-quant ops computed in float), the yardstick for the int8 size ratio")
    return {**trained, "sparsity_preserved": pruned}


# tfmot's MovingAverageQuantizer (activations) hard-codes this EMA decay.
EMA_DECAY = 0.999


def calibrate_ranges(qat_model: Any, x: np.ndarray, passes: int = 3, batch: int = 256) -> int:
    """Start QAT from calibrated activation ranges instead of tfmot's [-6, 6].

    tfmot learns activation ranges by an EMA with decay 0.999: a one-epoch fine-tune
    on a small dataset moves them only a few percent from [-6, 6], and the result
    varies by several accuracy points from run to run. One training-mode forward
    pass reveals each batch range exactly (new = old + (1 - decay) * (range - old));
    setting the variables to it, a few passes deep (each pass sees better upstream
    ranges), gives PTQ-quality ranges. Other quantizers (weights: last value; the
    input layer: all values seen) set their ranges themselves in that pass. Every
    variable that is not a quantizer range (weights, BatchNorm statistics) is
    restored afterwards. Returns the number of EMA range variables set.
    """
    ema = _ema_range_vars(qat_model)
    if not ema:
        return 0
    quant_ranges = {v.name for v in qat_model.non_trainable_weights
                    if v.name.split(":")[0].endswith(("_min", "_max"))}
    others = [(v, v.numpy()) for v in qat_model.weights if v.name not in quant_ranges]
    sample = x[:batch]
    for _ in range(passes):
        old = [v.numpy() for v in ema]
        qat_model(sample, training=True)
        for v, before in zip(ema, old, strict=True):
            v.assign(before + (v.numpy() - before) / (1.0 - EMA_DECAY))
    for v, value in others:
        v.assign(value)
    return len(ema)


def _ema_range_vars(qat_model: Any) -> list[Any]:
    """The min/max variables of every MovingAverageQuantizer in a tfmot QAT model."""
    from tensorflow_model_optimization.python.core.quantization.keras.quantizers import (
        MovingAverageQuantizer,
    )

    found: list[Any] = []

    def add(quantizer: Any, qvars: Any) -> None:
        if isinstance(quantizer, MovingAverageQuantizer) and qvars:
            found.extend(qvars[k] for k in ("min_var", "max_var") if k in qvars)

    for layer in qat_model.layers:
        add(getattr(layer, "quantizer", None), getattr(layer, "quantizer_vars", None))
        for act in getattr(layer, "_quantize_activations", []):
            for attr in ("_pre_activation_vars", "_post_activation_vars"):
                add(act.quantizer, getattr(act, attr, None))
        outs = getattr(layer, "_output_quantizers", None)
        if outs:
            add(outs[0], getattr(layer, "_output_quantizer_vars", None))
    return found
