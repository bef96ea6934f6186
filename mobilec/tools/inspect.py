"""`mobilec inspect MODEL`: format, I/O, parameters, ops, size."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from mobilec.formats.tflite import interpreter, list_ops
from mobilec.recipe.schema import ModelSpec, Recipe
from mobilec.sources.detect import detect_format
from mobilec.sources.onnx_input import inspect_onnx
from mobilec.stages import load
from mobilec.state import ModelState
from mobilec.util.fs import size_of


def inspect_model(path: Path, unsafe_deserialization: bool = False) -> dict[str, Any]:
    fmt = detect_format(path)
    info: dict[str, Any] = {"path": str(path), "format": fmt, "size_bytes": size_of(path)}
    if fmt == "onnx":
        info.update(inspect_onnx(path))
        return info
    if fmt == "tflite":
        it = interpreter(path)
        info["inputs"] = [_tensor(d) for d in it.get_input_details()]
        info["outputs"] = [_tensor(d) for d in it.get_output_details()]
        info["ops"] = dict(Counter(list_ops(path)))
        return info
    recipe = Recipe(model=ModelSpec(path=path))
    with tempfile.TemporaryDirectory() as work:
        state = ModelState(recipe=recipe, out_dir=Path(work), work_dir=Path(work),
                           options={"unsafe_deserialization": unsafe_deserialization})
        load.run(state)
        info["params"] = state.source.params
        info["inputs"] = [t.as_dict() for t in state.inputs]
        info["outputs"] = [t.as_dict() for t in state.outputs]
        if state.keras_model is not None:
            info["layers"] = dict(Counter(type(layer).__name__ for layer in state.keras_model.layers))
        info["notes"] = state.notes
    return info


def _tensor(d: dict[str, Any]) -> dict[str, Any]:
    return {"name": d["name"], "shape": [int(x) for x in d["shape"]],
            "dtype": d["dtype"].__name__}
