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
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

from mobilec.errors import ConversionError, UnsupportedError, first_line


def onnx_to_torch(path: Path) -> Any:
    """An eager torch module computing the `.onnx` graph (inputs named as in the graph
    where the names are identifiers), its constant reshapes made static."""
    import onnx

    convert = _onnx2torch_convert()
    names = [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]
    try:
        module = convert(str(path), save_input_names=all(n.isidentifier() for n in names))
    except Exception as exc:  # noqa: BLE001 - onnx2torch raises many types per op
        raise ConversionError(f"onnx2torch cannot convert the .onnx: {first_line(exc, 300)}",
                              hint="another route may reach Core AI (see routes_failed)"
                              ) from exc
    return static_reshapes(module).eval()


def static_reshapes(gm: Any) -> Any:
    """onnx2torch's Reshape reads its target shape from a tensor at run time, which
    torch.export cannot trace ("Could not guard on data-dependent expression"); where that
    tensor is a constant of the graph (an initializer) and has no 0 (copy-this-dim), the
    reshape becomes torch.reshape with the shape as Python ints. Same arithmetic."""
    import torch

    changed = False
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or len(node.args) != 2 or \
                type(gm.get_submodule(node.target)).__name__ != "OnnxReshape":
            continue
        shape_node = node.args[1]
        if getattr(shape_node, "op", None) != "get_attr":
            continue
        shape = [int(v) for v in _attr(gm, shape_node.target).reshape(-1).tolist()]
        if 0 in shape:
            continue
        with gm.graph.inserting_after(node):
            static = gm.graph.call_function(torch.reshape, (node.args[0], tuple(shape)))
        node.replace_all_uses_with(static)
        gm.graph.erase_node(node)
        changed = True
    if changed:
        gm.graph.eliminate_dead_code()
        gm.recompile()
    return gm


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
