"""ONNX `Loop` (with a constant trip count) and `ReverseSequence` for onnx2torch, which has
neither: tf2onnx writes a Keras RNN it cannot turn into one LSTM/GRU node (a masked or
bidirectional GRU, say) as a `Loop` over the time steps, and `ReverseSequence` for the
backward direction.

The loop body is converted by onnx2torch itself (its outer-scope values become extra
inputs) and called once per iteration in Python, so torch.export unrolls it: the trip count
must be a constant of the graph (the bridge folds shape computations first). The body's
condition is not evaluated: the loop runs its trip count, as tf2onnx's time loops do; a loop
that would stop early computes something else, and the route's verification against the
source model says so.

`register()` adds the converters to onnx2torch's registry once per process.
"""

from __future__ import annotations

import functools
from typing import Any

_DONE = False
_TIDY: list[Any] = []  # what the bridge does to every converted module (static shape ops)
_OPSET = [17]  # the enclosing model's: a body's ops mean what they mean at that opset


def register(tidy: Any, opset: int) -> None:
    """Teach onnx2torch ONNX Loop and ReverseSequence (once per process) for a model of
    `opset`; `tidy` is applied to each converted loop body, as the bridge applies it to the
    whole graph."""
    global _DONE
    _OPSET[0] = opset
    if _DONE:
        return
    _TIDY.append(tidy)
    from onnx2torch.node_converters.registry import add_converter

    for version in (1, 11, 13, 16, 19, 21):
        add_converter(operation_type="Loop", version=version)(_loop)
    add_converter(operation_type="ReverseSequence", version=10)(_reverse_sequence)
    _DONE = True


def _loop(node: Any, graph: Any) -> Any:
    from onnx2torch.utils.common import OnnxMapping, OperationConverterResult

    names = list(node.input_values)
    trip = names[0]
    if not trip or trip not in graph.initializers:
        raise NotImplementedError("ONNX Loop whose trip count is computed at run time")
    count = int(graph.initializers[trip].to_torch().reshape(-1)[0])
    body = node.attributes["body"].g
    carried = names[2:]
    if any(not n for n in carried):
        raise NotImplementedError("ONNX Loop with an empty loop-carried input")
    free = _free_names(body)
    module = _loop_class()(_body_module(body, free), count, len(carried))
    return OperationConverterResult(
        torch_module=module,
        onnx_mapping=OnnxMapping(inputs=tuple(carried + free), outputs=node.output_values))


def _free_names(body: Any) -> list[str]:
    """Values the body reads from the enclosing graph, in first-use order."""
    known = {i.name for i in body.input} | {i.name for i in body.initializer}
    free: list[str] = []
    for n in body.node:
        for name in n.input:
            if name and name not in known and name not in free:
                free.append(name)
        known |= set(n.output)
    return free


def _body_module(body: Any, free: list[str]) -> Any:
    """The body as an onnx2torch module: inputs (iteration, condition, carried..., outer
    values...), outputs (condition, carried..., scanned...), each output its own node."""
    import onnx
    from onnx import helper
    from onnx2torch import convert

    graph = onnx.GraphProto()
    graph.CopyFrom(body)
    for name in free:
        graph.input.append(helper.make_empty_tensor_value_info(name))
    outputs = list(graph.output)
    del graph.output[:]
    for k, out in enumerate(outputs):
        name = f"mobilec_loop_out_{k}"
        graph.node.append(helper.make_node("Identity", [out.name], [name]))
        graph.output.append(helper.make_empty_tensor_value_info(name))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET[0])])
    module = convert(model)
    for tidy in _TIDY:
        module = tidy(module)
    return module


@functools.cache
def _loop_class() -> Any:
    import torch

    class Loop(torch.nn.Module):
        """Runs the body `count` times: final carried values, then each scanned output
        stacked along a new first axis."""

        def __init__(self, body: Any, count: int, carried: int) -> None:
            super().__init__()
            self.body, self.count, self.carried = body, count, carried

        def forward(self, *args: Any) -> Any:
            state, outer = list(args[:self.carried]), list(args[self.carried:])
            scans: list[list[Any]] = []
            cond = torch.tensor(True)
            for i in range(self.count):
                outs = self.body(torch.tensor(i, dtype=torch.int64), cond, *state, *outer)
                outs = list(outs) if isinstance(outs, (tuple, list)) else [outs]
                state = outs[1:1 + self.carried]
                scans.append(outs[1 + self.carried:])
            stacked = [torch.stack([s[k] for s in scans]) for k in range(len(scans[0]))] \
                if scans else []
            return tuple(state + stacked)

    return Loop


def _reverse_sequence(node: Any, graph: Any) -> Any:
    from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

    attrs = dict(node.attributes)
    return OperationConverterResult(
        torch_module=_reverse_class()(int(attrs.get("batch_axis", 1)),
                                      int(attrs.get("time_axis", 0))),
        onnx_mapping=onnx_mapping_from_node(node))


@functools.cache
def _reverse_class() -> Any:
    import torch

    class ReverseSequence(torch.nn.Module):
        """Each batch row's first lens[b] time steps reversed, the rest kept (tensor ops
        only: traceable with lengths known at run time)."""

        def __init__(self, batch_axis: int, time_axis: int) -> None:
            super().__init__()
            self.batch_axis, self.time_axis = batch_axis, time_axis

        def forward(self, x: Any, lens: Any) -> Any:
            y = torch.movedim(x, (self.batch_axis, self.time_axis), (0, 1))
            t = torch.arange(y.shape[1], device=y.device).unsqueeze(0)  # [1, T]
            n = lens.to(torch.int64).reshape(-1, 1)  # [B, 1]
            index = torch.where(t < n, n - 1 - t, t)  # [B, T]
            index = index.reshape(*index.shape, *([1] * (y.dim() - 2))).expand(y.shape)
            return torch.movedim(torch.gather(y, 1, index), (0, 1),
                                 (self.batch_axis, self.time_axis))

    return ReverseSequence
