"""Accuracy and fidelity numbers. Every figure in the report comes from here."""

from __future__ import annotations

import math

import numpy as np


def is_classifier(out: np.ndarray) -> bool:
    return out.ndim == 2 and out.shape[-1] >= 2


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float | None:
    if not is_classifier(logits):
        return None
    return float(np.mean(logits.argmax(axis=-1) == labels.reshape(-1)))


def snr_db(ref: np.ndarray, got: np.ndarray) -> float:
    signal = float(np.sum(ref.astype(np.float64) ** 2))
    noise = float(np.sum((ref.astype(np.float64) - got.astype(np.float64)) ** 2))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def fidelity(ref: list[np.ndarray], got: list[np.ndarray]) -> dict[str, float | None]:
    """top-1 agreement on the first output (classifiers), worst max-abs-error and SNR over outputs."""
    if len(ref) != len(got):
        return {"top1_agreement": None, "max_abs_err": None, "snr_db": None,
                "error": f"{len(got)} outputs, expected {len(ref)}"}
    max_err = 0.0
    worst_snr = math.inf
    for r, g in zip(ref, got, strict=True):
        if r.shape != g.shape:
            if r.size == g.size:
                g = g.reshape(r.shape)
            else:
                return {"top1_agreement": 0.0, "max_abs_err": None, "snr_db": None,
                        "error": f"output shape {g.shape}, expected {r.shape}"}
        if not np.all(np.isfinite(g)):
            return {"top1_agreement": 0.0, "max_abs_err": math.inf, "snr_db": -math.inf,
                    "error": "output contains NaN or Inf"}
        max_err = max(max_err, float(np.max(np.abs(r - g))) if r.size else 0.0)
        worst_snr = min(worst_snr, snr_db(r, g))
    top1 = None
    if is_classifier(ref[0]):
        top1 = float(np.mean(ref[0].argmax(-1) == got[0].reshape(ref[0].shape).argmax(-1)))
    return {"top1_agreement": top1, "max_abs_err": round(max_err, 6),
            "snr_db": None if math.isinf(worst_snr) and worst_snr > 0 else round(worst_snr, 2)}


def passes(fid: dict[str, float | None], min_top1: float, min_snr: float) -> tuple[bool, str]:
    if fid.get("error"):
        return False, str(fid["error"])
    top1 = fid.get("top1_agreement")
    snr = fid.get("snr_db")
    problems = []
    if top1 is not None and top1 < min_top1:
        problems.append(f"top-1 agreement {top1:.4f} < {min_top1}")
    if snr is not None and snr < min_snr:
        problems.append(f"SNR {snr:.1f} dB < {min_snr} dB")
    return (not problems), "; ".join(problems)
