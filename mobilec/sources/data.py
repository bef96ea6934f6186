"""The recipe's data: train (fine-tuning, calibration) and eval (accuracy, fidelity).

Sources: `digits` (scikit-learn's bundled 8x8 digits, offline, fixed split),
`npz` (one array per model input, named after the input — `x` is the one-input
shorthand — and optional labels `y`; never unpickled; each input as the model takes it,
samples along its batch dim, a rank-0 input as one value), `images` (one folder per
class), and a `python: module:function` hook, which runs code named by the recipe
and so only with --trust-code.

Inputs of any dtype and number: integer and bool inputs (token ids, masks) are fed
as they are; a model with several inputs gets a list of arrays in its input order
(see mobilec.sources.batch).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mobilec.errors import DataError
from mobilec.recipe.schema import DataSpec
from mobilec.sources.batch import as_list, from_list, match_names, take
from mobilec.sources.datacheck import arrays_of, check_finite
from mobilec.util.fs import check_regular
from mobilec.util.tfenv import import_tf
from mobilec.util.usercode import load_callable

DIGITS_SEED = 0
DIGITS_TRAIN = 1437  # 80% of 1797


@dataclass
class Split:
    x: Any  # one array, a list (one per model input), or, before binding, {name: array}
    y: np.ndarray | None = None

    def __len__(self) -> int:
        first = next(iter(self.x.values())) if isinstance(self.x, dict) else as_list(self.x)[0]
        return len(first)


@dataclass
class Dataset:
    train: Split | None
    eval: Split | None
    calibration: Split | None
    notes: list[str] = field(default_factory=list)

    @property
    def has_labels(self) -> bool:
        return self.eval is not None and self.eval.y is not None


def digits_split() -> tuple[Split, Split]:
    """scikit-learn's digits as (N, 8, 8, 1) float32 in [0, 1]; a fixed 80/20 split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype("float32") / 16.0)[..., None]
    y = d.target.astype("int64")
    order = np.random.default_rng(DIGITS_SEED).permutation(len(x))
    x, y = x[order], y[order]
    return Split(x[:DIGITS_TRAIN], y[:DIGITS_TRAIN]), Split(x[DIGITS_TRAIN:], y[DIGITS_TRAIN:])


def load_npz(path: Path, role: str, inputs: list[Any] | None = None) -> Split:
    """The file's arrays ({name: array}, samples first) and labels `y`. With the model's
    `inputs` (TensorSpecs), an input whose batch is another dim has its samples moved first
    and a rank-0 input's one value is given to every sample."""
    if not path.exists():
        raise DataError(f"data.{role} file not found", where=str(path))
    check_regular(path, f"data.{role}", DataError)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files if name != "y"}
            y = z["y"] if "y" in z.files else None
            if not arrays:
                raise DataError(f"npz has no input arrays (arrays: {', '.join(z.files) or 'none'})",
                                where=str(path), hint="save with np.savez(path, x=inputs, y=labels), "
                                "or one array per model input named after it")
    except DataError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise DataError("npz holds pickled Python objects; mobilec never unpickles data",
                            where=str(path), hint="store plain numeric arrays") from None
        raise DataError(f"cannot read npz: {exc}", where=str(path)) from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"cannot read npz: {exc}", where=str(path)) from None
    scalars = _samples_first(arrays, inputs or [], str(path))
    for name, x in arrays.items():
        if x.dtype.kind not in "fiub":
            raise DataError(f"array '{name}' has dtype {x.dtype}; expected numbers",
                            where=str(path))
        if name in scalars:
            continue
        if x.ndim == 0 or len(x) == 0:
            raise DataError(f"array '{name}' is empty", where=str(path))
        if y is not None and len(y) != len(x):
            raise DataError(f"'{name}' has {len(x)} samples but 'y' has {len(y)}", where=str(path))
    counts = {n: len(x) for n, x in arrays.items() if n not in scalars or x.ndim}
    if len(set(counts.values())) > 1:
        raise DataError("the input arrays have different sample counts: " + ", ".join(
            f"{n}: {c}" for n, c in counts.items()), where=str(path))
    n = next(iter(counts.values()), len(y) if y is not None else 1)
    for name in scalars:  # one value for every sample
        if arrays[name].ndim == 0:
            arrays[name] = np.full(n, arrays[name], dtype=arrays[name].dtype)
    return Split(arrays, y)


def _samples_first(arrays: dict[str, np.ndarray], inputs: list[Any], where: str) -> set[str]:
    """Move each batch-not-first input's samples to dim 0, in place; returns the arrays of
    rank-0 inputs (a 0-d value, or one per sample that must all be the same)."""
    if not inputs:
        return set()
    names = [t.name for t in inputs]
    matched = ["x"] if len(names) == 1 and "x" in arrays else match_names(names, list(arrays))
    scalars = set()
    for spec, array in zip(inputs, matched, strict=True):
        axis = getattr(spec, "batch_axis", 0)
        if array is None or axis == 0:
            continue
        a = arrays[array]
        if axis is None:
            scalars.add(array)
            if a.ndim > 1 or (a.ndim == 1 and len(np.unique(a)) > 1):
                seen = ", ".join(str(v) for v in np.unique(a)[:4]) if a.ndim == 1 else \
                    f"shape {list(a.shape)}"
                raise DataError(
                    f"input '{spec.name}' is a scalar (rank 0): the model takes one value for "
                    f"a whole batch, and array '{array}' holds several ({seen})", where=where,
                    hint=f"store '{array}' as one value (np.array(v)), or split the data into "
                         "one file per value")
        elif a.ndim > axis:
            arrays[array] = np.moveaxis(a, axis, 0)
    return scalars


def _load_images(path: Path, spec: DataSpec) -> Split:
    if not path.is_dir():
        raise DataError("images source expects a folder with one sub-folder per class", where=str(path))
    classes = sorted(p.name for p in path.iterdir() if p.is_dir())
    if not classes:
        raise DataError("no class sub-folders found", where=str(path))

    tf = import_tf()
    size = spec.image_size or [224, 224]
    xs, ys = [], []
    for label, name in enumerate(classes):
        for f in sorted((path / name).iterdir()):
            if f.suffix.lower() not in (".png", ".jpg", ".jpeg", ".bmp", ".gif"):
                continue
            img = tf.io.decode_image(f.read_bytes(), channels=3, expand_animations=False)
            img = tf.image.resize(img, size).numpy().astype("float32") / 255.0
            xs.append(img)
            ys.append(label)
    if not xs:
        raise DataError("no images found in the class folders", where=str(path))
    return Split(np.stack(xs), np.asarray(ys, dtype="int64"))


def _load_python_hook(spec: DataSpec, base_dir: Path, trust_code: bool
                      ) -> tuple[Split | None, Split | None]:
    fn = load_callable(spec.python or "", key="data.python", trust_code=trust_code,
                       base_dir=base_dir, error=DataError)
    result = fn()
    if not isinstance(result, dict):
        raise DataError("data.python hook must return {'train': (x, y), 'eval': (x, y)}")
    def split(v: object) -> Split | None:
        if v is None:
            return None
        x, y = v if isinstance(v, tuple) else (v, None)
        if isinstance(x, dict):
            x = {k: np.asarray(a) for k, a in x.items()}
        elif isinstance(x, list):
            x = [np.asarray(a) for a in x]
        else:
            x = np.asarray(x)
        return Split(x, None if y is None else np.asarray(y))
    return split(result.get("train")), split(result.get("eval"))


def load_dataset(spec: DataSpec | None, base_dir: Path, inputs: list[Any] | None = None,
                 trust_code: bool = False) -> Dataset:
    """Load the recipe's data and bind it to the model's inputs (`inputs`: TensorSpecs)."""
    if spec is None:
        return Dataset(None, None, None, ["no data in the recipe: accuracy and fidelity are not measured"])
    notes: list[str] = []
    if spec.python:
        train, ev = _load_python_hook(spec, base_dir, trust_code)
    elif spec.source == "digits":
        train, ev = digits_split()
    elif spec.source == "npz":
        train = load_npz(spec.train, "train", inputs) if spec.train else None
        ev = load_npz(spec.eval, "eval", inputs) if spec.eval else None
    else:
        train = _load_images(spec.train, spec) if spec.train else None
        ev = _load_images(spec.eval, spec) if spec.eval else None
    for split, role in ((train, "train"), (ev, "eval")):
        if split is None:
            continue
        where = data_where(spec, role)
        check_finite(arrays_of(split.x, split.y), where, role)  # before anything runs on it
        if inputs is not None:
            split.x = bind_inputs(split.x, inputs, where)
        elif isinstance(split.x, dict):  # no model to bind to: `x`, else every array in order
            split.x = split.x["x"] if "x" in split.x else from_list(list(split.x.values()))
    if ev is not None and len(ev) > spec.eval_samples:
        ev = Split(take(ev.x, slice(0, spec.eval_samples)),
                   None if ev.y is None else ev.y[: spec.eval_samples])
    calib_source = train
    if train is None and ev is not None:
        calib_source = ev
        notes.append("no train data: calibration uses eval samples")
    calibration = None
    if calib_source is not None:
        n = min(spec.calibration_samples, len(calib_source))
        idx = np.random.default_rng(1).permutation(len(calib_source))[:n]
        calibration = Split(take(calib_source.x, idx))
    if ev is None and train is not None:
        notes.append("no eval data: accuracy and fidelity are not measured")
    return Dataset(train, ev, calibration, notes)


def data_where(spec: DataSpec, role: str) -> str:
    """How errors name a split's data: its file, else the hook or the built-in source."""
    return str(getattr(spec, role, None) or spec.python or spec.source)


def bind_inputs(x: Any, inputs: list[Any], where: str) -> Any:
    """Data in the model's input order: one array for one input, else a list.

    npz arrays are matched to inputs by name (exactly, or ignoring case and punctuation);
    `x` stands for the single input of a one-input model.
    """
    names = [t.name for t in inputs]
    if isinstance(x, dict):
        if len(inputs) == 1 and "x" in x:
            return x["x"]
        matched = match_names(names, list(x))
        if len(inputs) == 1 and matched[0] is None:
            raise DataError(f"npz has no array 'x' (or '{names[0]}', the model input's name) "
                            f"(arrays: {', '.join(x)})", where=where,
                            hint="save with np.savez(path, x=inputs, y=labels)")
        missing = [n for n, m in zip(names, matched, strict=True) if m is None]
        if missing:
            raise DataError(f"no data for model input(s) {', '.join(missing)} (arrays: "
                            f"{', '.join(x)})", where=where,
                            hint="name each npz array after a model input: " + ", ".join(names))
        return from_list([x[m] for m in matched])
    parts = as_list(x)
    if len(parts) != len(inputs):
        raise DataError(f"the model has {len(inputs)} inputs ({', '.join(names)}) and the data "
                        f"gives {len(parts)}", where=where,
                        hint="in npz, one array per model input, named after it")
    return from_list(parts)


def fit_to_input(x: np.ndarray, shape: list[int | None], where: str,
                 dtype: Any = np.float32) -> np.ndarray:
    """Check (and where unambiguous, adapt) data to a model input's shape (batch first) and
    dtype: float inputs get float32, integer and bool inputs their own type."""
    dtype = np.dtype("float32" if dtype in (None, "string") else dtype)
    if dtype.kind == "f":
        dtype = np.dtype("float32")
    want = list(shape[1:])
    have = list(x.shape[1:])
    if len(have) + 1 == len(want) and want[-1] == 1 and _dims_match(have, want[:-1]):
        x = x[..., None]
        have = list(x.shape[1:])
    if not _dims_match(have, want):
        raise DataError(
            f"data x has sample shape {tuple(have)} but the model input expects "
            f"{tuple('?' if d is None else d for d in want)} (data shape {tuple(x.shape)}, "
            f"model input {tuple('?' if d is None else d for d in shape)})",
            where=where, hint="reshape the data or fix model.input_shape")
    if dtype.kind in "iub" and x.dtype.kind == "f" and not np.all(np.mod(x, 1) == 0):
        raise DataError(f"the model input takes {dtype} and the data holds fractional values",
                        where=where, hint="integer inputs (token ids, masks) need integer data")
    return x.astype(dtype) if x.dtype != dtype else x


CHANNELS_LAST_TO_FIRST = (0, 3, 1, 2)
CHANNELS_FIRST_TO_LAST = (0, 2, 3, 1)


def adapt_layout(x: np.ndarray, shape: list[int | None], layout: str, model_layout: str
                 ) -> tuple[np.ndarray, str | None]:
    """Bring 4-D image data into the model's layout (NHWC <-> NCHW).

    `layout` is what the recipe says the data is; 'auto' transposes only when the data
    does not fit as it is and the transposed form does. Returns the data and a note.
    """
    if x.ndim != 4 or len(shape) != 4:
        return x, None
    if layout == "auto":
        if _dims_match(list(x.shape[1:]), list(shape[1:])):
            return x, None
        for perm, name in ((CHANNELS_LAST_TO_FIRST, "NHWC -> NCHW"),
                           (CHANNELS_FIRST_TO_LAST, "NCHW -> NHWC")):
            moved = np.transpose(x, perm)
            if _dims_match(list(moved.shape[1:]), list(shape[1:])):
                return moved, f"data transposed {name} to fit the model input (set data.layout to silence)"
        return x, None
    if layout == model_layout or model_layout not in ("NHWC", "NCHW"):
        return x, None
    perm = CHANNELS_LAST_TO_FIRST if layout == "NHWC" else CHANNELS_FIRST_TO_LAST
    return np.transpose(x, perm), f"data transposed {layout} -> {model_layout} (data.layout)"


def _dims_match(have: list[int], want: list[int | None]) -> bool:
    return len(have) == len(want) and all(w is None or w == h for h, w in zip(have, want, strict=True))
