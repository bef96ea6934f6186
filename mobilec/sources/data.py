"""The recipe's data: train (fine-tuning, calibration) and eval (accuracy, fidelity).

Sources: `digits` (scikit-learn's bundled 8x8 digits, offline, fixed split),
`npz` (arrays x and optional y, never unpickled), `images` (one folder per
class), and an explicit `python: module:function` hook.
"""

from __future__ import annotations

import importlib.util
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mobilec.errors import DataError
from mobilec.recipe.schema import DataSpec
from mobilec.util.tfenv import import_tf

DIGITS_SEED = 0
DIGITS_TRAIN = 1437  # 80% of 1797


@dataclass
class Split:
    x: np.ndarray
    y: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.x)


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


def _load_npz(path: Path, role: str) -> Split:
    if not path.exists():
        raise DataError(f"data.{role} file not found", where=str(path))
    try:
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z.files:
                raise DataError(f"npz has no array 'x' (arrays: {', '.join(z.files) or 'none'})",
                                where=str(path), hint="save with np.savez(path, x=inputs, y=labels)")
            x = z["x"]
            y = z["y"] if "y" in z.files else None
    except DataError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise DataError("npz holds pickled Python objects; mobilec never unpickles data",
                            where=str(path), hint="store plain numeric arrays") from None
        raise DataError(f"cannot read npz: {exc}", where=str(path)) from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"cannot read npz: {exc}", where=str(path)) from None
    if x.dtype.kind not in "fiub":
        raise DataError(f"array 'x' has dtype {x.dtype}; expected numbers", where=str(path))
    if y is not None and len(y) != len(x):
        raise DataError(f"'x' has {len(x)} samples but 'y' has {len(y)}", where=str(path))
    if len(x) == 0:
        raise DataError("array 'x' is empty", where=str(path))
    return Split(x, y)


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


def _load_python_hook(spec: DataSpec, base_dir: Path) -> tuple[Split | None, Split | None]:
    target = spec.python or ""
    if ":" not in target:
        raise DataError(f"data.python {target!r}: expected 'file.py:function' or 'module:function'")
    module_ref, func_name = target.rsplit(":", 1)
    if module_ref.endswith(".py"):
        file = (base_dir / module_ref).resolve()
        if not file.exists():
            raise DataError("data.python file not found", where=str(file))
        mod_spec = importlib.util.spec_from_file_location(f"mobilec_data_hook_{file.stem}", file)
        module = importlib.util.module_from_spec(mod_spec)  # type: ignore[arg-type]
        mod_spec.loader.exec_module(module)  # type: ignore[union-attr]
    else:
        # No local `import importlib` here: it would make the name local to the whole
        # function and break the .py branch above (UnboundLocalError).
        module = importlib.import_module(module_ref)
    fn = getattr(module, func_name, None)
    if fn is None:
        raise DataError(f"data.python: {module_ref} has no function '{func_name}'")
    result = fn()
    if not isinstance(result, dict):
        raise DataError("data.python hook must return {'train': (x, y), 'eval': (x, y)}")
    def split(v: object) -> Split | None:
        if v is None:
            return None
        x, y = v if isinstance(v, tuple) else (v, None)
        return Split(np.asarray(x), None if y is None else np.asarray(y))
    return split(result.get("train")), split(result.get("eval"))


def load_dataset(spec: DataSpec | None, base_dir: Path) -> Dataset:
    if spec is None:
        return Dataset(None, None, None, ["no data in the recipe: accuracy and fidelity are not measured"])
    notes: list[str] = []
    if spec.python:
        train, ev = _load_python_hook(spec, base_dir)
    elif spec.source == "digits":
        train, ev = digits_split()
    elif spec.source == "npz":
        train = _load_npz(spec.train, "train") if spec.train else None
        ev = _load_npz(spec.eval, "eval") if spec.eval else None
    else:
        train = _load_images(spec.train, spec) if spec.train else None
        ev = _load_images(spec.eval, spec) if spec.eval else None
    if ev is not None and len(ev) > spec.eval_samples:
        ev = Split(ev.x[: spec.eval_samples], None if ev.y is None else ev.y[: spec.eval_samples])
    calib_source = train
    if train is None and ev is not None:
        calib_source = ev
        notes.append("no train data: calibration uses eval samples")
    calibration = None
    if calib_source is not None:
        n = min(spec.calibration_samples, len(calib_source))
        idx = np.random.default_rng(1).permutation(len(calib_source))[:n]
        calibration = Split(calib_source.x[idx])
    if ev is None and train is not None:
        notes.append("no eval data: accuracy and fidelity are not measured")
    return Dataset(train, ev, calibration, notes)


def fit_to_input(x: np.ndarray, shape: list[int | None], where: str) -> np.ndarray:
    """Check (and where unambiguous, adapt) data to a model input shape (batch first)."""
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
    return x.astype("float32") if x.dtype != np.float32 else x


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
