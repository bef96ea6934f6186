"""Model inputs as data: one array for a one-input model, a list (in the model's input
order) for several. Every runner, metric and data loader takes either form; these
helpers slice, count and fabricate them without caring which it is.

Data is always samples first, whatever the model takes: an input whose batch is another
dim (`state` [2, batch, 128]) is held as [N, 2, 128], a rank-0 input (`sr`) as [N] (the
same value in every sample). A runner moves them where the model takes them right at its
call (`to_model`) and its outputs back (`from_model`), so slicing, batching and metrics
never need to know.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np

Inputs = Any  # np.ndarray | list[np.ndarray]


def as_list(x: Inputs) -> list[np.ndarray]:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def from_list(parts: list[np.ndarray]) -> Inputs:
    """The inverse of as_list: a single array stays a bare array."""
    return parts[0] if len(parts) == 1 else list(parts)


def length(x: Inputs) -> int:
    return len(as_list(x)[0])


def take(x: Inputs, index: Any) -> Inputs:
    """Rows `index` (a slice or an index array) of every input."""
    return from_list([a[index] for a in as_list(x)])


def first_n(x: Inputs, n: int) -> Inputs:
    return take(x, slice(0, n))


def inputs_digest(x: Inputs) -> str:
    """sha256 of the inputs' dtypes, shapes and bytes: a memo key for runs on them."""
    h = hashlib.sha256()
    for a in as_list(x):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def map_inputs(x: Inputs, fn: Callable[[np.ndarray], np.ndarray]) -> Inputs:
    return from_list([fn(a) for a in as_list(x)])


def is_float(a: np.ndarray) -> bool:
    return np.asarray(a).dtype.kind == "f"


def sample_shape(shape: list[Any], axis: int | None) -> list[Any]:
    """A tensor's shape without its batch dim (`axis`; None: a scalar, whose sample is [])."""
    if axis is None:
        return []
    return [d for i, d in enumerate(shape) if i != axis]


def batch_axes(specs: list[Any]) -> list[int | None]:
    return [getattr(s, "batch_axis", 0) for s in specs]


def to_model(x: Inputs, axes: list[int | None]) -> list[np.ndarray]:
    """Samples-first data as the model takes it: each input's samples moved to its batch dim;
    a rank-0 input gets the one value its samples share (load checks they do)."""
    out = []
    for a, axis in zip(as_list(x), axes, strict=True):
        if axis is None:
            a = np.asarray(np.asarray(a)[0] if np.ndim(a) else a)
        elif axis:
            a = np.moveaxis(a, 0, axis)
        out.append(a)
    return out


def from_model(outs: list[np.ndarray], axes: list[int | None]) -> list[np.ndarray]:
    """A model's outputs samples first (the inverse of to_model, for outputs whose batch is
    another dim: `stateN` [2, batch, 128] -> [batch, 2, 128])."""
    if len(axes) != len(outs):
        return outs
    return [np.moveaxis(o, axis, 0) if axis and np.ndim(o) > axis else o
            for o, axis in zip(outs, axes, strict=True)]


def synthetic_inputs(specs: list[Any], n: int, seed: int = 0) -> Inputs:
    """Seeded stand-ins when a recipe has no data: normal noise for float inputs, zeros
    for integer and bool inputs (0 is a valid token id and index in any vocabulary)."""
    rng = np.random.default_rng(seed)
    parts = []
    for spec in specs:
        shape = [n] + [d or 1 for d in sample_shape(spec.shape, getattr(spec, "batch_axis", 0))]
        dtype = np.dtype(spec.dtype if spec.dtype != "string" else "float32")
        if dtype.kind == "f":
            parts.append(rng.standard_normal(shape).astype(dtype))
        else:
            parts.append(np.zeros(shape, dtype=dtype))
    return from_list(parts)


def batched(fn: Callable[[Inputs], list[np.ndarray]], x: Inputs, size: int = 256
            ) -> list[np.ndarray]:
    """Run `fn` over `x` in chunks of `size` rows; outputs as float32, concatenated."""
    parts: list[list[np.ndarray]] = []
    for i in range(0, length(x), size):
        parts.append([np.asarray(o, dtype=np.float32) for o in fn(take(x, slice(i, i + size)))])
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]


def _key(name: str) -> str:
    return "".join(c for c in name.split(":")[0].lower() if c.isalnum())


def match_names(want: list[str], have: list[str]) -> list[str | None]:
    """For each wanted name, the name in `have` it stands for: exact, then ignoring case,
    punctuation and a `:0` suffix, then as a path suffix (`serving_default_tokens:0`)."""
    free = list(have)
    out: list[str | None] = []
    for name in want:
        hit = next((h for h in free if h == name), None)
        if hit is None:
            hit = next((h for h in free if _key(h) == _key(name)), None)
        if hit is None:
            hit = next((h for h in free if _key(h).endswith(_key(name)) or
                        _key(name).endswith(_key(h))), None)
        if hit is not None:
            free.remove(hit)
        out.append(hit)
    return out
