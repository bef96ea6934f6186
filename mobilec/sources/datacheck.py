"""What the data's own contents say before anything is trusted to them: every value finite,
and (for `validate`, without TensorFlow) the arrays an npz file holds against what the
model declares. numpy only: `validate` uses it and must stay light.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mobilec.errors import DataError

# Arrays are scanned in blocks so a large float file is not copied whole by isfinite.
_BLOCK = 1 << 22


def arrays_of(x: Any, y: Any = None) -> dict[str, np.ndarray]:
    """A split's arrays by the name a user knows them by (npz name, else x / x[i]), and y."""
    if isinstance(x, dict):
        named = dict(x)
    elif isinstance(x, (list, tuple)):
        named = {f"x[{i}]": a for i, a in enumerate(x)}
    else:
        named = {"x": x}
    if y is not None:
        named["y"] = y
    return named


def check_finite(arrays: dict[str, np.ndarray], where: str, role: str) -> None:
    """Exit 2 naming the file and array when a float array holds NaN or ±Inf: an artifact
    measured on such data can only fail verification, and the converter would be blamed."""
    for name, a in arrays.items():
        a = np.asarray(a)
        if a.dtype.kind not in "fc" or a.size == 0:
            continue
        flat = a.reshape(-1)
        for start in range(0, flat.size, _BLOCK):
            block = flat[start:start + _BLOCK]
            bad = ~np.isfinite(block)
            if bad.any():
                n_nan = int(np.isnan(flat).sum())
                n_inf = int(np.isinf(flat).sum())
                first = int(np.flatnonzero(~np.isfinite(flat))[0])
                per_sample = flat.size // a.shape[0] if a.ndim and a.shape[0] else flat.size
                sample = first // max(1, per_sample)
                kinds = ", ".join(k for k, n in ((f"{n_nan} NaN", n_nan), (f"{n_inf} Inf", n_inf))
                                  if n)
                raise DataError(f"data.{role} array '{name}' holds non-finite values ({kinds}; "
                                f"first in sample {sample})", where=where,
                                hint="clean the data (np.nan_to_num, or drop those samples): "
                                     "mobilec measures and calibrates on it as it is")
