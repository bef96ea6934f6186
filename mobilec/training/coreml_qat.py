"""quantize mode qat on a PyTorch source, for Core ML: coremltools.optimize.torch's
LinearQuantizer (Core ML's own QAT).

When the plan has a Core ML artifact, a trainable copy of the model as the quantize stage
found it goes through the documented flow: `LinearQuantizer(model, LinearQuantizerConfig)`
(int8 weights per channel, uint8 activations, symmetric), `prepare` (fake quantization;
Conv-BatchNorm-ReLU fused), the one training loop (`training/torch_fit.py`, same epochs,
learning rate, loss and progress as the PT2E QAT) with `quantizer.step()` after every
optimizer step, then `finalize`. The finalized model is what the Core ML int8 artifact is
converted from (formats/coreml.py); Core ML cannot run here, so its accuracy is measured
on that model, the graph the `.mlpackage` is built from.

The PT2E QAT (training/torch_qat.py) still makes the live model for the other formats:
this copy only feeds Core ML. A `.pt2`'s `ep.module()` holds ATen calls, no `nn.Conv2d` or
`nn.Linear` LinearQuantizer can wrap: its layers are lifted back into modules first
(torch_graph.lift_layers), and the lifted graph goes through the same flow. Only when a
BatchNorm or dropout op stays a plain op (the finalized model's eval() switches modules,
not graph ops, so it would stay in its training form) does its Core ML int8 stay weight-quantized from the
PT2E fine-tuned model (a note says so).
"""

from __future__ import annotations

from typing import Any

from mobilec.errors import UnsupportedError, first_line
from mobilec.formats.torch_routes import QAT_QUANTIZER
from mobilec.policy.targets import plan_artifacts
from mobilec.recipe.schema import QuantizeConfig
from mobilec.sources.batch import as_list
from mobilec.sources.pytorch import eager_runner, to_tensor
from mobilec.state import ModelState
from mobilec.training.torch_fit import fit, steps_per_epoch
from mobilec.training.torch_graph import is_exported
from mobilec.training.torch_model import trainable_module
from mobilec.training.torch_prune import Masks, prunable_weights


def wanted(state: ModelState) -> bool:
    """Whether the run builds a Core ML artifact of the qat plan."""
    has_calib = state.data is not None and state.data.calibration is not None
    specs = plan_artifacts(list(state.recipe.targets), "qat", state.convert_config.formats,
                           has_calib)
    return any(s.format == "coreml" and s.quantization != "float32" and not s.skipped_reason
               for s in specs)


def quantization_aware_train(state: ModelState, cfg: QuantizeConfig) -> tuple[Any, dict[str, Any]]:
    """(the finalized QAT model or None, the metrics): LinearQuantizer on a trainable copy
    of the live model. Call before the PT2E QAT commits its model (same starting point)."""
    module = trainable_module(state, "quantize mode qat", layers=True)
    left = mode_ops(module)
    if left:
        why = (f"this .pt2's {', '.join(left)} could not be lifted into modules, and such a "
               "plain op would stay in its training form in the model coremltools' "
               "LinearQuantizer finalizes (its eval() reaches modules, not graph ops)")
        state.note(f"quantize qat (Core ML): {why}, so the Core ML int8 is weight-quantized "
                   "from the PT2E fine-tuned model; load the model from its Python code "
                   "(model.module) for Core ML's own QAT")
        return None, {"coreml_qat": {"applied": False, "reason": why}}
    total = cfg.epochs * steps_per_epoch(state, cfg.batch_size)
    quantizer, prepared = prepare(state, module, total)
    pruned = any(s.name == "prune" and s.status == "ok" for s in state.stages)
    masks = Masks.of_zeros(prunable_weights(prepared)) if pruned else None

    def after_step(step: int) -> None:
        quantizer.step()
        if masks is not None:
            masks.apply()

    trained = fit(state, prepared, epochs=cfg.epochs, batch_size=cfg.batch_size,
                  learning_rate=cfg.learning_rate, what="qat (Core ML)", after_step=after_step)
    finalized = quantizer.finalize(inplace=True).eval()
    for p in finalized.parameters():
        p.requires_grad_(False)
    accuracy = state.eval_accuracy(eager_runner(finalized))
    return finalized, {"coreml_qat": {
        "applied": True, "quantizer": QAT_QUANTIZER, "scheme": "int8 weights (per channel) and activations, symmetric",
        "final_loss": trained["final_loss"], "accuracy": accuracy,
        "accuracy_of": "the finalized QAT model the Core ML int8 is converted from"}}


def mode_ops(module: Any) -> list[str]:
    """An exported graph's ops that act differently in training (BatchNorm, dropout) and
    are still plain ops after lift_layers; [] for an eager module."""
    if not is_exported(module):
        return []
    return sorted({str(n.target) for n in module.graph.nodes if n.op == "call_function"
                   and any(k in str(n.target) for k in ("batch_norm", "dropout"))})


def prepare(state: ModelState, module: Any, total_steps: int) -> tuple[Any, Any]:
    """(LinearQuantizer, the prepared model in train mode). Milestones: observers and fake
    quantization from the first step; BatchNorm statistics frozen at half of training and
    observers at three quarters, so the last steps train at the ranges Core ML will get."""
    import torch
    from coremltools.optimize.torch.quantization import (
        LinearQuantizer,
        LinearQuantizerConfig,
        ModuleLinearQuantizerConfig,
    )

    config = LinearQuantizerConfig(global_config=ModuleLinearQuantizerConfig(
        quantization_scheme="symmetric", weight_dtype=torch.qint8, weight_per_channel=True,
        activation_dtype=torch.quint8,
        milestones=[0, 0, max(1, total_steps * 3 // 4), max(1, total_steps // 2)]))
    example = tuple(to_tensor(a) for a in as_list(state.sample_inputs(2)))
    try:
        quantizer = LinearQuantizer(module, config)
        prepared = quantizer.prepare(example_inputs=example, inplace=True)
    except Exception as exc:  # noqa: BLE001 - fx tracing and the quantizer raise many types
        raise UnsupportedError(
            f"coremltools' LinearQuantizer cannot make this model quantization-aware "
            f"(torch.fx could not trace it?): {first_line(exc, 300)}",
            where=str(state.recipe.model.path or state.recipe.model.module),
            hint="use post-training quantization (mode int8) instead of qat, or drop target "
                 "ios-coreml (the other formats' QAT is PT2E)") from None
    prepared.train()
    return quantizer, prepared
