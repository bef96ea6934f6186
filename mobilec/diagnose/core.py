"""diagnose: which ops does int8 hurt, worst first.

One row per quantized op output, measured on the recipe's calibration data:
the op's name (its Keras layer when known), op type, RMSE relative to the
quantization scale, max abs error and SNR in dB. The engines live in
diagnose_tflite (TensorFlow Lite's QuantizationDebugger: each op is compared
with its float twin fed the same input, so a row is that op's own error) and
diagnose_onnx (onnxruntime's qdq_loss_debug: errors accumulate along the graph,
so rows are ranked by the SNR an op loses, not by its SNR).

`mobilec diagnose RECIPE` runs the recipe's stages up to quantization and then
this; `compress --diagnose` adds it as a last stage.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mobilec.errors import UnsupportedError
from mobilec.state import ModelState
from mobilec.util.fs import atomic_write_text

JSON_NAME = "diagnose.json"
BACKENDS = ("tflite", "onnx")
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


def pick_backend(state: ModelState, backend: str | None = None) -> str:
    """TFLite when the model has a TensorFlow form (what mobile int8 ships as), else ONNX."""
    has_tf = state.keras_model is not None or state.graph_dir is not None
    if backend is None:
        backend = "tflite" if has_tf else "onnx"
    if backend not in BACKENDS:
        raise UnsupportedError(f"diagnose backend '{backend}' is not one of {', '.join(BACKENDS)}")
    # An ONNX model still has a .tflite: make_converter goes through onnx2tf for it.
    return backend


def diagnose(state: ModelState, backend: str | None = None) -> Diagnosis:
    """Per-op int8 error of the model as the state holds it (cached per model version)."""
    backend = pick_backend(state, backend)
    if state.data is None or state.data.calibration is None:
        raise UnsupportedError("diagnose runs int8 calibration and the recipe has no data",
                               where=state.recipe.source,
                               hint="add a data: section (train or eval samples)")
    key = ("diagnose", backend, state.model_version)
    if key not in state.cache:
        if backend == "tflite":
            from mobilec.diagnose.tflite_graph import diagnose_tflite

            state.cache[key] = diagnose_tflite(state)
        else:
            from mobilec.diagnose.onnx_graph import diagnose_onnx

            state.cache[key] = diagnose_onnx(state)
    return state.cache[key]


def write_json(diag: Diagnosis, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / JSON_NAME
    atomic_write_text(path, json.dumps(_clean(diag.as_dict()), indent=2) + "\n")
    return path


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def run_recipe(recipe: Any, *, out: str | Path | None = None, backend: str | None = None,
               progress: Any = None, **options: Any) -> tuple[Diagnosis, Path]:
    """`mobilec diagnose`: load, the recipe's stages before quantize, then diagnose.

    Training stages (distill, factorize, prune) run too: the diagnosis must be of
    the model that int8 will actually see.
    """
    from mobilec.errors import StageError
    from mobilec.pipeline import output_dir, run_stage
    from mobilec.policy.plancheck import check_plan
    from mobilec.sources.detect import detect_format
    from mobilec.util.fs import TMP_PREFIX
    from mobilec.util.nativeio import native_quiet
    from mobilec.util.progress import Progress

    progress = progress or Progress(quiet=True)
    check_plan(recipe, detect_format(Path(recipe.model.path), recipe.model.format))
    out_dir = output_dir(recipe, out)
    before = [("load", None)] + [(e.name, e.config) for e in recipe.stages
                                 if e.name not in ("quantize", "convert")]
    with tempfile.TemporaryDirectory(prefix=TMP_PREFIX + "diagnose-") as work:
        state = ModelState(recipe=recipe, out_dir=out_dir, work_dir=Path(work), options=options)
        for name, config in before:
            run_stage(state, name, config, progress)
            if state.stages[-1].status == "failed":
                raise StageError(f"{name} failed: {state.stages[-1].error}")
        progress.stage_start("diagnose")
        start = time.perf_counter()
        with native_quiet(not options.get("verbose")):  # the converter's C++ chatter
            diag = diagnose(state, backend)
        progress.stage_end("diagnose", time.perf_counter() - start, "ok", "")
        return diag, write_json(diag, out_dir)
