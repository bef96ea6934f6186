"""The shape of every model input: declared by the model, fixed by the recipe, or by the data.

mobilec needs every dim of every input but the batch fixed (converters and runtimes plan
their buffers from them). A dim the model leaves dynamic is fixed, in this order, by
`model.inputs` (per input, by name: `{input: [1, 512], state: [2, 1, 128]}`) or
`model.input_shape` (the one-input shorthand, for the first input); else by the recipe's
npz data, when every array of that input has the same size there (said in the report);
else the load is refused, naming the per-input key to set.

The batch is the first dim, except where the model says otherwise: the dim that carries
the name the other inputs' first dims share (`state` [2, batch, 128] next to `input`
[batch, sequence]: dim 1), and none for a rank-0 input (`sr`: one value for every sample).
The npz holds each input as the model takes it, samples along that dim.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from mobilec.errors import ModelLoadError, RecipeError, UnsupportedError
from mobilec.sources.batch import match_names, sample_shape

Dims = list[Any]  # int for a static dim; str (symbolic name) or None for a dynamic one


def recipe_shapes(recipe: Any, names: list[str]) -> dict[str, list[int]]:
    """The recipe's shape for each input it names: model.inputs (names checked against the
    model, located at file:line), else model.input_shape for the first input."""
    spec = recipe.model
    if spec.inputs is not None:
        for name in spec.inputs:
            if name not in names:
                raise RecipeError(f"model.inputs.{name}: the model has no input '{name}'",
                                  where=recipe.where("model", "inputs", name),
                                  hint=f"its inputs are: {', '.join(names)}")
        return {n: list(s) for n, s in spec.inputs.items()}
    if spec.input_shape is not None and names:
        return {names[0]: list(spec.input_shape)}
    return {}


def batch_axes(dims: dict[str, Dims | None]) -> dict[str, int | None]:
    """The dim each input takes its samples on ({name: dims}, None for a rank-0 input):
    the first, unless it is static and a later dim bears the name the other inputs' dynamic
    first dims share ('batch'); None for a rank-0 input."""
    firsts = [d[0] for d in dims.values() if d and isinstance(d[0], str)]
    batch = max(set(firsts), key=firsts.count) if firsts else None
    out: dict[str, int | None] = {}
    for name, d in dims.items():
        if d is None:
            out[name] = None
        elif d and isinstance(d[0], int) and batch is not None and batch in d:
            out[name] = d.index(batch)
        else:
            out[name] = 0
    return out


def require_batch_first(inputs: list[Any], tool: str) -> None:
    """Refuse, naming them, inputs `tool` cannot take: batch not first, or rank 0."""
    odd = [f"'{t.name}' " + ("is rank 0" if t.batch_axis is None else
                             f"takes its batch on dim {t.batch_axis}")
           for t in inputs if t.batch_axis != 0]
    if odd:
        raise UnsupportedError(f"{tool} takes batch-first inputs only: {', '.join(odd)}",
                               hint="ship the .onnx artifact, or export the model with every "
                                    "input batch first")


def data_shapes(recipe: Any, names: list[str], axes: dict[str, int | None] | None = None
                ) -> dict[str, list[tuple[str, list[int]]]]:
    """For each input, (file, sample shape) of its array in each of the recipe's npz files
    (the batch dim, `axes[name]`, left out). Files that cannot be read are left to the data
    loader, which says why."""
    seen: dict[str, list[tuple[str, list[int]]]] = {}
    for path, shapes, _ in _file_shapes(recipe, names):
        for name, shape in shapes.items():
            axis = (axes or {}).get(name, 0)
            if axis is not None and len(shape) > axis:
                seen.setdefault(name, []).append((path, sample_shape(shape, axis)))
    return seen


def data_axes(recipe: Any, dims: dict[str, Dims | None], axes: dict[str, int | None]
              ) -> dict[str, int | None]:
    """`axes` with the batch dim of an input the names left unsettled found in the data: its
    first dim is static and the npz holds it with that size there, and exactly one of its
    dynamic dims has the sample count, in every file (`state` [2, ?, 128] as [2, N, 128])."""
    out = dict(axes)
    files = _file_shapes(recipe, list(dims), [n for n, d in dims.items()
                                              if d and not isinstance(d[0], int)])
    for name, d in dims.items():
        if axes.get(name) != 0 or not d or not isinstance(d[0], int):
            continue
        found = set()
        for _, shapes, n in files:
            shape = shapes.get(name)
            if shape is None or n is None or len(shape) != len(d) or shape[0] != d[0] or n == d[0]:
                found.add(None)
                continue
            hits = [k for k, x in enumerate(d) if not isinstance(x, int) and shape[k] == n]
            found.add(hits[0] if len(hits) == 1 else None)
        if len(found) == 1 and None not in found:
            out[name] = found.pop()
    return out


def _file_shapes(recipe: Any, names: list[str], batch_first: list[str] | None = None
                 ) -> list[tuple[str, dict[str, list[int]], int | None]]:
    """(file, {input: its array's shape}, sample count: the labels', else the first dim of
    the array of an input in `batch_first`) for each of the recipe's npz files."""
    d = recipe.data
    if d is None or d.source != "npz" or d.python:
        return []
    out = []
    for path in (d.train, d.eval):
        if path is None or not Path(path).is_file():
            continue
        try:
            shapes = _npz_shapes(Path(path))
        except Exception:  # noqa: BLE001 - zipfile/numpy raise many types for a bad file
            continue
        arrays = [a for a in shapes if a != "y"]
        matched = ["x"] if len(names) == 1 and "x" in arrays else match_names(names, arrays)
        mine = {n: shapes[a] for n, a in zip(names, matched, strict=True) if a is not None}
        count = (shapes.get("y") or next((mine[n] for n in batch_first or [] if mine.get(n)),
                                         [None]))[0]
        out.append((str(path), mine, count))
    return out


def _npz_shapes(path: Path) -> dict[str, list[int]]:
    """Each array's shape, read from its .npy header only (the data may be large)."""
    fmt = np.lib.format
    out = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with zf.open(info) as f:
                major, _ = fmt.read_magic(f)
                read = fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0
                out[info.filename[:-4]] = list(read(f)[0])
    return out


def resolve_dims(recipe: Any, name: str, dims: Dims, want: list[int] | None,
                 seen: list[tuple[str, list[int]]], model_where: str, single: bool = False,
                 axis: int = 0) -> tuple[list[int | None], list[str], dict[int, str]]:
    """Every dim of input `name` but the batch (dim `axis`) made static. Returns the dims (the
    batch None when dynamic), notes for the report (a dim fixed from the data), and the dims
    only the data fixed ({index: symbolic name}): formats that keep dynamic dims leave them
    open."""
    key = "model.inputs" if recipe.model.inputs is not None or recipe.model.input_shape is None \
        else "model.input_shape"
    key_where = recipe.where(*key.split("."), *([name] if key == "model.inputs" else []))
    shown = _show(dims)
    if want is not None:
        if dims and len(want) != len(dims):
            raise ModelLoadError(f"{_key(key, name)} {want} has {len(want)} dims but input "
                                 f"'{name}' has {len(dims)}: {shown}", where=key_where)
        dims = dims or [None] * len(want)
    elif not dims:
        raise ModelLoadError(f"input '{name}' has no shape in the model", where=model_where,
                             hint="set model.input_shape in the recipe" if single else
                             f"set model.inputs.{name} in the recipe")
    fixed: list[int | None] = []
    notes = []
    opened: dict[int, str] = {}
    for i, d in enumerate(dims):
        if i == axis:
            fixed.append(d if isinstance(d, int) else None)
            continue
        j = i if i < axis else i - 1  # the dim's place in a sample's shape
        if isinstance(d, int):
            if want is not None and want[i] != d:
                raise ModelLoadError(f"{_key(key, name)} {want} does not fit input '{name}' "
                                     f"{shown}: dim {i} is {d}", where=key_where)
            fixed.append(d)
        elif want is not None:
            fixed.append(int(want[i]))
        else:
            sizes = {s[j] for _, s in seen if len(s) == len(dims) - 1}
            label = f"'{d}'" if d else "unnamed"
            if seen and len(sizes) == 1 and all(len(s) == len(dims) - 1 for _, s in seen):
                size = sizes.pop()
                fixed.append(int(size))
                opened[i] = d or f"{name}_dim{i}"
                files = ", ".join(Path(f).name for f, _ in seen)
                notes.append(f"input '{name}' dim {i} ({label}) fixed to {size} from the data "
                             f"({files}); set {_key('model.inputs', name)} to choose")
                continue
            example = "[" + ", ".join("1" if k == axis else str(x) if isinstance(x, int)
                                      else "?" for k, x in enumerate(dims)) + "]"
            why = "" if not seen else (
                f"; the data does not fix it (sizes {sorted(sizes)} in "
                f"{', '.join(Path(f).name for f, _ in seen)})" if len(sizes) > 1 else
                "; the data's arrays for it have another rank")
            # one input: the shorthand model.input_shape does; several: each by name
            which = f"model.input_shape: {example}" if single else \
                f"model.inputs: {{{name}: {example}}}"
            raise ModelLoadError(
                f"input '{name}' {shown} has a dynamic dim {i} ({label}){why}; mobilec needs "
                "every dim but the batch fixed", where=model_where,
                hint=f"set {which} in the recipe, with the ?s filled in")
    return fixed, notes, opened


def _key(key: str, name: str) -> str:
    return f"model.inputs.{name}" if key == "model.inputs" else key


def _show(dims: Dims) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) else "?" for d in dims) + "]"
