"""Core ML: `.mlpackage` (mlprogram) or `.mlmodel` (neuralnetwork) via coremltools.

Converted from the tf_keras model, or from the SavedModel's serving function (an ONNX
input reaches here through onnx2tf's SavedModel). The quantize plan is applied the
Core ML way: coremltools.optimize on an mlprogram (int8/int4 linear weights, k-means
palettization), quantization_utils on a neuralnetwork. Weights only: Core ML I/O stays
float32 like the source model's.

Core ML runs only on macOS. Elsewhere an artifact is checked structurally (reloaded
with skip_model_load, I/O names/shapes/dtypes against the source, ops counted) and
its accuracy stays null with the reason; on darwin it is run and measured.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from mobilec.delegates.opcompat import coreml_compat
from mobilec.delegates.snippets import swift
from mobilec.errors import ConversionError, UnsupportedError, first_line
from mobilec.formats.coreml_compress import (
    INT4_BLOCK,
    WEIGHT_THRESHOLD,
    compress_mlprogram,
    compress_neuralnetwork,
)
from mobilec.formats.coreml_source import (
    TFSource,
    register_missing_tf_ops,
    tf_source,
    verify_tf_source,
)
from mobilec.formats.coreml_structure import describe_io, structural_check
from mobilec.formats.coreml_tools import coreml_config, feature_name, import_coremltools, quiet
from mobilec.formats.intermediate import record, require_verified
from mobilec.formats.runtime import align_outputs, batched, measure_latency
from mobilec.formats.torch_routes import QAT_QUANTIZER, qat_to_coreml, torch_to_coreml
from mobilec.policy.coreml import deployment_target
from mobilec.policy.modes import format_modes
from mobilec.recipe.schema import CoreMLConfig
from mobilec.sources import onnx2tf_bridge
from mobilec.sources.batch import as_list
from mobilec.sources.keras_rnn import rnn_layers
from mobilec.sources.pytorch import eager_runner
from mobilec.state import Artifact, ModelState, TensorSpec

NOT_RUN_REASON = "Core ML runtime needs macOS"


def precision_text(mode: str, kind: str, bits: int) -> str:
    compute = "float32" if kind == "mlmodel" or mode == "float32" else "float16"
    # coremltools.optimize skips small tensors; the neuralnetwork quantizer takes every layer
    small = f"tensors < {WEIGHT_THRESHOLD} elements stay float" if kind == "mlpackage" else \
        "every layer"
    text = {
        "float32": "float32 weights and compute",
        "float16": "float16 weights and compute" if kind == "mlpackage" else
                   "float16 weights, float32 compute",
        "int8": f"int8 weights (linear symmetric, per channel; {small}), {compute} compute",
        "int4": f"int4 weights (linear symmetric, blocks of {INT4_BLOCK}; {small}), "
                f"{compute} compute",
        "palettize": f"{bits}-bit palettized weights (k-means lookup table; {small}), "
                     f"{compute} compute",
    }
    return text["int8" if mode in ("dynamic", "qat") else mode]


class CoreMLFormat:
    name = "coreml"
    suffix = ".mlpackage"

    def _build_torch(self, state: ModelState, artifact: Artifact, dest: Path) -> None:
        """coremltools on the ExportedProgram (mlprogram), structural check off macOS."""
        mode = artifact.quantization

        def check(route: str, program: Any) -> None:
            # the decomposed program coremltools is handed, verified once per route
            record(artifact, require_verified(
                state, f"the decomposed ExportedProgram ({route})", route,
                lambda: eager_runner(program.module(), batch_size=state.torch_batch or 256)))

        _, route = torch_to_coreml(state.torch_program, dest, mode, check=check)
        _rename_saved(state, dest)
        artifact.route = route
        artifact.precision = precision_text(mode if mode != "dynamic" else "int8", "mlpackage", 4)
        artifact.input_layout, artifact.input_transpose = state.input_layout, None
        artifact.coreml = {"kind": "mlpackage", "minimum_deployment_target": "coremltools default",
                           "compute_units": state.convert_config.coreml.compute_units}
        if sys.platform != "darwin":
            artifact.not_run_reason = NOT_RUN_REASON

    def _build_qat(self, state: ModelState, artifact: Artifact, dest: Path) -> None:
        """The finalized LinearQuantizer model (training/coreml_qat.py) to an int8 mlpackage.
        That model is the graph the file is built from: verified (quality floor, it is
        quantized) and its eval accuracy measured here, where Core ML cannot run the file."""
        module = state.coreml_qat
        graph = "the finalized QAT model (coremltools.optimize.torch)"
        figures = require_verified(state, graph, id(module), lambda: eager_runner(module),
                                   quantized=True)
        accuracy = state.eval_accuracy(eager_runner(module))
        record(artifact, {**figures, "accuracy": accuracy})
        _, artifact.route = qat_to_coreml(
            module, tuple(as_list(state.sample_inputs(1))), dest,
            [feature_name(t.name) for t in state.inputs],
            [feature_name(t.name) for t in state.outputs], state.torch_batch is None)
        artifact.quantizer = QAT_QUANTIZER
        artifact.precision = "int8 weights (per channel) and activations (quantization-aware " \
                             "trained), float32 compute"
        artifact.input_layout, artifact.input_transpose = state.input_layout, None
        artifact.coreml = {"kind": "mlpackage", "minimum_deployment_target": "iOS17",
                           "compute_units": state.convert_config.coreml.compute_units}
        if accuracy is not None:
            artifact.notes.append(f"accuracy {accuracy} is of {graph}, the graph this "
                                  ".mlpackage is built from (built_from)")
        if sys.platform != "darwin":
            artifact.not_run_reason = NOT_RUN_REASON

    def precheck(self, state: ModelState) -> None:
        """Before any build: a model Core ML cannot be made from is a usage error (exit 2)."""
        if state.keras_model is not None or state.graph_dir is not None or \
                state.torch_program is not None:
            return
        if state.onnx_path is not None:
            return  # reaches TensorFlow through onnx2tf
        raise UnsupportedError(
            "Core ML conversion needs the model in TensorFlow form (Keras or SavedModel); "
            "this ONNX model cannot be converted to TensorFlow here yet",
            where=str(state.recipe.model.path),
            hint="point model.path at the Keras/SavedModel the ONNX came from, or drop target "
                 "ios-coreml (the .onnx artifact runs on iOS with onnxruntime's Core ML EP)")

    def describe_io(self, path: Path, artifact: Artifact) -> dict[str, list[dict[str, Any]]]:
        return describe_io(path)

    def op_compat(self, path: Path, artifact: Artifact) -> dict[str, Any]:
        return coreml_compat(path)

    def loader_snippet(self, artifact: Artifact, manifest: dict[str, Any]) -> tuple[str, str]:
        return "swift", swift(artifact, manifest)

    def build(self, state: ModelState, artifact: Artifact, dest: Path) -> None:
        if state.torch_program is not None and state.coreml_qat is not None and \
                artifact.quantization == "int8":  # the plan's qat, through Core ML's own QAT
            self._build_qat(state, artifact, dest)
            return
        if state.torch_program is not None:
            self._build_torch(state, artifact, dest)
            return
        cfg = coreml_config(state)
        mode = artifact.quantization
        if mode not in format_modes("coreml"):
            raise UnsupportedError(f"quantization '{mode}' is not available for Core ML")
        bits = int((state.plan.options if state.plan else {}).get("bits", 4))
        target = deployment_target(cfg, mode)
        with quiet(state):
            if cfg.kind == "mlpackage":
                base = _converted(state, cfg, "float32" if mode == "float32" else "float16",
                                  target)
                model = compress_mlprogram(base, mode, bits)
            else:
                model = compress_neuralnetwork(_converted(state, cfg, "float32", target), mode,
                                                bits)
            _describe(state, model, cfg, mode)
            model.save(str(dest))
        for figures in tf_source(state).verified:  # the intermediate graphs it stands on
            record(artifact, figures)
        artifact.precision = precision_text(mode, cfg.kind, bits)
        artifact.input_layout, artifact.input_transpose = _layout(state)
        artifact.coreml = {"kind": cfg.kind, "minimum_deployment_target": target or
                                    "coremltools default", "compute_units": cfg.compute_units}
        if sys.platform != "darwin":
            artifact.not_run_reason = NOT_RUN_REASON

    def runner(self, state: ModelState, artifact: Artifact) -> Any:
        if sys.platform != "darwin":
            artifact.not_run_reason = NOT_RUN_REASON
            return None
        model = _load_for_prediction(state, artifact)
        if model is None:
            return None
        in_name, out_names = _io_names(model)

        def run(x: np.ndarray) -> list[np.ndarray]:
            if artifact.input_transpose:
                x = np.transpose(x, artifact.input_transpose)
            rows = [model.predict({in_name: x[i:i + 1].astype(np.float32)}) for i in range(len(x))]
            outs = [np.concatenate([np.asarray(r[n], dtype=np.float32).reshape(1, -1) for r in rows])
                    for n in out_names]
            outs = [o.reshape((len(x), *[d or 1 for d in spec.shape[1:]])) if spec.shape else o
                    for o, spec in zip(outs, state.outputs, strict=False)]
            return align_outputs(state.outputs, out_names, outs)

        return lambda x: batched(run, x, size=64)

    def latency(self, state: ModelState, artifact: Artifact, sample: np.ndarray
                ) -> dict[str, float] | None:
        if sys.platform != "darwin":
            return None
        model = _load_for_prediction(state, artifact)
        if model is None:
            return None
        in_name, _ = _io_names(model)
        x1 = sample[:1]
        if artifact.input_transpose:
            x1 = np.transpose(x1, artifact.input_transpose)
        feed = {in_name: x1.astype(np.float32)}
        return measure_latency(lambda: model.predict(feed))

    def structural_check(self, state: ModelState, artifact: Artifact) -> None:
        """Off macOS: reload the saved spec and hold it against the source model."""
        structural_check(state, artifact)


# ----------------------------------------------------------------------------- helpers


def _layout(state: ModelState) -> tuple[str, tuple[int, ...] | None]:
    return onnx2tf_bridge.tf_input_layout(state)


def _converted(state: ModelState, cfg: CoreMLConfig, precision: str, target: str | None) -> Any:
    """The model converted once per (model version, kind, precision, deployment target)."""
    key = ("coreml_base", state.model_version, cfg.kind, precision, target)
    if key in state.memo:
        return state.memo[key]
    ct = import_coremltools()
    register_missing_tf_ops()
    src = _checked(state, tf_source(state))
    order = src.order
    kwargs: dict[str, Any] = {
        "source": "tensorflow",
        "convert_to": "mlprogram" if cfg.kind == "mlpackage" else "neuralnetwork",
        # every input named: with several, coremltools cannot tell them apart otherwise
        "inputs": [ct.TensorType(name=name, shape=tuple(shape), dtype=dtype)
                   for name, shape, dtype in src.inputs],
    }
    if target is not None:
        kwargs["minimum_deployment_target"] = getattr(ct.target, target)
    if cfg.kind == "mlpackage":
        kwargs["compute_precision"] = (ct.precision.FLOAT16 if precision == "float16"
                                       else ct.precision.FLOAT32)
        # float16 compute must not turn the app-facing I/O into float16
        # (several outputs must be named: a TF function's are Identity, Identity_1, …)
        kwargs["outputs"] = [ct.TensorType(dtype=np.float32) for _ in order] if len(order) == 1 \
            else [ct.TensorType(name="Identity" + (f"_{i}" if i else ""), dtype=np.float32)
                  for i in range(len(order))]
    try:
        model = ct.convert([src.function], **kwargs)
    except Exception as exc:  # noqa: BLE001 - the converter raises many types
        if not rnn_layers(state.keras_model):
            raise ConversionError(f"coremltools could not convert the model: "
                                  f"{first_line(exc, 400)}") from exc
        # RNN while loops (masked, bidirectional) trip coremltools: the same model unrolled
        try:
            src = _checked(state, tf_source(state, unroll=True), unroll=True)
            model = ct.convert([src.function], **kwargs)
        except Exception as exc2:  # noqa: BLE001 - the converter raises many types
            raise ConversionError(f"coremltools could not convert the model: "
                                  f"{first_line(exc, 300)}; with its recurrent layers "
                                  f"unrolled: {first_line(exc2, 200)}") from exc2
    model = _rename_io(ct, state, model, order, dict(zip([n for n, _, _ in src.inputs],
                                                          src.features, strict=True)))
    state.memo[key] = model
    return model


def _checked(state: ModelState, src: TFSource, unroll: bool = False) -> TFSource:
    """`src` once its function verified against the source (raises when it differs); its
    figures join the graphs every Core ML artifact built from it stands on."""
    figures = verify_tf_source(state, src, unroll)
    if all(f.get("graph") != figures["graph"] for f in src.verified):
        src.verified.append(figures)
    return src


def _rename_io(ct: Any, state: ModelState, model: Any, order: list[int],
               input_names: dict[str, str]) -> Any:
    """Give the Core ML features the source model's input/output names (and output order).
    input_names: converted input (the TF placeholder's name) -> the source input's name."""
    spec = model.get_spec()
    renames: list[tuple[str, str]] = []
    ins = [i.name for i in spec.description.input]
    renames += [(i, input_names[i]) for i in ins if i in input_names]
    outs = [o.name for o in spec.description.output]

    def identity_index(name: str) -> int:
        m = re.fullmatch(r"Identity(?:_(\d+))?", name)
        return int(m.group(1) or 0) if m else -1

    if len(outs) == len(state.outputs) == len(order) and sorted(order) == list(range(len(order))) \
            and sorted(identity_index(o) for o in outs) == list(range(len(outs))):
        renames += [(o, feature_name(state.outputs[order[identity_index(o)]].name)) for o in outs]
    renames = [(a, b) for a, b in renames if a != b]
    # A neuralnetwork spec leaves output shapes empty; record the source's (batch 1).
    by_name = {feature_name(t.name): t for t in state.outputs}
    filled = [_fill_shape(f, by_name.get(dict(renames).get(f.name, f.name)))
              for f in spec.description.output]
    if not renames and not any(filled):
        return model
    taken = set(ins) | set(outs)
    for old, new in renames:
        if new in taken and new not in dict(renames):
            continue  # would collide with a feature that keeps its name
        ct.utils.rename_feature(spec, old, new)
    if spec.WhichOneof("Type") == "mlProgram":
        return ct.models.MLModel(spec, weights_dir=model.weights_dir, skip_model_load=True)
    return ct.models.MLModel(spec, skip_model_load=True)


def _rename_saved(state: ModelState, dest: Path) -> None:
    """A converted ExportedProgram's features carry the names of its decomposed graph
    (`addmm_42` for the source's `linear` output): give them the source's names, by
    position, so an app addresses them as the model's author named them."""
    ct = import_coremltools()
    model = ct.models.MLModel(str(dest), skip_model_load=True)
    spec = model.get_spec()
    renames = []
    for features, specs in ((spec.description.input, state.inputs),
                            (spec.description.output, state.outputs)):
        if len(features) == len(specs):
            renames += [(f.name, feature_name(t.name)) for f, t in zip(features, specs, strict=True)
                        if f.name != feature_name(t.name)]
    names = {f.name for f in (*spec.description.input, *spec.description.output)}
    renames = [(a, b) for a, b in renames if b not in names]  # never onto a kept name
    # a dynamic-batch program can leave an output's shape empty, as a neuralnetwork does
    filled = [_fill_shape(f, t) for f, t in zip(spec.description.output, state.outputs,
                                                strict=False)]
    if not renames and not any(filled):
        return
    for old, new in renames:
        ct.utils.rename_feature(spec, old, new)
    renamed = ct.models.MLModel(spec, weights_dir=model.weights_dir, skip_model_load=True)
    tmp = dest.with_name(f"{dest.stem}.renamed{dest.suffix}")
    renamed.save(str(tmp))
    shutil.rmtree(dest)
    tmp.rename(dest)


def _fill_shape(feature: Any, t: TensorSpec | None) -> bool:
    """Give an output feature with no shape the source's (batch 1); True when it did."""
    arr = feature.type.multiArrayType
    if t is None or arr.shape or not t.shape or any(d is None for d in t.shape[1:]):
        return False
    arr.shape.extend([1, *t.shape[1:]])
    return True


def _describe(state: ModelState, model: Any, cfg: CoreMLConfig, mode: str) -> None:
    """Model metadata from the recipe, and the delegate hint an app can read."""
    md = state.recipe.metadata
    model.author = md.author or "mobilec"
    model.short_description = md.description or f"{state.recipe.name} ({mode}), made by mobilec"
    if md.version:
        model.version = md.version
    if md.license:
        model.license = md.license
    model.user_defined_metadata["mobilec.quantization"] = mode
    model.user_defined_metadata["mobilec.delegate"] = json.dumps(
        {"delegate": "coreml", "compute_units": cfg.compute_units, "fallback": "CPU_ONLY"})
    spec = model.get_spec()
    for feature, t in zip(spec.description.input, state.inputs, strict=False):
        model.input_description[feature.name] = f"{t.dtype} {t.shape} ({state.input_layout})"
    for feature, t in zip(spec.description.output, state.outputs, strict=False):
        model.output_description[feature.name] = f"{t.dtype} {t.shape}"


def _io_names(model: Any) -> tuple[str, list[str]]:
    spec = model.get_spec()
    return spec.description.input[0].name, [o.name for o in spec.description.output]


def _load_for_prediction(state: ModelState, artifact: Artifact) -> Any:
    ct = import_coremltools()
    units = getattr(ct.ComputeUnit, coreml_config(state).compute_units)
    try:
        return ct.models.MLModel(str(artifact.path), compute_units=units)
    except Exception as exc:  # noqa: BLE001 - a Mac without a usable Core ML framework
        artifact.not_run_reason = f"Core ML could not load the model here: {exc}"[:300]
        return None


