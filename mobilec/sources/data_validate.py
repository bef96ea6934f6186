"""`mobilec validate`'s look at the data's contents, without TensorFlow: the npz arrays'
names, sample counts and shapes against the model's declared inputs (where the model file
tells without its framework), labels against its classifier output, and NaN/Inf. What could
not be checked this way is listed, not guessed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mobilec.recipe.schema import Recipe
from mobilec.sources.batch import as_list
from mobilec.sources.data import adapt_layout, bind_inputs, fit_to_input, load_npz
from mobilec.sources.datacheck import arrays_of, check_finite
from mobilec.sources.declared import declared_io
from mobilec.sources.input_shapes import data_axes
from mobilec.sources.labels import label_ids


def check_data(recipe: Recipe, model_format: str) -> dict[str, Any]:
    """{"splits": {role: {path, samples, arrays}}, "checked": [...], "not_checked": [...]};
    raises DataError (exit 2) for data `compress` would refuse or mismeasure."""
    spec = recipe.data
    result: dict[str, Any] = {"splits": {}, "checked": [], "not_checked": []}
    if spec is None:
        return result
    if spec.python:
        result["not_checked"].append("data.python: its arrays exist only once the hook runs "
                                     "(compress, with --trust-code)")
        return result
    if spec.source == "digits":
        result["checked"].append("data: the built-in digits (8x8x1, 10 classes)")
        return result
    if spec.source == "images":
        result["not_checked"].append("data: image folders are decoded (with TensorFlow) by "
                                     "compress; only their paths were checked")
        return result
    if recipe.model.path is not None and model_format not in ("torch-module",):
        declared = declared_io(Path(recipe.model.path), model_format)
    else:
        declared = declared_io(Path("."), model_format)
    want = recipe.model.input_shape
    if declared.inputs is not None and want is not None and len(declared.inputs) == 1:
        declared.inputs[0].shape = [None, *want[1:]]  # model.input_shape, as load applies it
    if declared.inputs is not None:  # a batch dim only the data tells, as load finds it
        axes = data_axes(recipe, {t.name: None if t.batch_axis is None else t.shape
                                  for t in declared.inputs},
                         {t.name: t.batch_axis for t in declared.inputs})
        for t in declared.inputs:
            t.batch_axis = axes[t.name]
    if declared.inputs is None:
        result["not_checked"].append(f"data shapes against the model's inputs: {declared.why_not}")
    for role in ("train", "eval"):
        path = getattr(spec, role)
        if path is None:
            continue
        split = load_npz(Path(path), role, declared.inputs)  # names, dtypes, sample counts
        where = str(path)
        check_finite(arrays_of(split.x, split.y), where, role)
        result["splits"][role] = {
            "path": where, "samples": len(split),
            "arrays": {n: list(a.shape) for n, a in arrays_of(split.x, split.y).items()}}
        if declared.inputs is not None:
            _check_inputs(split.x, declared.inputs, where, spec.layout)
        if split.y is not None:
            _check_labels(split.y, declared.classes, where)
    if result["splits"]:
        what = "array names, sample counts, NaN/Inf"
        if declared.inputs is not None:
            what += ", sample shapes against the model's inputs"
        result["checked"].append(f"data ({', '.join(result['splits'])}): {what}")
        if declared.classes is None and any("y" in s["arrays"] for s in result["splits"].values()):
            result["not_checked"].append("label range: the model file does not plainly declare "
                                         "a classifier output; compress checks it")
    return result


def _check_inputs(x: Any, inputs: list[Any], where: str, layout: str) -> None:
    """What load does with the data, on the declared shapes: bind by name, fit the shape."""
    bound = bind_inputs(x, inputs, where)
    for spec, a in zip(inputs, as_list(bound), strict=True):
        label = f"{where} (input {spec.name})" if len(inputs) > 1 else where
        shape = [None, *spec.sample_shape()]  # load_npz put the samples first
        if a.dtype.kind == "f" and np.dtype(spec.dtype).kind == "f" and spec.batch_axis == 0:
            a, _ = adapt_layout(a, shape, layout, "unknown")
        fit_to_input(a, shape, label, spec.dtype)


def _check_labels(y: np.ndarray, classes: int | None, where: str) -> None:
    """The labels against the classifier output's width, as load will check them (one-hot
    rows of that width are fine); without a known width, left to compress."""
    if classes is not None:
        label_ids(y, classes, f"{where}, array 'y'")
