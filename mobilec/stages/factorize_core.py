"""The truncated SVD both factorize stages share (Keras kernels; PyTorch weights viewed in
the Keras layout): W ~ (U_r S_r^1/2)(S_r^1/2 V_r^T), split evenly."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LowRank:
    rank: int
    full_rank: int
    energy: float  # fraction of sum(s^2) the kept singular values hold
    first: np.ndarray  # U_r S_r^1/2, reshaped as the first layer's kernel
    second: np.ndarray  # S_r^1/2 V_r^T, reshaped as the second layer's kernel


def low_rank(kernel: np.ndarray, *, rank: float | None, energy: float | None,
             keep: int | None = None) -> LowRank:
    """Truncated SVD of a Dense/Conv kernel, split evenly (S^1/2 each side).

    keep: an absolute rank, instead of the fraction `rank` or the `energy` share.
    """
    matrix = kernel.reshape(-1, kernel.shape[-1]).astype(np.float64)
    u, s, vt = np.linalg.svd(matrix, full_matrices=False)
    full = len(s)
    power = s ** 2
    total = float(power.sum())
    if keep is not None:
        r = max(1, keep)
    elif rank is not None:
        r = max(1, int(round(rank * full)))
    elif total == 0.0:
        r = 1
    else:
        # The smallest r whose singular values hold `energy` of the spectrum.
        r = int(np.searchsorted(np.cumsum(power) / total, (energy or 1.0) - 1e-12) + 1)
    r = min(r, full)
    root = np.sqrt(s[:r])
    first = (u[:, :r] * root).astype(kernel.dtype)
    second = (root[:, None] * vt[:r]).astype(kernel.dtype)
    spatial = kernel.shape[:-2] if kernel.ndim > 2 else ()
    return LowRank(rank=r, full_rank=full, energy=float(power[:r].sum() / total) if total else 1.0,
                   first=first.reshape(*kernel.shape[:-1], r),
                   second=second.reshape(*((1,) * len(spatial)), r, kernel.shape[-1]))
