"""quantize mode qat on a PyTorch source: PT2E quantization-aware training (torchao).

The trainable copy is exported in train mode, prepared with `prepare_qat_pt2e` and the
XNNPACK quantizer (per-channel, symmetric: what the `.pte` int8 uses), fine-tuned with
fake quantization on data.train, and kept on the state (`torch_qat`): the `.pte` qat
artifact is `convert_pt2e` of it. The QAT graph cannot cross to TFLite, ONNX or Core
ML, so the float weights it learned (same parameter names) go back into the float
module, which is committed as the live model: those formats quantize it (int8,
calibrated on the recipe's data). After a prune stage, the zeros stay zeros.
"""

from __future__ import annotations

from typing import Any

from mobilec.errors import UnsupportedError, first_line
from mobilec.recipe.schema import QuantizeConfig
from mobilec.sources.batch import as_list
from mobilec.sources.pytorch import to_tensor
from mobilec.state import ModelState
from mobilec.training.torch_fit import fit, training_targets
from mobilec.training.torch_graph import set_mode
from mobilec.training.torch_model import commit, trainable_module
from mobilec.training.torch_prune import Masks, prunable_weights


def quantization_aware_train(state: ModelState, cfg: QuantizeConfig) -> dict[str, Any]:
    module = trainable_module(state, "quantize mode qat")
    targets = training_targets(state)
    prepared = prepare(state, module)
    pruned = any(s.name == "prune" and s.status == "ok" for s in state.stages)
    masks = Masks.of_zeros(prunable_weights(prepared)) if pruned else None
    trained = fit(state, prepared, epochs=cfg.epochs, batch_size=cfg.batch_size,
                  learning_rate=cfg.learning_rate, what="qat", targets=targets,
                  after_step=(lambda step: masks.apply()) if masks is not None else None)
    set_mode(prepared, train=False)
    learned = prepared.state_dict()
    own = module.state_dict()
    module.load_state_dict({k: learned[k] for k in own if k in learned}, strict=False)
    commit(state, module)
    state.torch_qat = prepared
    state.note("quantize qat (PyTorch): the .pte is converted from the quantization-aware "
               "graph (PT2E); .tflite/.onnx/Core ML int8 are calibrated from the float model "
               "it fine-tuned (a PT2E QAT graph does not cross to them)")
    return {**trained, "sparsity_preserved": pruned, "quantizer": "PT2E XNNPACKQuantizer (qat)"}


def prepare(state: ModelState, module: Any) -> Any:
    """Export `module` (train mode, dynamic batch) and insert PT2E fake quantization."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    args = tuple(to_tensor(a) for a in as_list(state.sample_inputs(2)))
    if state.torch_batch is None:
        args = tuple(a if a.shape[0] > 1 else torch.cat([a, a]) for a in args)
        batch = torch.export.Dim("batch", min=1, max=4096)
        dynamic: Any = tuple({0: batch} for _ in args)
    else:
        args, dynamic = tuple(a[:state.torch_batch] for a in args), None
    quantizer = XNNPACKQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True, is_qat=True))
    try:
        graph = torch.export.export(module, args, dynamic_shapes=dynamic).module()
        prepared = prepare_qat_pt2e(graph, quantizer)
    except Exception as exc:  # noqa: BLE001 - export and the quantizer raise many types
        raise UnsupportedError(
            f"PT2E cannot make this model quantization-aware: {first_line(exc, 300)}",
            where=str(state.recipe.model.path),
            hint="use post-training quantization (mode int8) instead of qat") from None
    return set_mode(prepared, train=True)

