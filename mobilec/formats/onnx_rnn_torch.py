"""ONNX `LSTM` and `GRU` nodes for onnx2torch, which has no converter for either: tf2onnx
writes a Keras LSTM/GRU layer as one such node, so without these every recurrent Keras,
SavedModel or ONNX model failed the Core AI bridge ("Converter is not implemented").

Each node becomes torch.nn.LSTM / torch.nn.GRU (what torch.export and coreai-torch take
from PyTorch models) with ONNX's weights reordered to PyTorch's gate order; `reverse`
runs forward on the time-reversed sequence. Only what both define the same way is
converted; anything else (other activations, clip, peepholes, per-sample sequence lengths,
GRU with linear_before_reset=0, batch-first layout) raises, and the route says why.

`register()` adds the converters to onnx2torch's registry once per process.
"""

from __future__ import annotations

import functools
from typing import Any

_DONE = False
# PyTorch's gate blocks, as indices of ONNX's: LSTM ONNX i,o,f,c -> torch i,f,g,o;
# GRU ONNX z,r,h -> torch r,z,n.
_ORDER = {"LSTM": (0, 2, 3, 1), "GRU": (1, 0, 2)}
_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"]}


def register() -> None:
    """Teach onnx2torch ONNX LSTM and GRU (idempotent)."""
    global _DONE
    if _DONE:
        return
    from onnx2torch.node_converters.registry import add_converter

    for op in ("LSTM", "GRU"):
        for version in (7, 14, 22):
            add_converter(operation_type=op, version=version)(_converter(op))
    _DONE = True


def _converter(op: str) -> Any:
    def convert(node: Any, graph: Any) -> Any:
        from onnx2torch.utils.common import OnnxMapping, OperationConverterResult

        module, inputs = _module(op, node, graph)
        return OperationConverterResult(
            torch_module=module,
            onnx_mapping=OnnxMapping(inputs=inputs, outputs=node.output_values))

    return convert


def _module(op: str, node: Any, graph: Any) -> tuple[Any, tuple[str, ...]]:
    import torch

    attrs = dict(node.attributes)
    names = list(node.input_values) + [""] * (8 - len(node.input_values))
    x_name, w_name, r_name, b_name, lens_name, h_name = names[:6]
    c_name = names[6] if op == "LSTM" else ""
    acts = [a.decode() if isinstance(a, bytes) else str(a)
            for a in attrs.get("activations", [])]
    direction = attrs.get("direction", "forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    problems = [what for what, bad in (
        ("activations " + ",".join(acts), acts and acts != _ACTIVATIONS[op] * (
            2 if direction == "bidirectional" else 1)),
        ("clip", attrs.get("clip") is not None),
        ("input_forget", attrs.get("input_forget", 0)),
        ("batch-first layout", attrs.get("layout", 0)),
        ("linear_before_reset=0", op == "GRU" and not attrs.get("linear_before_reset", 0)),
        ("peepholes", op == "LSTM" and len(node.input_values) > 7 and names[7]),
        ("weights computed at run time", any(n not in graph.initializers
                                             for n in (w_name, r_name) if n)),
        ("per-sample sequence lengths", bool(lens_name)),
    ) if bad]
    if problems:
        raise NotImplementedError(f"ONNX {op} with {', '.join(problems)}")
    w = graph.initializers[w_name].to_torch()
    r = graph.initializers[r_name].to_torch()
    hidden = int(attrs["hidden_size"])
    gates = len(_ORDER[op])
    b = graph.initializers[b_name].to_torch() if b_name else \
        torch.zeros(w.shape[0], 2 * gates * hidden)
    rnn = (torch.nn.LSTM if op == "LSTM" else torch.nn.GRU)(
        input_size=w.shape[2], hidden_size=hidden, bidirectional=direction == "bidirectional")
    with torch.no_grad():
        for d, suffix in enumerate(["", "_reverse"][:w.shape[0]]):
            getattr(rnn, "weight_ih_l0" + suffix).copy_(_reorder(op, w[d], hidden))
            getattr(rnn, "weight_hh_l0" + suffix).copy_(_reorder(op, r[d], hidden))
            getattr(rnn, "bias_ih_l0" + suffix).copy_(_reorder(op, b[d, :gates * hidden], hidden))
            getattr(rnn, "bias_hh_l0" + suffix).copy_(_reorder(op, b[d, gates * hidden:], hidden))
    inputs = tuple(n for n in (x_name, h_name, c_name) if n)
    module = _recurrent_class()(rnn, op, direction == "reverse", bool(h_name), bool(c_name),
                                len(node.output_values))
    return module, inputs


def _reorder(op: str, t: Any, hidden: int) -> Any:
    import torch

    return torch.cat([t[i * hidden:(i + 1) * hidden] for i in _ORDER[op]])


@functools.cache
def _recurrent_class() -> Any:
    """The module class (built on first use: torch is imported only when a graph needs it)."""
    import torch

    class Recurrent(torch.nn.Module):
        """ONNX LSTM/GRU outputs from torch's: Y [seq, dirs, batch, hidden], Y_h (and Y_c)
        [dirs, batch, hidden]."""

        def __init__(self, rnn: Any, op: str, reverse: bool, has_h: bool, has_c: bool,
                     outputs: int) -> None:
            super().__init__()
            self.rnn, self.op, self.reverse = rnn, op, reverse
            self.has_h, self.has_c, self.outputs = has_h, has_c, outputs

        def forward(self, x: Any, *state: Any) -> Any:
            if self.reverse:
                x = torch.flip(x, [0])
            init = None
            if self.has_h:
                h0 = state[0]
                init = (h0, state[1] if self.has_c else torch.zeros_like(h0)) \
                    if self.op == "LSTM" else h0
            y, last = self.rnn(x, init)
            if self.reverse:
                y = torch.flip(y, [0])
            dirs = 2 if self.rnn.bidirectional else 1
            y = y.reshape(y.shape[0], y.shape[1], dirs, -1).permute(0, 2, 1, 3)
            outs = (y, *last) if self.op == "LSTM" else (y, last)
            # onnx2torch indexes a node's outputs only when it has several
            return outs[0] if self.outputs == 1 else outs[:self.outputs]

    return Recurrent
