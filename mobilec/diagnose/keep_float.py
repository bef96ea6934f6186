"""keep_float: full-integer int8 with a few layers left in float (mixed precision).

`keep_float: auto` starts from full int8 and keeps the worst layer of `diagnose`
in float, then the next, one per step, until budget.max_accuracy_drop holds or
the next step would pass the size limit (0.4x the float32 model, or
budget.max_size_bytes when smaller). `keep_float: [names or regexes]` keeps the
layers it names.

The decision is made once, in the quantize stage, on one format (TFLite when
the model has a TensorFlow form, else ONNX), and recorded as layer names in the
plan. Each format then applies it in its own way: TFLite through the
QuantizationDebugger's `denylisted_nodes`, onnxruntime through `nodes_to_exclude`.

"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mobilec.diagnose.common import keras_layer_names, layer_of
from mobilec.diagnose.core import diagnose, pick_backend
from mobilec.errors import UnsupportedError
from mobilec.formats.kept_float import LAYERS_KEY, NODES_KEY
from mobilec.formats.onnx import float32_onnx
from mobilec.formats.onnx_quant import quantize_onnx
from mobilec.formats.runtime import ort_session_runner
from mobilec.formats.tflite import LiteRTRunner
from mobilec.formats.tflite_convert import convert_tflite
from mobilec.formats.tflite_selective import selective_int8
from mobilec.policy.modes import INT8_MODES
from mobilec.policy.targets import plan_artifacts
from mobilec.recipe.schema import QuantizeConfig
from mobilec.sources.onnx2tf_bridge import tf_input_layout
from mobilec.state import Artifact, ModelState
from mobilec.util.fs import size_of

SIZE_LIMIT_RATIO = 0.4  # a mixed model bigger than this has lost most of what int8 is for
MAX_KEPT = 12  # auto never keeps more layers than this in float


# ---------------------------------------------------------------------------- the decision

def resolve_keep_float(state: ModelState, cfg: QuantizeConfig) -> dict[str, Any]:
    """Decide which layers stay float for each int8 format; record it in state.plan.

    Decided on the primary format (TFLite when the model has a TensorFlow form)
    and reused by the other when its graph has the same layers (a Keras model's
    .tflite and .onnx do); otherwise (an ONNX model's onnx2tf .tflite names its
    ops differently) decided again on that format. Returns the stage metrics.
    """

    plan = state.plan
    if plan is None or plan.mode not in INT8_MODES:
        mode = plan.mode if plan else None
        state.note(f"keep_float ignored: the plan quantizes with '{mode}', not full-integer int8")
        return {"keep_float": "ignored"}
    formats = int8_formats(state)
    if not formats:
        return {"keep_float": "ignored"}
    primary = pick_backend(state)
    primary = primary if primary in formats else formats[0]
    kept, steps = _decide(state, cfg, primary)
    decisions: dict[str, list[str]] = {primary: kept}
    metrics: dict[str, Any] = {"keep_float": ", ".join(kept) or "none",
                               "keep_float_backend": primary, "keep_float_steps": steps}
    for fmt in formats:
        if fmt == primary:
            continue
        if all(_nodes(state, fmt, [layer]) for layer in kept):
            decisions[fmt] = kept
        else:
            decisions[fmt], metrics[f"keep_float_steps_{fmt}"] = _decide(state, cfg, fmt,
                                                                        must_match=False)
    plan.options[LAYERS_KEY] = decisions
    # Formats read node names, not layers: resolve them once, here.
    plan.options[NODES_KEY] = {fmt: _nodes(state, fmt, layers) for fmt, layers in decisions.items()}
    metrics["keep_float_formats"] = decisions
    return metrics


def int8_formats(state: ModelState) -> list[str]:
    """The formats among tflite/onnx this recipe builds with full-integer int8."""
    cfg = state.recipe.stage("convert")
    specs = plan_artifacts(list(state.recipe.targets), state.plan.mode,
                           cfg.formats if cfg is not None else None)
    found = {s.format for s in specs if s.quantization in INT8_MODES and not s.skipped_reason}
    return [f for f in ("tflite", "onnx") if f in found]


def _decide(state: ModelState, cfg: QuantizeConfig, fmt: str, must_match: bool = True
            ) -> tuple[list[str], list[dict[str, Any]]]:
    if cfg.keep_float == "auto":
        return _auto(state, fmt, state.plan.mode, lambda: diagnose(state, fmt).layers())
    layers = diagnose(state, fmt).layers()
    patterns = list(cfg.keep_float or [])
    if must_match:
        return match_layers(layers, patterns, state.recipe.source), []
    kept = [n for n in layers if any(n == p or re.fullmatch(p, n) for p in patterns)]
    if patterns and not kept:
        state.note(f"keep_float: no {fmt} layer matches {', '.join(patterns)}; "
                   f"the .{fmt} is full int8 (its layers: {', '.join(layers[:12])})")
    return kept, []


def match_layers(layers: list[str], patterns: list[str], where: str | None = None) -> list[str]:
    """Layers (in the model's ranking order) whose name a pattern matches: exactly, or as a regex."""
    kept: list[str] = []
    for pattern in patterns:
        hits = [n for n in layers if n == pattern or re.fullmatch(pattern, n)]
        if not hits:
            raise UnsupportedError(
                f"quantize.keep_float: {pattern!r} matches no quantized layer", where=where,
                hint="quantized layers: " + ", ".join(layers[:30]) +
                ("" if len(layers) <= 30 else f", … ({len(layers)} in all)") +
                "; `mobilec diagnose RECIPE` lists them worst first")
        kept += [n for n in hits if n not in kept]
    return kept


def _auto(state: ModelState, backend: str, mode: str, rank: Callable[[], list[str]]
          ) -> tuple[list[str], list[dict[str, Any]]]:
    """Keep the worst layers in float one by one; every step is built and measured.

    `rank` (the diagnosis) runs only when full int8 misses the budget.
    """
    budget = state.recipe.budget
    if budget is None or budget.max_accuracy_drop is None:
        raise UnsupportedError("keep_float: auto needs budget.max_accuracy_drop",
                               where=state.recipe.source)
    if state.eval_y is None or state.reference_accuracy is None:
        raise UnsupportedError("keep_float: auto measures accuracy and the eval data has no labels",
                               where=state.recipe.source, hint="add labels (y) to data.eval, or "
                               "name the layers to keep: keep_float: [layer, …]")
    candidate = _Candidates(state, backend, mode)
    float_size = candidate.float32_size()
    limit = SIZE_LIMIT_RATIO * float_size
    if budget.max_size_bytes is not None:
        limit = min(limit, budget.max_size_bytes)
    steps: list[dict[str, Any]] = []
    ranked: list[str] = []
    for k in range(MAX_KEPT + 1):
        if k == 1:
            ranked = rank()
        if k > len(ranked) and k > 0:
            break
        kept = ranked[:k]
        size, acc = candidate.measure(kept)
        drop = state.reference_accuracy - acc
        steps.append({"step": k, "kept_float": kept, "size_bytes": size,
                      "size_vs_float32": round(size / float_size, 4), "accuracy": acc,
                      "accuracy_drop": round(drop, 6), "within_size": size <= limit})
        if size > limit or drop <= budget.max_accuracy_drop + 1e-9:
            break
    chosen = _choose(steps, budget.max_accuracy_drop)
    chosen["chosen"] = True
    if chosen["accuracy_drop"] > budget.max_accuracy_drop + 1e-9:
        last = steps[-1]
        why = ("the next layer would pass the size limit" if not last["within_size"]
               else "every quantized layer is in float" if len(last["kept_float"]) >= len(ranked)
               else f"auto keeps at most {MAX_KEPT} layers")
        state.note(f"keep_float: auto could not reach max_accuracy_drop "
                   f"{budget.max_accuracy_drop}: {why}; kept "
                   f"{', '.join(chosen['kept_float']) or 'nothing'} in float "
                   f"(drop {chosen['accuracy_drop']:.4f}, size limit {int(limit)} bytes)")
    return list(chosen["kept_float"]), steps


def _choose(steps: list[dict[str, Any]], max_drop: float) -> dict[str, Any]:
    """The first step within budget; else the most accurate within the size limit (fewest kept)."""
    fits = [s for s in steps if s["within_size"]]
    ok = [s for s in fits if s["accuracy_drop"] <= max_drop + 1e-9]
    if ok:
        return ok[0]
    if not fits:
        return steps[0]
    return min(fits, key=lambda s: (s["accuracy_drop"], len(s["kept_float"])))


class _Candidates:
    """Builds and measures one candidate per step, on the decision's format."""
    def __init__(self, state: ModelState, backend: str, mode: str):
        self.state, self.backend, self.mode = state, backend, mode
        self.dir = state.work_dir / "keep-float"
        self.dir.mkdir(parents=True, exist_ok=True)

    def float32_size(self) -> int:
        if self.backend == "tflite":
            return len(convert_tflite(self.state, "float32"))

        return size_of(float32_onnx(self.state))

    def measure(self, kept: list[str]) -> tuple[int, float]:
        path = self.dir / f"{len(kept)}{'.tflite' if self.backend == 'tflite' else '.onnx'}"
        runner = self._build_tflite(path, kept) if self.backend == "tflite" else \
            self._build_onnx(path, kept)
        acc = self.state.label_accuracy(runner(self.state.eval_x))
        return size_of(path), float(acc or 0.0)

    def _build_tflite(self, path: Path, kept: list[str]) -> Any:
        nodes = tflite_nodes(self.state, kept)
        # Nothing kept: the plain converter, byte for byte what the artifact will be.
        path.write_bytes(selective_int8(self.state, self.mode, nodes) if nodes
                         else convert_tflite(self.state, self.mode))
        art = Artifact(path=path, format="tflite", quantization=self.mode)
        if self.state.keras_model is None and self.state.onnx_path is not None:
            art.input_layout, art.input_transpose = tf_input_layout(self.state)
        return LiteRTRunner(art, self.state.outputs, self.state.inputs)

    def _build_onnx(self, path: Path, kept: list[str]) -> Any:
        float_path = float32_onnx(self.state)
        quantize_onnx(self.state, float_path, self.mode, path,
                      nodes_to_exclude=onnx_nodes(self.state, float_path, kept))
        return ort_session_runner(path, self.state.outputs, None, self.state.inputs)


# ---------------------------------------------------------------------------- per format

def _nodes(state: ModelState, fmt: str, layers: list[str]) -> list[str]:
    if fmt == "tflite":
        return tflite_nodes(state, layers)

    return onnx_nodes(state, float32_onnx(state), layers)


def tflite_nodes(state: ModelState, layers: list[str]) -> list[str]:
    """The TFLite op output tensors of these layers (what denylisted_nodes takes)."""
    if not layers:
        return []

    want = set(layers)
    return [r.tensor for r in diagnose(state, "tflite").rows if r.name in want]


def onnx_nodes(state: ModelState, float_path: Path, layers: list[str]) -> list[str]:
    """The ONNX nodes of these layers (what onnxruntime's nodes_to_exclude takes)."""
    if not layers:
        return []
    import onnx

    names = keras_layer_names(state)
    want = set(layers)
    graph = onnx.load(str(float_path), load_external_data=False).graph
    return [n.name for n in graph.node if n.name in want or layer_of(n.name, names) in want]


