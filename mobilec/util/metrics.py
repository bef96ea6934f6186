"""Accuracy and fidelity numbers. Every figure in the report comes from here."""

from __future__ import annotations

import math
from typing import Any

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


def channel_snrs(ref: np.ndarray, got: np.ndarray, axis: int | None = None) -> np.ndarray:
    """SNR (dB) of each index along `axis` (default: the smallest non-batch axis), so that a
    slice crushed to zero cannot hide behind a large one sharing the tensor. Channels whose
    reference is all zero are left out (NaN)."""
    if ref.ndim < 2:
        return np.array([snr_db(ref, got)])
    if axis is None:
        axis = 1 + int(np.argmin(ref.shape[1:]))
    r = np.moveaxis(ref.astype(np.float64), axis, -1).reshape(-1, ref.shape[axis])
    g = np.moveaxis(got.astype(np.float64), axis, -1).reshape(-1, ref.shape[axis])
    sig = np.sum(r * r, axis=0)
    noise = np.sum((r - g) ** 2, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = 10.0 * np.log10(sig / noise)
    out[sig == 0.0] = np.nan
    out[(noise == 0.0) & (sig > 0.0)] = np.inf
    return out


def _round(v: float | None) -> float | None:
    if v is None or math.isnan(v) or (math.isinf(v) and v > 0):
        return None  # no measurable error: reported as null, never as a huge number
    return round(v, 2)


def output_fidelity(r: np.ndarray, g: np.ndarray, name: str,
                    axis: int | None = None) -> dict[str, Any]:
    """One output's figures: SNR, max abs error, worst channel, top-1 for class scores."""
    row: dict[str, Any] = {"name": name}
    if r.shape != g.shape:
        if r.size != g.size:
            return {**row, "error": f"output {name} has shape {list(g.shape)}, expected "
                                    f"{list(r.shape)}"}
        g = g.reshape(r.shape)
    if not np.all(np.isfinite(g)):
        return {**row, "error": f"output {name} contains NaN or Inf"}
    row["snr_db"] = _round(snr_db(r, g))
    row["max_abs_err"] = round(float(np.max(np.abs(r - g))) if r.size else 0.0, 6)
    chans = channel_snrs(r, g, axis)
    finite = chans[~np.isnan(chans)]
    if finite.size:
        worst = int(np.nanargmin(chans))
        row["worst_channel"], row["worst_channel_snr_db"] = worst, _round(float(chans[worst]))
        row["channels"] = int(chans.size)
    if is_classifier(r):
        row["top1_agreement"] = float(np.mean(r.argmax(-1) == g.argmax(-1)))
    else:
        row["top1_agreement"] = None
        row["note"] = "top-1 agreement: n/a, not class scores (rank-2 [batch, classes] only)"
    return row


def fidelity(ref: list[np.ndarray], got: list[np.ndarray], names: list[str] | None = None,
             axis: int | None = None) -> dict[str, Any]:
    """Per-output figures, and the worst of them (what verification and gates read):
    lowest top-1 agreement over class-score outputs, largest max-abs error, lowest SNR,
    lowest per-channel SNR."""
    if len(ref) != len(got):
        return {"top1_agreement": None, "max_abs_err": None, "snr_db": None,
                "error": f"{len(got)} outputs, expected {len(ref)}"}
    names = names if names and len(names) == len(ref) else [f"output_{i}" for i in range(len(ref))]
    outputs = [output_fidelity(r, g, n, axis) for r, g, n in zip(ref, got, names, strict=True)]
    errors = [o["error"] for o in outputs if "error" in o]
    if errors:
        bad_values = any("NaN" in e for e in errors)
        return {"top1_agreement": 0.0, "max_abs_err": math.inf if bad_values else None,
                "snr_db": -math.inf if bad_values else None, "error": "; ".join(errors),
                "outputs": outputs}

    def worst(key: str, pick: Any) -> Any:
        values = [o[key] for o in outputs if o.get(key) is not None]
        return pick(values) if values else None

    # An output with no measurable error reports snr null; the worst is then the others'.
    return {"top1_agreement": worst("top1_agreement", min),
            "max_abs_err": worst("max_abs_err", max), "snr_db": worst("snr_db", min),
            "worst_channel_snr_db": worst("worst_channel_snr_db", min), "outputs": outputs}


#: A quantized graph below this SNR on any output (or output channel) is not one to ship
#: when another route may do better; also the default floor of the evaluate stage.
QUANT_FLOOR_DB = 10.0


def below_floor(fid: dict[str, Any], floor_db: float) -> str | None:
    """Why these outputs fall below the quality floor, or None. Every output is held by its
    worst channel, so a crushed slice of a mixed tensor shows (a detector's scores
    concatenated with its boxes look like class scores by shape alone)."""
    for o in fid.get("outputs") or []:
        value, what = o.get("worst_channel_snr_db", o.get("snr_db")), "SNR"
        if o.get("worst_channel") is not None and o.get("channels", 1) > 1:
            what = f"SNR of channel {o['worst_channel']}"
        if value is not None and value < floor_db:
            return f"output {o['name']}: {what} {value:.1f} dB < {floor_db:.0f} dB"
    return None


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
