"""The trainable PyTorch model of a ModelState, and handing a trained one back.

A `model.module` source is an eager `nn.Module`; a `.pt2` source is `ep.module()`, a
GraphModule whose `train()`/`eval()` raise: its BatchNorm and dropout are switched by
rewriting the graph (torchao's `move_exported_model_to_train/eval`: torch_graph.set_mode),
and the stages that rewrite layers first lift its ops into modules (torch_graph.lift_layers).
Training stages work on a deep copy (the loaded model stays the yardstick), then `commit`
re-exports the trained module with torch.export so that every format is rebuilt from, and
verified against, the trained model; accuracy drops stay measured against the outputs
recorded at load.
"""

from __future__ import annotations

import copy
from typing import Any

from mobilec.errors import UnsupportedError, first_line
from mobilec.sources.pytorch import count_params, export_program
from mobilec.state import ModelState
from mobilec.training.channels_torch import macs
from mobilec.training.finetune import require_train_data
from mobilec.training.torch_graph import is_exported, lift_layers, set_mode


def is_torch(state: ModelState) -> bool:
    """True when the live model is PyTorch (the training stages dispatch on it)."""
    return state.torch_module is not None


def trainable_module(state: ModelState, what: str, layers: bool = False) -> Any:
    """A trainable deep copy of the live PyTorch model, in train mode; exit-2 errors when
    there is no data.train, no trainable parameter, or an exported graph that cannot train.
    layers: an exported graph's linear/conv/batch-norm ops lifted into modules (for the
    stages that rewrite layers)."""
    require_train_data(state, f"{what} fine-tunes the model")
    if state.torch_module is None:
        raise UnsupportedError(f"{what} found no PyTorch module to train",
                               where=str(state.recipe.model.path))
    require_free_batch(state, what)
    try:
        module = copy.deepcopy(state.torch_module)
        module = lift_layers(module) if layers else module
    except Exception as exc:  # noqa: BLE001 - user modules can refuse deepcopy in many ways
        raise UnsupportedError(
            f"{what} trains a copy of the model and this module cannot be copied "
            f"({type(exc).__name__}: {first_line(exc, 200)})", where=_where(state),
            hint="make the module deep-copyable (no open files or locks as attributes), or "
                 "export it to a .pt2 and point model.path at it") from None
    for p in module.parameters():
        p.requires_grad_(True)
    if not any(p.is_floating_point() for p in module.parameters()):
        raise UnsupportedError(
            f"{what} fine-tunes the model's parameters and this model has no trainable "
            "(floating-point) parameter", where=_where(state),
            hint="export the model with its weights as parameters (not constants or buffers), "
                 "or drop the stage and use post-training quantization")
    set_mode(module, train=True)
    return module


def require_free_batch(state: ModelState, what: str) -> None:
    """Exit 2 for an exported graph fixed to one batch size: its guards (and the sizes
    export baked into its ops) refuse the training batches and the measuring runs."""
    if state.torch_batch is not None and is_exported(state.torch_module):
        raise UnsupportedError(
            f"{what} runs the model on batches of other sizes and this .pt2 was exported for "
            f"a batch of exactly {state.torch_batch}", where=_where(state),
            hint="export it with a dynamic batch (torch.export.export(model, args, "
                 "dynamic_shapes=({0: torch.export.Dim('batch')},))), or load it from its "
                 "Python code (model.module with model.dynamic_batch: true)")


def commit(state: ModelState, module: Any) -> Any:
    """Hand a trained module back: eval mode, re-exported at the program's batch (dynamic
    stays dynamic), and made the live model. Returns the new ExportedProgram."""
    set_mode(module, train=False)
    for p in module.parameters():
        p.requires_grad_(False)
    batch = state.torch_batch
    examples = tuple(_as_tuple(state.sample_inputs(batch or 2)))
    try:
        program = export_program(module, examples, dynamic_batch=batch is None)
    except Exception as exc:  # noqa: BLE001 - ModelLoadError says "could not trace"
        raise UnsupportedError(
            f"the trained model could not be exported again: {getattr(exc, 'message', exc)}",
            where=_where(state), hint="drop the training stage, or make forward() traceable"
        ) from None
    state.replace_torch_model(program, module)
    return program


def cost(module: Any, example: tuple[Any, ...]) -> tuple[int, int | None]:
    """(parameters, multiply-adds of one call or None when the counter cannot trace it)."""
    try:
        return count_params(module), macs(module, example)
    except Exception:  # noqa: BLE001 - the counter cannot trace every graph: say unknown
        return count_params(module), None


def _as_tuple(x: Any) -> tuple[Any, ...]:
    return tuple(x) if isinstance(x, (list, tuple)) else (x,)


def _where(state: ModelState) -> str:
    model = state.recipe.model
    return str(model.path) if model.path is not None else f"model.module {model.module!r}"
