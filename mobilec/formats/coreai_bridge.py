"""The bridge that lets every source reach Core AI: the model's float32 `.onnx` (the same
file the `.onnx` artifacts start from: tf2onnx for Keras and SavedModels, the source itself
for ONNX) becomes a PyTorch module with onnx2torch, which torch.export and coreai-torch
then take like any PyTorch model. The result is verified against the source model, like
every route.

onnx2torch imports torchvision at import time for two detection ops (NonMaxSuppression,
RoiAlign) only. torchvision is a second multi-GB torch build this project does not install,
so when it is missing a stand-in is visible for the duration of that one import: a graph
that really uses those ops fails its route with a reason instead of mobilec failing to
start the bridge.

onnx2torch's Slice, Resize, Expand, Tile and Reshape read their sizes from tensors at run
time; where a graph computes those from its inputs' shapes (Shape -> Gather -> Concat, as
tf2onnx writes for every Keras Reshape with a batch dim), torch.export cannot trace them
(".numpy() is not supported for tensor subclasses", data-dependent guards). When the graph
as it is does not export, `bridged_program` folds those computations into constants at the
input shapes of one sample (onnxsim, the same simplifier onnx2tf runs) and exports at
batch 1, what a phone runs.
"""

from __future__ import annotations

import sys
import tempfile
import types
from pathlib import Path
from typing import Any

from mobilec.errors import ConversionError, MobilecError, UnsupportedError, first_line
from mobilec.formats.coreai_convert import export_decomposed
from mobilec.formats.onnx_autopad import with_explicit_pads
from mobilec.formats.onnx_loop_torch import register as register_loop
from mobilec.formats.onnx_rnn_torch import register as register_rnn


def onnx_to_torch(path: Path) -> Any:
    """An eager torch module computing the `.onnx` graph (inputs named as in the graph
    where the names are identifiers), its constant reshapes made static."""
    import onnx

    convert = _onnx2torch_convert()
    register_rnn()  # ONNX LSTM/GRU, Loop and ReverseSequence, which onnx2torch lacks
    model = onnx.load(str(path), load_external_data=False)
    register_loop(static_reshapes, max((o.version for o in model.opset_import
                                        if o.domain in ("", "ai.onnx")), default=17))
    names = [i.name for i in model.graph.input]
    try:
        module = convert(with_explicit_pads(path),  # auto_pad SAME_* made explicit
                         save_input_names=all(n.isidentifier() for n in names))
    except Exception as exc:  # noqa: BLE001 - onnx2torch raises many types per op
        raise ConversionError(f"onnx2torch cannot convert the .onnx: {first_line(exc, 300)}",
                              hint="another route may reach Core AI (see routes_failed)"
                              ) from exc
    return static_reshapes(module).eval()


def bridged_program(path: Path, example: tuple[Any, ...],
                    axes: list[int | None] | None = None) -> tuple[Any, bool, bool]:
    """The .onnx as a decomposed ExportedProgram: (program, dynamic batch, shapes folded).
    The graph as it is first; if onnx2torch or torch.export fails on it, the graph with its
    shape computations folded at `example`'s shapes (one sample), exported at batch 1."""
    try:
        return (*export_decomposed(onnx_to_torch(path), example, axes or True), False)
    except MobilecError as exc:
        first = exc
    with tempfile.TemporaryDirectory(prefix="mobilec-fold-") as tmp:
        folded = Path(tmp) / "folded.onnx"
        try:
            fold_shapes(path, example, folded)
            module = onnx_to_torch(folded)
            ep, _ = export_decomposed(module, example, dynamic_batch=False)
        except MobilecError as exc:
            if exc.message == first.message:
                raise first from None
            raise ConversionError(f"{first.message}; with its shape computations folded at "
                                  f"one sample's shapes: {exc.message}", hint=first.hint
                                  ) from exc
    return ep, False, True


def fold_shapes(path: Path, example: tuple[Any, ...], dest: Path) -> None:
    """Write to `dest` the .onnx with its inputs fixed to `example`'s shapes and every
    computation that then depends on constants only (shape arithmetic) folded (onnxsim)."""
    import onnx
    import onnxsim

    model = onnx.load(str(path))
    inits = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    if len(names) != len(example):
        raise ConversionError(f"the .onnx has {len(names)} inputs, the data {len(example)}")
    shapes = {n: [int(d) for d in a.shape] for n, a in zip(names, example, strict=True)}
    try:
        simple, _ = onnxsim.simplify(model, overwrite_input_shapes=shapes)
    except Exception as exc:  # noqa: BLE001 - onnxsim raises many types
        raise ConversionError(f"onnxsim could not fold the graph: {first_line(exc, 300)}"
                              ) from exc
    onnx.save(simple, str(dest))


def static_reshapes(gm: Any) -> Any:
    """onnx2torch's Reshape, Squeeze, Unsqueeze, Pad, Slice, Expand and Tile read their shape,
    axes, pads, bounds or repeats from a tensor at run time, which torch.export cannot trace
    ("Could not guard on data-dependent expression", ".numpy() is not supported for tensor
    subclasses"). Where that tensor is a constant of the graph (an initializer, or folded
    into one), the op becomes its static form with the values as Python ints: torch.reshape
    (unless the shape has a 0, copy-this-dim), onnx2torch's own OnnxSqueezeStaticAxes,
    OnnxUnsqueezeStaticAxes and OnnxPadStatic, static_slice, static_expand, static_tile.
    Same arithmetic."""
    changed = False
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or len(node.args) < 2:
            continue
        kind = type(gm.get_submodule(node.target)).__name__
        consts = [_constant(gm, a) for a in node.args]
        if kind not in _STATIC or consts[1] is None or \
                any(c is None for c in consts[2:]) and kind != "OnnxReshape":
            continue
        replacement = _STATIC[kind](gm.get_submodule(node.target), consts)
        if replacement is None:
            continue
        with gm.graph.inserting_after(node):
            if isinstance(replacement, tuple):  # (function, its arguments after the input)
                static = gm.graph.call_function(replacement[0],
                                                (node.args[0], *replacement[1:]))
            else:
                name = f"{node.target.replace('.', '_')}_static"
                gm.add_submodule(name, replacement)
                static = gm.graph.call_module(name, (node.args[0],))
        node.replace_all_uses_with(static)
        gm.graph.erase_node(node)
        changed = True
    if changed:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return gm


def _constant(gm: Any, arg: Any) -> list[Any] | None:
    """The values of a get_attr argument (an initializer), else None."""
    if getattr(arg, "op", None) != "get_attr":
        return None
    return _attr(gm, arg.target).reshape(-1).tolist()


def _reshape(_: Any, consts: list[Any]) -> Any:
    import torch

    shape = tuple(int(v) for v in consts[1])
    return None if 0 in shape else (torch.reshape, shape)


def _squeeze(_: Any, consts: list[Any]) -> Any:
    from onnx2torch.node_converters.squeeze import OnnxSqueezeStaticAxes

    return OnnxSqueezeStaticAxes(axes=[int(v) for v in consts[1]] or None)


def _unsqueeze(_: Any, consts: list[Any]) -> Any:
    from onnx2torch.node_converters.unsqueeze import OnnxUnsqueezeStaticAxes

    return OnnxUnsqueezeStaticAxes(axes=[int(v) for v in consts[1]])


def _pad(module: Any, consts: list[Any]) -> Any:
    from onnx2torch.node_converters.pad import OnnxPadStatic

    onnx_mode = {"replicate": "edge"}.get(module.mode, module.mode)
    value = float(consts[2][0]) if len(consts) > 2 and consts[2] else 0.0
    return OnnxPadStatic.create_from_onnx_params(onnx_mode=onnx_mode,
                                                 onnx_pads=[int(v) for v in consts[1]],
                                                 constant_value=value)


def _slice(_: Any, consts: list[Any]) -> Any:
    starts, ends = consts[1], consts[2]
    axes = consts[3] if len(consts) > 3 else list(range(len(starts)))
    steps = consts[4] if len(consts) > 4 else [1] * len(starts)
    return (static_slice, tuple((int(a), int(b), int(e), int(st))
                                for b, e, a, st in zip(starts, ends, axes, steps, strict=True)))


def static_slice(x: Any, spec: tuple[tuple[int, int, int, int], ...]) -> Any:
    """ONNX Slice with constant (axis, start, end, step)s, as onnx2torch computes it: a
    negative step slices the axis flipped."""
    import torch

    for axis, start, end, step in spec:
        if step < 0:
            x = torch.flip(x, [axis])
            start, end, step = -start - 1, -end - 1, -step
        x = x[(slice(None),) * (axis % x.dim()) + (slice(start, end, step),)]
    return x


def _expand(_: Any, consts: list[Any]) -> Any:
    return (static_expand, tuple(int(v) for v in consts[1]))


def static_expand(x: Any, shape: tuple[int, ...]) -> Any:
    """ONNX Expand to a constant shape (two-way broadcast)."""
    import torch

    return torch.broadcast_to(x, torch.broadcast_shapes(tuple(x.shape), shape))


def _tile(_: Any, consts: list[Any]) -> Any:
    return (static_tile, tuple(int(v) for v in consts[1]))


def static_tile(x: Any, repeats: tuple[int, ...]) -> Any:
    return x.repeat(repeats)


_STATIC = {"OnnxReshape": _reshape, "OnnxSqueezeDynamicAxes": _squeeze,
           "OnnxUnsqueezeDynamicAxes": _unsqueeze, "OnnxPadDynamic": _pad, "OnnxSlice": _slice,
           "OnnxExpand": _expand, "OnnxTile": _tile}


def _attr(gm: Any, target: str) -> Any:
    value = gm
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _onnx2torch_convert() -> Any:
    try:
        import torchvision  # noqa: F401
    except ImportError:
        pass
    else:
        from onnx2torch import convert

        return convert
    stand_in = _torchvision_stand_in()
    saved = {k: sys.modules.get(k) for k in stand_in}
    sys.modules.update(stand_in)
    try:
        from onnx2torch import convert
    finally:
        for key, module in saved.items():
            if module is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = module
    return convert


def _torchvision_stand_in() -> dict[str, types.ModuleType]:
    def missing(*_: Any, **__: Any) -> Any:
        raise UnsupportedError("this graph uses NonMaxSuppression or RoiAlign, which "
                               "onnx2torch runs with torchvision (not installed)",
                               hint="pip install torchvision matching torch, or ship the "
                                    "other formats")

    root, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")
    for name in ("nms", "roi_align", "box_convert", "batched_nms"):
        setattr(ops, name, missing)
    root.ops = ops  # type: ignore[attr-defined]
    return {"torchvision": root, "torchvision.ops": ops}
