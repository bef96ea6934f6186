"""An exported graph (`ep.module()` of a `.pt2`) made into a model of real layers, and
train/eval for it.

`ep.module()` is a GraphModule whose layers are plain ops on get_attr parameters
(`aten.linear(x, W, b)`, `aten.conv2d(x, W, b, stride, padding, dilation, groups)`,
`aten.batch_norm(x, w, b, mean, var, ...)`): it has no nn.Linear / nn.Conv2d /
nn.BatchNorm2d to factorize, narrow or hook. `lift_layers` puts each such op back as a
call of the nn.Module it came from, at the module's own name (`features.3`), holding the
very same parameters and buffers, so the code written for eager modules (factorize's
layer rewrite and its first/output layer hooks, torch-pruning's dependency graph) runs on
it unchanged; the result re-exports with torch.export like any module. An op whose
parameters are shared with another op, or whose owner holds anything else, stays an op.

A lifted graph is still an exported one: its remaining dropout/batch-norm ops switch
between train and eval by graph rewrite (torchao's `move_exported_model_to_train/eval`),
and its lifted modules by their `training` flag (`set_mode` does both).
"""

from __future__ import annotations

import copy
from typing import Any

from mobilec.errors import UnsupportedError, first_line


def is_exported(module: Any) -> bool:
    """An `ep.module()` GraphModule (its nodes carry export's `val` metadata)."""
    import torch

    return isinstance(module, torch.fx.GraphModule) and any(
        "val" in n.meta for n in module.graph.nodes)


def set_mode(module: Any, train: bool) -> Any:
    """module.train(train), also for an exported GraphModule (graph rewrite of BatchNorm
    and dropout ops, torchao's pt2e utilities; lifted layers by their flag)."""
    if not is_exported(module):
        return module.train(train)
    from torchao.quantization.pt2e import (
        move_exported_model_to_eval,
        move_exported_model_to_train,
    )

    try:
        (move_exported_model_to_train if train else move_exported_model_to_eval)(module)
    except Exception as exc:  # noqa: BLE001 - the pattern rewriter raises many types
        raise UnsupportedError(
            f"this exported program cannot be switched to {'training' if train else 'inference'}"
            f" ({type(exc).__name__}: {first_line(exc, 200)})",
            hint="load the model from its Python code instead (model.module: 'pkg.mod:factory' "
                 "with --trust-code), or drop the training stage") from None
    # what nn.Module.train does, which an ep.module() refuses: the lifted layers' flags
    for m in module.modules():
        m.training = train
    return module


def lift_layers(module: Any) -> Any:
    """A copy of an exported graph with its linear/conv/batch-norm ops as nn.Modules (see
    the module doc); any other module is returned as it is."""
    if not is_exported(module):
        return module
    gm = copy.deepcopy(module)
    graph = gm.graph
    uses: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "get_attr":
            uses[node.target] = uses.get(node.target, 0) + len(node.users)
    lifted = 0
    for node in list(graph.nodes):
        made = _layer(gm, node, uses)
        if made is None:
            continue
        name, layer, x, consumed = made
        parent, _, child = name.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, child, layer)
        with graph.inserting_before(node):
            call = graph.call_module(name, (x,))
        call.meta = dict(node.meta)
        node.replace_all_uses_with(call)
        graph.erase_node(node)
        for attr in consumed:
            if not attr.users:
                graph.erase_node(attr)
        lifted += 1
    if lifted:
        graph.lint()
        gm.recompile()
    return gm


def _layer(gm: Any, node: Any, uses: dict[str, int]) -> tuple[str, Any, Any, list[Any]] | None:
    """(module name, the nn.Module, its input node, the get_attr nodes it takes over) for
    a liftable op, else None."""
    import torch

    aten = torch.ops.aten
    kinds = {aten.linear.default: "linear", aten.conv1d.default: "conv",
             aten.conv2d.default: "conv", aten.batch_norm.default: "batch_norm"}
    if node.op != "call_function" or node.target not in kinds:
        return None
    kind = kinds[node.target]
    args = _arguments(node)
    if args is None:
        return None
    tensors = {k: args.get(k) for k in ("weight", "bias", "running_mean", "running_var")}
    attrs = [a for a in tensors.values() if a is not None]
    if tensors["weight"] is None or any(
            not isinstance(a, torch.fx.Node) or a.op != "get_attr" or uses.get(a.target) != 1
            for a in attrs):
        return None
    name = tensors["weight"].target.rpartition(".")[0]
    if not name or any(a.target.rpartition(".")[0] != name for a in attrs):
        return None
    owner = gm.get_submodule(name)
    # only a bare holder of exactly these tensors (plus BatchNorm's counter) is replaced
    held = {n for n, _ in owner.named_parameters(recurse=False)} | \
        {n for n, _ in owner.named_buffers(recurse=False)}
    taken = {a.target.rpartition(".")[2] for a in attrs}
    if type(owner) is not torch.nn.Module or list(owner.children()) or \
            held - taken - {"num_batches_tracked"}:
        return None
    got = {k: getattr(owner, a.target.rpartition(".")[2]) for k, a in tensors.items()
           if a is not None}
    weight, bias = got["weight"], got.get("bias")
    x = args["input"]
    if kind == "linear":
        layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None,
                                device="meta")
    elif kind == "conv":
        if isinstance(args.get("padding"), str):
            return None
        dims = weight.dim() - 2
        conv = torch.nn.Conv1d if dims == 1 else torch.nn.Conv2d
        layer = conv(weight.shape[1] * int(args.get("groups", 1)), weight.shape[0],
                     tuple(weight.shape[2:]), stride=args.get("stride", 1),
                     padding=args.get("padding", 0), dilation=args.get("dilation", 1),
                     groups=int(args.get("groups", 1)), bias=bias is not None, device="meta")
    else:
        val = getattr(x, "meta", {}).get("val")
        norms = {2: torch.nn.BatchNorm1d, 3: torch.nn.BatchNorm1d, 4: torch.nn.BatchNorm2d,
                 5: torch.nn.BatchNorm3d}
        if val is None or val.dim() not in norms or tensors["running_mean"] is None or \
                args.get("momentum") is None:
            return None
        layer = norms[val.dim()](weight.shape[0], eps=float(args["eps"]),
                                 momentum=float(args["momentum"]), device="meta")
        layer.training = bool(args.get("training", False))
        if bias is None:
            return None
        layer.running_mean, layer.running_var = got["running_mean"], got["running_var"]
        if isinstance(getattr(owner, "num_batches_tracked", None), torch.Tensor):
            layer.num_batches_tracked = owner.num_batches_tracked
        else:
            layer.num_batches_tracked = torch.tensor(0, dtype=torch.long)
    layer.weight = weight
    if bias is not None:
        layer.bias = bias
    if any(t.is_meta for t in [*layer.parameters(), *layer.buffers()]):
        return None
    return name, layer, x, attrs


def _arguments(node: Any) -> dict[str, Any] | None:
    """The op's arguments by name, defaults filled in (None when they cannot be read)."""
    from torch.fx.operator_schemas import normalize_function

    pair = normalize_function(node.target, node.args, node.kwargs,
                              normalize_to_only_use_kwargs=True)
    if pair is None:
        return None
    args = dict(pair.kwargs)
    schema = node.target._schema
    for arg in schema.arguments:
        if arg.name not in args and arg.has_default_value():
            args[arg.name] = arg.default_value
    return args
