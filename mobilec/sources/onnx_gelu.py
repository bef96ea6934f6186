"""Exact GELU in an ONNX graph, rewritten in the one form its consumers recognize.

Exporters spell `0.5·x·(1 + erf(x/√2))` several ways: PyTorch's dynamo exporter as
`Mul(x, Mul(0.5, Add(Erf(Div(x, √2)), 1)))`, tf2onnx (from TensorFlow's `erfc`) as
`Mul(Mul(x, 0.5), Erfc(Mul(Neg(x), 1/√2)))`. onnx2tf fuses only
`Div(x, √2) → Erf → Add(1) → Mul(x) → Mul(0.5)` with √2 from a Constant node into
TFLite's GELU builtin; anything else becomes a bare Erf, which TFLite has no builtin for
(and onnx2tf's pseudo-Erf divides by |x|, which int8 cannot run). onnxruntime fuses the same
form into its Gelu kernel. The rewrite is exact, and every result is verified downstream.
"""

from __future__ import annotations

from typing import Any

SQRT2 = 1.4142135381698608  # float32(√2), the constant onnx2tf's GELU fusion compares with
SQRT1_2 = 0.7071067811865476
_TOL = 1e-6


class NodeBuilder:
    """Emits replacement nodes (named under `prefix`) and the scalar constants they use."""

    def __init__(self, graph: Any, prefix: str) -> None:
        self.graph = graph
        self.prefix = prefix
        self.nodes: list[Any] = []
        self._consts: dict[float, str] = {}
        self._n = 0

    def const(self, value: float) -> str:
        """A scalar float32 initializer (one per value)."""
        import numpy as np
        from onnx import numpy_helper

        if value not in self._consts:
            name = f"{self.prefix}/c{len(self._consts)}"
            self.graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32),
                                                                  name))
            self._consts[value] = name
        return self._consts[value]

    def const_node(self, value: float) -> str:
        """A scalar from a Constant node: a pattern matcher that reads operands as computed
        tensors (onnx2tf's GELU fusion) sees it, where it skips an initializer."""
        import numpy as np
        from onnx import helper, numpy_helper

        self._n += 1
        out = f"{self.prefix}/k{self._n}"
        tensor = numpy_helper.from_array(np.array(value, np.float32), out)
        self.nodes.append(helper.make_node("Constant", [], [out], value=tensor,
                                           name=f"{self.prefix}/Constant_{self._n}"))
        return out

    def op(self, op_type: str, inputs: list[str], output: str | None = None) -> str:
        from onnx import helper

        self._n += 1
        out = output or f"{self.prefix}/t{self._n}"
        self.nodes.append(helper.make_node(op_type, inputs, [out],
                                           name=f"{self.prefix}/{op_type}_{self._n}"))
        return out


def canonical_gelu(b: NodeBuilder, x: str, output: str) -> None:
    """0.5·x·(1 + erf(x/√2)) node for node as onnx2tf fuses it (operand order included)."""
    erf = b.op("Erf", [b.op("Div", [x, b.const_node(SQRT2)])])
    b.op("Mul", [b.op("Mul", [x, b.op("Add", [erf, b.const(1.0)])]), b.const(0.5)], output)


class _Graph:
    """Producers, readers and scalar constants of a graph, for matching."""

    def __init__(self, graph: Any) -> None:
        from onnx import numpy_helper

        self.consts = {i.name: float(numpy_helper.to_array(i).reshape(()))
                       for i in graph.initializer if i.dims in ([], [1])}
        for n in graph.node:  # scalar Constant nodes count too
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                t = numpy_helper.to_array(n.attribute[0].t)
                if t.size == 1:
                    self.consts[n.output[0]] = float(t.reshape(()))
        self.producer = {o: n for n in graph.node for o in n.output}
        self.readers: dict[str, list[Any]] = {}
        for n in graph.node:
            for i in n.input:
                self.readers.setdefault(i, []).append(n)

    def is_const(self, name: str, value: float) -> bool:
        return name in self.consts and abs(self.consts[name] - value) < _TOL

    def operand(self, node: Any, op: str, value: float) -> str | None:
        """The non-constant operand of `op(a, value)` in either order, else None."""
        if node is None or node.op_type != op or len(node.input) != 2:
            return None
        for a, c in (node.input, node.input[::-1]):
            if self.is_const(c, value):
                return a
        return None

    def sole_reader(self, name: str, op: str) -> Any:
        readers = self.readers.get(name, [])
        return readers[0] if len(readers) == 1 and readers[0].op_type == op else None

    def other(self, node: Any, name: str) -> str | None:
        rest = [i for i in node.input if i != name]
        return rest[0] if len(rest) == 1 else None


def _core(g: _Graph, node: Any) -> tuple[str, str, list[Any]] | None:
    """(x, the tensor equal to 1 + erf(x/√2), the nodes that made it) for an Erf or Erfc."""
    src = g.producer.get(node.input[0])
    if node.op_type == "Erfc":  # erfc(-x/√2) = 1 + erf(x/√2)
        neg = g.producer.get(g.operand(src, "Mul", SQRT1_2) or "")
        if neg is None or neg.op_type != "Neg":
            return None
        return neg.input[0], node.output[0], [neg, src, node]
    x = g.operand(src, "Div", SQRT2) or g.operand(src, "Mul", SQRT1_2)
    add = g.sole_reader(node.output[0], "Add")
    if x is None or add is None or not g.is_const(g.other(add, node.output[0]) or "", 1.0):
        return None
    return x, add.output[0], [src, node, add]


def _match(g: _Graph, node: Any) -> tuple[str, Any, list[Any]] | None:
    """(x, the node whose output is the GELU, every node of the pattern) or None."""
    core = _core(g, node)
    if core is None:
        return None
    x, one_plus_erf, parts = core
    m1 = g.sole_reader(one_plus_erf, "Mul")
    other = g.other(m1, one_plus_erf) if m1 is not None else None
    if other is None:
        return None
    if other == x or g.is_const(other, 0.5):  # a second Mul by the remaining factor
        m2 = g.sole_reader(m1.output[0], "Mul")
        rest = g.other(m2, m1.output[0]) if m2 is not None else None
        if rest is None or not (g.is_const(rest, 0.5) if other == x else rest == x):
            return None
        return x, m2, [*parts, m1, m2]
    half = g.producer.get(other)
    if g.operand(half, "Mul", 0.5) != x or len(g.readers.get(other, [])) != 1:
        return None
    return x, m1, [*parts, half, m1]


def fuse_gelu(graph: Any) -> int:
    """Rewrite every exact GELU in the canonical form, in place; returns how many. A node of
    a matched pattern that something else also reads is kept."""
    g = _Graph(graph)
    found: dict[str, tuple[str, Any]] = {}
    gone: set[str] = set()
    for node in graph.node:
        if node.op_type not in ("Erf", "Erfc"):
            continue
        hit = _match(g, node)
        if hit is None or not all(n.name for n in hit[2]):  # nodes are told apart by name
            continue
        x, out, parts = hit
        found[out.name] = (x, out)
        gone.update(n.name for n in parts if n is not out and
                    all(len(g.readers.get(o, [])) <= 1 for o in n.output))
    if not found:
        return 0
    new_nodes: list[Any] = []
    for i, node in enumerate(graph.node):
        if node.name in found:
            x, out = found[node.name]
            b = NodeBuilder(graph, f"{node.name}/mobilec_gelu{i}")
            canonical_gelu(b, x, out.output[0])
            new_nodes.extend(b.nodes)
        elif node.name not in gone:
            new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    used = {i for n in graph.node for i in n.input}
    kept = [i for i in graph.initializer if i.name in used]  # the replaced nodes' constants
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return len(found)
