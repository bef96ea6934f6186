"""ONNX graph rewrites that steer onnx2tf around patterns it converts wrongly.

Conv1D as tf2onnx writes it: Unsqueeze(axis 2) -> Conv with a 1xK kernel -> Squeeze(axis 2),
the convolution over a height-1 NCHW image. onnx2tf keeps its own channels-last copy of each
tensor, and an Unsqueeze of a 3-D (NCW) tensor lands the new axis where the height of the
channels-last tensor should not be ([N, W, 1, C] instead of [N, 1, W, C]); the next Squeeze
then fails ("Can not squeeze dim[1], expected a dimension of 1"). Written as a real 1-D
convolution (3-D input, [O, I, K] weight) the same model converts: onnx2tf handles NCW Conv
natively. The rewrite is exact (same arithmetic) and the result is still verified.

LSTM without an initial state (PyTorch's export of `lstm(x)` once onnxsim has removed its zero
states): onnx2tf hands Keras an empty `initial_state` list and fails; explicit zeros convert.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mobilec.sources.onnx_gelu import fuse_gelu

HEIGHT = 2  # the NCHW axis tf2onnx inserts for a Conv1D


def prepare(model: Any) -> None:
    """The exact rewrites every model gets before onnx2tf, in place: exact GELUs in the one
    form onnx2tf fuses into TFLite's GELU, explicit zero states for LSTMs without one."""
    fuse_gelu(model.graph)
    explicit_lstm_states(model)


def conv2d_as_conv1d(model: Any) -> int:
    """Rewrite, in place, every Conv over a height-1 input with a height-1 kernel into
    Squeeze(2) -> 1-D Conv -> Unsqueeze(2), then cancel the Unsqueeze/Squeeze pairs that
    leaves; returns how many Convs were rewritten. Needs inferred shapes (value_info)."""
    from onnx import helper, numpy_helper

    graph = model.graph
    shapes = _shapes(model)
    inits = {t.name: t for t in graph.initializer}
    new_nodes: list[Any] = []
    made: dict[str, str] = {}  # 2-D weight name -> its 1-D copy (weights may be shared)
    count = 0
    for node in graph.node:
        spec = _conv1d_spec(node, shapes, inits)
        if spec is None:
            new_nodes.append(node)
            continue
        count += 1
        x, w, out = node.input[0], node.input[1], node.output[0]
        if w not in made:
            arr = numpy_helper.to_array(inits[w])
            made[w] = _fresh(f"{w}_1d", inits)
            tensor = numpy_helper.from_array(np.ascontiguousarray(arr[:, :, 0, :]), made[w])
            graph.initializer.append(tensor)
            inits[made[w]] = tensor
        axes = _fresh(f"{node.name or out}_height_axis", inits)
        tensor = numpy_helper.from_array(np.array([HEIGHT], dtype=np.int64), axes)
        graph.initializer.append(tensor)
        inits[axes] = tensor
        x3, y3 = f"{x}__as_1d_{count}", f"{out}__1d"
        new_nodes.append(helper.make_node("Squeeze", [x, axes], [x3], name=f"{node.name}_sq1d"))
        new_nodes.append(helper.make_node("Conv", [x3, made[w], *node.input[2:]], [y3],
                                          name=node.name, **spec))
        new_nodes.append(helper.make_node("Unsqueeze", [y3, axes], [out],
                                          name=f"{node.name}_unsq1d"))
    if not count:
        return 0
    del graph.node[:]
    graph.node.extend(new_nodes)
    cancel_unsqueeze_squeeze(model, shapes)
    prune_dead(model)
    del graph.value_info[:]  # stale for the rewritten tensors; inferred again by the caller
    return count


def _conv1d_spec(node: Any, shapes: dict[str, list[int | None]], inits: dict[str, Any]
                 ) -> dict[str, Any] | None:
    """The 1-D Conv attributes for a 2-D Conv that is really 1-D, else None."""
    from onnx import helper, numpy_helper

    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
        return None
    w = inits.get(node.input[1])
    x_shape = shapes.get(node.input[0])
    if w is None or x_shape is None or len(x_shape) != 4 or x_shape[HEIGHT] != 1:
        return None
    if x_shape[3] is None or x_shape[3] <= 1:
        return None  # a 1x1 feature map (a CNN's tail), not a sequence: nothing to steer
    if len(w.dims) != 4 or w.dims[2] != 1:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    if pads[0] != 0 or pads[2] != 0:
        return None
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID", "NOTSET", "VALID"):
        return None  # SAME_* pads height too (by 0 for a height-1 kernel, but keep it simple)
    spec: dict[str, Any] = {"kernel_shape": [int(numpy_helper.to_array(w).shape[3])],
                            "pads": [pads[1], pads[3]],
                            "strides": [list(attrs.get("strides", [1, 1]))[1]],
                            "dilations": [list(attrs.get("dilations", [1, 1]))[1]],
                            "group": int(attrs.get("group", 1))}
    if "auto_pad" in attrs:
        spec["auto_pad"] = attrs["auto_pad"]
    return spec


def cancel_unsqueeze_squeeze(model: Any, shapes: dict[str, list[int | None]]) -> None:
    """Squeeze(axes) of Unsqueeze(axes) is the identity: its consumers read the Unsqueeze's
    input instead (the pair tf2onnx's Conv1D leaves between two rewritten Convs)."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}
    for node in graph.node:
        if node.op_type != "Squeeze" or node.output[0] in outputs:
            continue
        up = producer.get(node.input[0])
        if up is None or up.op_type != "Unsqueeze":
            continue
        rank = len(shapes.get(up.output[0]) or [])
        axes = _axes(node, model, rank)
        if rank and axes is not None and axes == _axes(up, model, rank):
            rename[node.output[0]] = up.input[0]
    for node in graph.node:
        for i, name in enumerate(node.input):
            while name in rename:
                name = rename[name]
            node.input[i] = name


def prune_dead(model: Any) -> None:
    """Drop nodes whose outputs nobody reads, and initializers no node reads."""
    graph = model.graph
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        keep = [n for n in graph.node if any(o in used for o in n.output)]
        if len(keep) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(keep)
    used = {i for n in graph.node for i in n.input}
    inits = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def _axes(node: Any, model: Any, rank: int) -> tuple[int, ...] | None:
    """A Squeeze/Unsqueeze's axes (attribute before opset 13, a constant input since),
    non-negative, or None when they are not constant."""
    from onnx import helper, numpy_helper

    for a in node.attribute:
        if a.name == "axes":
            raw = list(helper.get_attribute_value(a))
            break
    else:
        if len(node.input) < 2:
            return None
        init = next((t for t in model.graph.initializer if t.name == node.input[1]), None)
        if init is None:
            return None
        raw = [int(v) for v in numpy_helper.to_array(init).reshape(-1)]
    # `rank`: the Unsqueeze's output = the Squeeze's input, what negative axes count from.
    return tuple(sorted(v % rank for v in raw))


def _shapes(model: Any) -> dict[str, list[int | None]]:
    values = [*model.graph.input, *model.graph.value_info, *model.graph.output]
    out: dict[str, list[int | None]] = {}
    for v in values:
        t = v.type.tensor_type
        if t.HasField("shape"):
            out[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return out


def _fresh(name: str, taken: dict[str, Any]) -> str:
    k, cand = 0, name
    while cand in taken:
        k += 1
        cand = f"{name}_{k}"
    return cand


def explicit_lstm_states(model: Any) -> int:
    """Give every LSTM without an initial state an explicit all-zero one (a Constant node), in
    place; returns how many LSTMs got one. ONNX defines a missing state as zeros, so the model
    is the same; onnx2tf (1.29) passes a missing state to Keras as an empty `initial_state`
    list and fails ("not compatible with cell.state_size"). PyTorch's exporter writes zero
    states for `lstm(x)` and onnxsim removes them, so every such export hits this."""
    import onnx
    from onnx import helper, numpy_helper

    if not any(n.op_type == "LSTM" and not any(n.input[5:7]) for n in model.graph.node):
        return 0
    # the batch size: inferred here, as onnxsim (which leaves shapes) may have been skipped
    shapes = _shapes(onnx.shape_inference.infer_shapes(model))
    taken = {t.name: t for t in model.graph.initializer}
    taken.update({o: None for n in model.graph.node for o in n.output})
    new_nodes: list[Any] = []
    count = 0
    for node in model.graph.node:
        inputs = list(node.input)
        if node.op_type == "LSTM" and not any(inputs[5:7]):
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            x_shape = shapes.get(inputs[0]) or []
            batch = x_shape[0 if attrs.get("layout", 0) else 1] if len(x_shape) == 3 else None
            if batch is not None:
                dirs = 2 if attrs.get("direction", b"forward") == b"bidirectional" else 1
                # onnx2tf turns every 3-D Constant channels-last ([a, b, c] -> [a, c, b]) and
                # the LSTM takes it as it comes: written [dirs, hidden, batch], it arrives as
                # the [dirs, batch, hidden] ONNX means (layout 0; layout 1 is batch-first).
                hidden = attrs["hidden_size"]
                dims = [batch, hidden, dirs] if attrs.get("layout", 0) else [dirs, hidden, batch]
                zeros = np.zeros(dims, dtype=np.float32)
                name = _fresh(f"{node.name or node.output[0]}_zero_state", taken)
                taken[name] = None
                new_nodes.append(helper.make_node(
                    "Constant", [], [name], value=numpy_helper.from_array(zeros, name)))
                inputs = inputs + [""] * (7 - len(inputs))
                inputs[5] = inputs[6] = name
                del node.input[:]
                node.input.extend(inputs)
                count += 1
        new_nodes.append(node)
    if count:
        del model.graph.node[:]
        model.graph.node.extend(new_nodes)
    return count
