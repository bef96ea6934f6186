"""The diagnosis data model and the helpers both engines share (names, severity, SNR)."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

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
        return {"backend": self.backend, "mode": self.mode, "samples": self.samples,
                "scope": self.scope, "ranked_by": RANKED_BY[self.scope], "ops": len(self.rows),
                "rows": [{"rank": i + 1, **r.as_dict()} for i, r in enumerate(rows)]}

    def layers(self) -> list[str]:
        """Distinct layer names, worst first."""
        return list(dict.fromkeys(r.name for r in self.rows))


RANKED_BY = {"per-op": "snr_db ascending (lowest SNR = worst), then rmse_scale",
             "cumulative": "loss_db descending (SNR the op loses vs its inputs)"}


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
