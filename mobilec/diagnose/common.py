"""The diagnosis data model and the helpers both engines share (names, severity, SNR)."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from mobilec.diagnose.channels import IMBALANCE_RATIO
from mobilec.state import ModelState

# Uniform rounding noise is scale/sqrt(12) ~ 0.29 scale; the TF guide flags ops far above it.
ROUNDING_RMSE_SCALE = 0.29


@dataclass
class OpError:
    name: str  # the Keras layer the op belongs to (or its graph scope)
    tensor: str  # TFLite: the op's output tensor; ONNX: the node. What selective quantization takes.
    op: str  # op type, e.g. FULLY_CONNECTED, Conv
    rmse_scale: float | None  # RMSE / quantization scale; ~0.29 is pure rounding
    max_abs_error: float
    snr_db: float | None  # None: no measurable error
    scale: float | None = None
    loss_db: float | None = None  # ONNX: SNR this node loses relative to its inputs
    # Per-channel figures of the op's float output (channel: the last axis; ONNX Conv: axis 1).
    range_ratio: float | None = None  # widest channel range / median channel range
    widest_channel: int | None = None
    worst_channel_snr_db: float | None = None  # the int8 output's worst channel
    worst_channel: int | None = None
    cause: str | None = None  # set when this op's output is blamed for damage downstream

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v)
                for k, v in asdict(self).items()}


@dataclass
class Diagnosis:
    backend: str  # tflite | onnx
    mode: str  # the quantization diagnosed (int8)
    samples: int
    scope: str  # "per-op" (each op on the same input as its float twin) | "cumulative"
    rows: list[OpError] = field(default_factory=list)  # worst first

    def as_dict(self, limit: int | None = None) -> dict[str, Any]:
        rows = self.rows if limit is None else self.rows[:limit]
        blamed = [r.name for r in self.rows if r.cause]
        ranked_by = RANKED_BY[self.scope] + (BLAME_NOTE.format(ratio=IMBALANCE_RATIO)
                                             if blamed else "")
        return {"backend": self.backend, "mode": self.mode, "samples": self.samples,
                "scope": self.scope, "ranked_by": ranked_by, "ops": len(self.rows),
                "blamed": list(dict.fromkeys(blamed)),
                "rows": [{"rank": i + 1, **r.as_dict()} for i, r in enumerate(rows)]}

    def layers(self) -> list[str]:
        """Distinct layer names, worst first."""
        return list(dict.fromkeys(r.name for r in self.rows))


RANKED_BY = {"per-op": "snr_db ascending (lowest SNR = worst), then rmse_scale",
             "cumulative": "loss_db descending (SNR the op loses vs its inputs)"}
BLAME_NOTE = ("; an op whose output channel ranges differ more than {ratio:g}x is moved ahead "
              "of the damaged ops that read it (its int8 scale crushes the small channels: the "
              "cause)")
# A reader is damaged below the default verify.min_snr_db (per-op), or when it loses 3 dB
# (cumulative): the same lines diagnose.view draws its red bars at.
DAMAGED_SNR_DB = 20.0
DAMAGED_LOSS_DB = 3.0
# Ops that only move or select values: an imbalance they carry is their producer's, and
# blame looks through them to the op that reads the values.
PASSIVE_OPS = frozenset({
    "RESHAPE", "SQUEEZE", "EXPAND_DIMS", "MAX_POOL_2D", "AVERAGE_POOL_2D", "TRANSPOSE", "PAD",
    "CONCATENATION", "STRIDED_SLICE", "SLICE", "GATHER", "QUANTIZE", "DEQUANTIZE",
    "Reshape", "Flatten", "Squeeze", "Unsqueeze", "MaxPool", "AveragePool", "GlobalMaxPool",
    "Transpose", "Pad", "Identity", "Concat", "Slice", "Gather", "QuantizeLinear",
    "DequantizeLinear",
})


def severity(row: OpError) -> tuple[float, float]:
    """Sort key, smaller = worse. An op with no error (SNR None) sorts last."""
    if row.loss_db is not None:
        return (-row.loss_db, -(row.rmse_scale or 0.0))
    snr = math.inf if row.snr_db is None else row.snr_db
    return (snr, -(row.rmse_scale or 0.0))


def snr_db(signal_sq: float, noise_sq: float) -> float | None:
    if noise_sq <= 0.0:
        return None
    if signal_sq <= 0.0:
        return -math.inf
    return 10.0 * math.log10(signal_sq / noise_sq)


class ChannelAcc:
    """Running per-channel sums of one op output over samples: the float output's range per
    channel, and each channel's signal and int8-error energy."""
    def __init__(self) -> None:
        self.lo: np.ndarray | None = None
        self.hi: np.ndarray | None = None
        self.sig: np.ndarray | None = None
        self.err: np.ndarray | None = None

    def add(self, got: np.ndarray, ref: np.ndarray, axis: int = -1) -> None:
        if ref.ndim < 2 or got.shape != ref.shape:
            return
        r = np.moveaxis(ref.astype(np.float64), axis, -1).reshape(-1, ref.shape[axis])
        g = np.moveaxis(got.astype(np.float64), axis, -1).reshape(-1, ref.shape[axis])
        lo, hi = r.min(axis=0), r.max(axis=0)
        sig, err = (r ** 2).sum(axis=0), ((g - r) ** 2).sum(axis=0)
        if self.lo is None or self.lo.shape != lo.shape:
            self.lo, self.hi, self.sig, self.err = lo, hi, sig, err
            return
        self.lo, self.hi = np.minimum(self.lo, lo), np.maximum(self.hi, hi)
        self.sig, self.err = self.sig + sig, self.err + err

    def figures(self) -> dict[str, Any]:
        """range_ratio (max / median of the live channels' ranges), the widest channel, and the
        worst channel's SNR (channels with no signal are dead, not bad: left out)."""
        if self.lo is None or self.lo.size < 2:
            return {}
        ranges = self.hi - self.lo
        live = ranges[ranges > 0]
        out: dict[str, Any] = {"range_ratio": float(live.max() / np.median(live)) if live.size
                               else 1.0, "widest_channel": int(ranges.argmax())}
        snr = [(snr_db(float(s), float(e)), i) for i, (s, e) in enumerate(zip(
            self.sig, self.err, strict=True)) if s > 0]
        measured = [(v, i) for v, i in snr if v is not None]
        if measured:
            out["worst_channel_snr_db"], out["worst_channel"] = min(measured)
        return out


def blame(rows: list[OpError], consumers: dict[str, list[str]],
          threshold: float = IMBALANCE_RATIO) -> list[OpError]:
    """`rows` (worst first by their own error) with each op whose unbalanced output damages
    its readers moved just ahead of the first damaged reader, and its `cause` set.

    An op is blamed when its output channel ranges differ more than `threshold` and a row
    reading its output (consumers: op tensor -> reader tensors, through_passive) is damaged
    (below 20 dB SNR per-op, or losing 3 dB or more cumulatively) and ranks ahead of it. The
    error of an unbalanced tensor shows in its readers (their input lost the small
    channels), while its own tensor SNR looks fine (the huge channel dominates signal and
    noise alike): ranked by error alone, the cause would come after its effect.
    """
    order = list(rows)
    by_tensor = {r.tensor: r for r in rows}
    if len(by_tensor) != len(rows):
        return order  # op names not unique: cannot say who reads whom
    culprits = sorted((r for r in rows if r.range_ratio is not None and r.op not in PASSIVE_OPS
                       and r.range_ratio > threshold), key=lambda r: -(r.range_ratio or 0.0))
    for r in culprits:
        at = order.index(r)
        hurt = [by_tensor[c] for c in consumers.get(r.tensor, [])
                if c in by_tensor and _damaged(by_tensor[c]) and order.index(by_tensor[c]) < at]
        if not hurt:
            continue
        first = min(order.index(h) for h in hurt)
        order.remove(r)
        order.insert(first, r)
        readers = ", ".join(dict.fromkeys(h.name for h in hurt))
        r.cause = (f"output channel ranges differ {r.range_ratio:.0f}x (widest: channel "
                   f"{r.widest_channel}); one int8 scale for the whole tensor crushes the other "
                   f"channels, and {readers} reading it lose the signal; try "
                   "quantize.equalize: auto")
    return order


def _damaged(r: OpError) -> bool:
    if r.loss_db is not None:
        return r.loss_db >= DAMAGED_LOSS_DB
    return r.snr_db is not None and r.snr_db < DAMAGED_SNR_DB


def layer_of(tensor: str, layer_names: set[str]) -> str:
    """The Keras layer an op output belongs to.

    Converters name a fused op after all the TF ops it absorbed, e.g.
    'model/embed/MatMul;model/embed/Relu;model/embed/BiasAdd'; the first path
    part that is a layer of the model names it. Without layer names (a plain
    SavedModel or ONNX), the scope of the first part (its path minus the op) does.
    """
    first = re.split(r"[;]", tensor)[0]
    parts = first.split("/")
    for part in parts:
        if part in layer_names:
            return part
    for part in tensor.replace(";", "/").split("/"):
        if part in layer_names:
            return part
    if len(parts) > 1:
        return "/".join(parts[:-1])
    return first


def keras_layer_names(state: ModelState) -> set[str]:
    model = state.keras_model
    return {layer.name for layer in model.layers} if model is not None else set()
