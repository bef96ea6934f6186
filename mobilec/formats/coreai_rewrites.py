"""Rewrites of a decomposed ExportedProgram where coreai-torch's lowering of an op computes
something else than PyTorch; each keeps PyTorch's arithmetic in ops it lowers exactly.

- Average pooling that excludes the padding from its windows' counts
  (`count_include_pad=False`: ONNX AveragePool's default, so every Keras
  `AveragePooling2D(padding="same")` through tf2onnx and onnx2torch, and PyTorch's
  `AvgPool2d(..., count_include_pad=False)`): coreai-torch 0.4.3 lowers `aten.avg_pool2d`
  and `avg_pool3d` as if the padding were always counted (its own comment says so). Windows
  on the border then average padding zeros in: Keras inception_v3 came out at -0.6 dB SNR
  while its .onnx held 86 dB. The pool becomes the pool that counts the padding, divided by
  the same pool of ones (the fraction of each window inside the input): each window's sum
  over its real elements, as PyTorch computes it.
- Average pooling with `ceil_mode=True` whose last window is partial: lowered as if
  ceil_mode were False (another output shape); the route fails naming the op.
"""

from __future__ import annotations

from typing import Any

from mobilec.errors import ConversionError

MARK = "mobilec_rewrite"
AVG_POOL_NOTE = "avg_pool_exclude_pad"


def exact_avg_pools(ep: Any) -> int:
    """Rewrite, in `ep`'s graph, each average pool that leaves padding out of its counts;
    the number rewritten."""
    import torch

    aten = torch.ops.aten
    graph = ep.graph_module.graph
    count = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in (aten.avg_pool2d.default,
                                                              aten.avg_pool3d.default):
            continue
        args = _arguments(node)
        x, padding = args[0], args[3]
        val = x.meta.get("val") if hasattr(x, "meta") else None
        # all seven arguments: coreai-torch reads count_include_pad at args[5] whenever
        # ceil_mode is given (an IndexError when it was left at its default)
        node.args, node.kwargs = tuple(args), {}
        if args[4] and val is not None:
            _floor_shape_or_fail(node, val, args)
        if args[5] or args[6] is not None or val is None or \
                not any(padding if isinstance(padding, (list, tuple)) else [padding]):
            continue  # padding counted or not there, or a set divisor: lowered as PyTorch does
        rank = 3 if node.target == aten.avg_pool3d.default else 2
        spatial, lead = list(val.shape[-rank:]), [1] * (val.dim() - rank)
        counted = (*args[:5], True, None)
        with graph.inserting_before(node):
            pooled = graph.call_function(node.target, (x, *counted[1:]))
            if all(isinstance(d, int) for d in spatial):  # a constant the compiler folds
                ones = graph.call_function(aten.full.default, (lead + spatial, 1.0),
                                           {"dtype": val.dtype, "device": val.device})
            else:
                ones = graph.call_function(aten.full_like.default, (x, 1.0))
            inside = graph.call_function(node.target, (ones, *counted[1:]))
        with val.fake_mode:
            ones_val = torch.ones(lead + spatial, dtype=val.dtype, device=val.device) \
                if ones.target == aten.full.default else torch.ones_like(val)
            inside_val = node.target(ones_val, *counted[1:])
            pooled_val = node.target(val, *counted[1:])
        for new, new_val in ((pooled, pooled_val), (ones, ones_val), (inside, inside_val)):
            new.meta.update({k: v for k, v in node.meta.items() if k != "val"}, val=new_val)
        # the node itself becomes the division: the program's output names stay as they are
        node.target, node.args, node.kwargs = aten.div.Tensor, (pooled, inside), {}
        node.meta[MARK] = AVG_POOL_NOTE
        count += 1
    if count:
        ep.graph_module.recompile()
    return count


def _floor_shape_or_fail(node: Any, val: Any, args: list[Any]) -> None:
    """coreai-torch lowers average pools as if ceil_mode were False: where that changes the
    output shape (a last, partial window), no rewrite here makes it PyTorch's."""
    with val.fake_mode:
        floor = node.target(val, *args[1:4], False, *args[5:])
    want = node.meta.get("val")
    rank = len(args[1])
    if want is not None and tuple(floor.shape) != tuple(want.shape):
        raise ConversionError(
            f"{node.target.__name__.split('.')[0]} with ceil_mode=True (output size "
            f"{list(want.shape[-rank:])}): coreai-torch 0.4.3 lowers it as if ceil_mode were "
            f"False ({list(floor.shape[-rank:])})", hint="pad the input so the windows fit, or ship the "
                                           "other formats")


def rewrite_notes(ep: Any) -> list[str]:
    """What the artifact's report says about the rewrites made in `ep`."""
    pools = sum(1 for n in ep.graph.nodes if n.meta.get(MARK) == AVG_POOL_NOTE)
    if not pools:
        return []
    return [f"{pools} average pool(s) leave padding out of their counts "
            "(count_include_pad=False), which coreai-torch 0.4.3 counts: rewritten as the "
            "counting pool divided by the same pool of ones"]


def _arguments(node: Any) -> list[Any]:
    """The node's arguments in schema order, defaults filled in."""
    schema = node.target._schema.arguments
    given = {**{a.name: v for a, v in zip(schema, node.args, strict=False)}, **node.kwargs}
    return [given.get(a.name, a.default_value if a.has_default_value() else None)
            for a in schema]
