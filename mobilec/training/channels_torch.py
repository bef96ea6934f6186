"""Structured (channel) pruning of a PyTorch nn.Module with torch-pruning's dependency
graph: whole Conv filters / Linear units removed together with everything that depends
on them (BatchNorm, the next layer's input channels, residual adds, concatenations), in
place. nn.MultiheadAttention modules are handed to it with their head counts (whole
heads, not head dims) and the heads left are counted: torch-pruning 1.6.1 keeps them
whole inside nn.TransformerEncoderLayer (measured: only its feed-forward layers narrow).

The layers that give the model's outputs their width (a classifier's last Linear) are
never pruned: they are found by running the model once and matching each output's
channel width against the last Conv/Linear that produced that width. An exported
graph (`ep.module()` of a `.pt2`) is pruned once its ops are lifted into modules
(torch_graph.lift_layers): torch-pruning finds no layer in a bare one.
"""

from __future__ import annotations

from typing import Any

from mobilec.errors import UnsupportedError, first_line
from mobilec.formats.runtime import measure_latency
from mobilec.training.torch_graph import set_mode


def prune_channels(module: Any, example: tuple[Any, ...], ratio: float) -> dict[str, Any]:
    """Remove `ratio` of the channels of every prunable group of `module` (in place)."""
    import torch
    import torch_pruning as tp

    nn = torch.nn
    require_layers(module)
    set_mode(module, train=False)
    with torch.no_grad():
        outputs = _flat(module(*example))
    heads = {m: m.num_heads for m in module.modules() if isinstance(m, nn.MultiheadAttention)}
    try:
        pruner = tp.pruner.MetaPruner(
            module, example, importance=tp.importance.MagnitudeImportance(p=2),
            pruning_ratio=ratio, ignored_layers=output_layers(module, example, outputs),
            num_heads=heads, prune_num_heads=bool(heads), prune_head_dims=not heads,
            head_pruning_ratio=ratio if heads else 0.0)
        pruner.step()
    except Exception as exc:  # noqa: BLE001 - the tracer and pruners raise many types
        raise UnsupportedError(
            f"torch-pruning could not prune this model's channels ({type(exc).__name__}: "
            f"{first_line(exc, 300)})", hint="use prune: {structure: unstructured}") from None
    with torch.no_grad():
        after = _flat(module(*example))
    if [tuple(o.shape) for o in after] != [tuple(o.shape) for o in outputs]:
        raise UnsupportedError("channel pruning changed the shape of the model's outputs",
                               hint="use prune: {structure: unstructured}")
    if not heads:
        return {}
    # counted, not assumed: nn.MultiheadAttention ties its width to the residual stream, so
    # torch-pruning may leave the heads whole and narrow only the feed-forward layers
    return {"attention_heads_before": sum(heads.values()),
            "attention_heads_after": sum(m.num_heads for m in heads)}


def require_layers(module: Any) -> None:
    """Exit 2 unless `module` has Conv/Linear modules (an exported graph has none)."""
    import torch

    nn = torch.nn
    if not any(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)) for m in module.modules()):
        raise UnsupportedError(
            "channel pruning removes Conv/Linear channels and this model has no Conv or Linear "
            "layer (an exported graph's linear/conv ops become layers only when they hold "
            "weights of their own)",
            hint="load the model from its Python code (model.module: 'pkg.mod:factory' with "
                 "--trust-code), or use prune: {structure: unstructured}")


def output_layers(module: Any, example: tuple[Any, ...], outputs: list[Any]) -> list[Any]:
    """The Conv/Linear modules whose output width is an output's width: the last one run
    for each output (what a classifier head or a regression layer is)."""
    import torch

    nn = torch.nn
    order: list[tuple[Any, int]] = []
    hooks = [m.register_forward_hook(
        lambda m, _i, out: order.append((m, _width(m, out))))
        for m in module.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            module(*example)
    finally:
        for h in hooks:
            h.remove()
    found: list[Any] = []
    for out in outputs:
        widths = {int(out.shape[-1])} | ({int(out.shape[1])} if out.dim() > 1 else set())
        for m, width in reversed(order):
            if width in widths:
                found.append(m)
                break
    return found


def _width(m: Any, out: Any) -> int:
    import torch

    return int(out.shape[1] if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d))
               else out.shape[-1])


def _flat(out: Any) -> list[Any]:
    from torch.utils import _pytree as pytree

    return [t for t in pytree.tree_leaves(out) if hasattr(t, "shape")]


def macs(module: Any, example: tuple[Any, ...]) -> int:
    """Multiply-adds of one call (torch-pruning's counter)."""
    import torch_pruning as tp

    count, _ = tp.utils.count_ops_and_params(module, example)
    return int(count)


def torch_latency(module: Any, example: tuple[Any, ...]) -> float:
    """Median ms of one batch-1 eager call on one thread (this host's PyTorch)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            return measure_latency(lambda: module(*example))["median"]
    finally:
        torch.set_num_threads(threads)
