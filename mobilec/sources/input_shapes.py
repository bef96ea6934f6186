"""The shape of every model input: declared by the model, fixed by the recipe, or by the data.

mobilec needs every dim of every input but the batch fixed (converters and runtimes plan
their buffers from them). A dim the model leaves dynamic is fixed, in this order, by
`model.inputs` (per input, by name: `{input: [1, 512], state: [2, 1, 128]}`) or
`model.input_shape` (the one-input shorthand, for the first input); else by the recipe's
npz data, when every array of that input has the same size there (said in the report);
else the load is refused, naming the per-input key to set.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from mobilec.errors import ModelLoadError, RecipeError
from mobilec.sources.batch import match_names

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


def data_shapes(recipe: Any, names: list[str]) -> dict[str, list[tuple[str, list[int]]]]:
    """For each input, (file, sample shape) of its array in each of the recipe's npz files.
    Files that cannot be read are left to the data loader, which says why."""
    d = recipe.data
    if d is None or d.source != "npz" or d.python:
        return {}
    seen: dict[str, list[tuple[str, list[int]]]] = {}
    for path in (d.train, d.eval):
        if path is None or not Path(path).is_file():
            continue
        try:
            shapes = _npz_shapes(Path(path))
        except Exception:  # noqa: BLE001 - zipfile/numpy raise many types for a bad file
            continue
        arrays = [a for a in shapes if a != "y"]
        matched = ["x"] if len(names) == 1 and "x" in arrays else match_names(names, arrays)
        for name, array in zip(names, matched, strict=True):
            if array is not None:
                seen.setdefault(name, []).append((str(path), shapes[array][1:]))
    return seen


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
                 seen: list[tuple[str, list[int]]], model_where: str, single: bool = False
                 ) -> tuple[list[int | None], list[str], dict[int, str]]:
    """Every dim of input `name` but the batch made static. Returns the dims (the batch None
    when dynamic), notes for the report (a dim fixed from the data), and the dims only the
    data fixed ({index: symbolic name}): formats that keep dynamic dims leave them open."""
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
    fixed: list[int | None] = [dims[0] if isinstance(dims[0], int) else None]
    notes = []
    opened: dict[int, str] = {}
    for i, d in enumerate(dims[1:], start=1):
        if isinstance(d, int):
            if want is not None and want[i] != d:
                raise ModelLoadError(f"{_key(key, name)} {want} does not fit input '{name}' "
                                     f"{shown}: dim {i} is {d}", where=key_where)
            fixed.append(d)
        elif want is not None:
            fixed.append(int(want[i]))
        else:
            sizes = {s[i - 1] for _, s in seen if len(s) == len(dims) - 1}
            label = f"'{d}'" if d else "unnamed"
            if seen and len(sizes) == 1 and all(len(s) == len(dims) - 1 for _, s in seen):
                size = sizes.pop()
                fixed.append(int(size))
                opened[i] = d or f"{name}_dim{i}"
                files = ", ".join(Path(f).name for f, _ in seen)
                notes.append(f"input '{name}' dim {i} ({label}) fixed to {size} from the data "
                             f"({files}); set {_key('model.inputs', name)} to choose")
                continue
            example = "[" + ", ".join(["1"] + [str(x) if isinstance(x, int) else "?"
                                               for x in dims[1:]]) + "]"
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
