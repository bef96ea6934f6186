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

import contextlib
import io
import json
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mobilec.errors import ConversionError, UnsupportedError
from mobilec.formats.runtime import align_outputs, batched, measure_latency
from mobilec.policy.coreml import deployment_target
from mobilec.policy.modes import format_modes
from mobilec.recipe.schema import CoreMLConfig
from mobilec.state import Artifact, ModelState

NOT_RUN_REASON = "Core ML runtime needs macOS"
#: coremltools.optimize leaves smaller weight tensors in float (its default threshold)
WEIGHT_THRESHOLD = 2048
INT4_BLOCK = 32


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

    def precheck(self, state: ModelState) -> None:
        """Before any build: a model Core ML cannot be made from is a usage error (exit 2)."""
        if state.keras_model is not None or state.graph_dir is not None:
            return
        if state.onnx_path is not None and _onnx_bridge() is not None:
            return
        raise UnsupportedError(
            "Core ML conversion needs the model in TensorFlow form (Keras or SavedModel); "
            "this ONNX model cannot be converted to TensorFlow here yet",
            where=str(state.recipe.model.path),
            hint="point model.path at the Keras/SavedModel the ONNX came from, or drop target "
                 "ios-coreml (the .onnx artifact runs on iOS with onnxruntime's Core ML EP)")

    def build(self, state: ModelState, artifact: Artifact, dest: Path) -> None:
        cfg = coreml_config(state)
        mode = artifact.quantization
        if mode not in format_modes("coreml"):
            raise UnsupportedError(f"quantization '{mode}' is not available for Core ML")
        bits = int((state.plan.options if state.plan else {}).get("bits", 4))
        target = deployment_target(cfg, mode)
        with _quiet(state):
            if cfg.kind == "mlpackage":
                base = _converted(state, cfg, "float32" if mode == "float32" else "float16",
                                  target)
                model = _compress_mlprogram(base, mode, bits)
            else:
                model = _compress_neuralnetwork(_converted(state, cfg, "float32", target), mode,
                                                bits)
            _describe(state, model, cfg, mode)
            model.save(str(dest))
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


def coreml_config(state: ModelState) -> CoreMLConfig:
    return state.convert_config.coreml


def import_coremltools() -> Any:
    """coremltools, imported quietly: it warns about untested TF/sklearn versions at import."""
    from mobilec.util.tfenv import import_tf

    import_tf()  # the TF frontend needs TF, and TF must come in through tfenv
    os.environ.setdefault("TQDM_DISABLE", "1")  # conversion progress bars
    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import coremltools
    finally:
        logger.setLevel(level)
    return coremltools


@contextlib.contextmanager
def _quiet(state: ModelState) -> Iterator[None]:
    """coremltools prints progress and per-layer lines; keep stdout clean for --json."""
    if state.options.get("verbose"):
        yield
        return
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


def _onnx_bridge() -> Any:
    try:
        from mobilec.sources import onnx2tf_bridge
    except ImportError:
        return None
    return onnx2tf_bridge if hasattr(onnx2tf_bridge, "ensure_graph") else None


def _layout(state: ModelState) -> tuple[str, tuple[int, ...] | None]:
    bridge = _onnx_bridge()
    if bridge is not None and hasattr(bridge, "tf_input_layout"):
        return bridge.tf_input_layout(state)
    return state.input_layout, None


def feature_name(name: str) -> str:
    """A Core ML feature name from a TF/Keras tensor name (Swift/ObjC need identifiers)."""
    clean = re.sub(r"\W", "_", name.split(":")[0]).strip("_") or "x"
    return clean if not clean[0].isdigit() else f"x_{clean}"


def _source(state: ModelState) -> tuple[Any, list[int], list[int]]:
    """What ct.convert takes, the fixed input shape (batch 1), and for each converted output
    (TF names them Identity, Identity_1, …) the index of the source output it is."""
    from mobilec.util.tfenv import import_tf

    if state.keras_model is None and state.graph_dir is None and state.onnx_path is not None:
        bridge = _onnx_bridge()
        if bridge is None:
            CoreMLFormat().precheck(state)
        bridge.ensure_graph(state)
    spec = state.inputs[0]
    dims = list(spec.shape[1:])
    if any(d is None for d in dims):
        raise UnsupportedError(
            f"Core ML needs fixed input dimensions; the model's input is "
            f"{['?' if d is None else d for d in spec.shape]}",
            where=str(state.recipe.model.path), hint="set model.input_shape, e.g. [1, 224, 224, 3]")
    tf = import_tf()
    if state.keras_model is not None:
        # Our own function around the model, returning a list: its outputs are Identity,
        # Identity_1, … in the model's output order (handing coremltools the Keras model lets
        # it pick an order of its own for several outputs).
        model = state.keras_model

        @tf.function(input_signature=[tf.TensorSpec([1, *dims], tf.float32)])
        def serve(x: Any) -> list[Any]:
            y = model(x, training=False)
            return list(y) if isinstance(y, (list, tuple)) else [y]

        return [serve.get_concrete_function()], [1, *dims], list(range(len(model.outputs)))
    key = ("saved_model", str(state.graph_dir))
    if key not in state.memo:
        state.memo[key] = tf.saved_model.load(str(state.graph_dir))
    fn = state.memo[key].signatures["serving_default"]
    # A SavedModel holds many functions; coremltools wants exactly one: the serving one.
    shape = [1, *[d for d in fn.structured_input_signature[1][
        next(iter(fn.structured_input_signature[1]))].shape[1:]]]
    if any(d is None for d in shape):
        shape = [1, *dims]
    # A signature returns a dict; TF flattens it in sorted key order.
    return [fn], shape, [_source_index(state, key) for key in sorted(fn.structured_outputs)]


def _source_index(state: ModelState, key: str) -> int:
    """Which source output a SavedModel signature key is (keys may be sanitized names)."""
    bridge = _onnx_bridge()
    for i, t in enumerate(state.outputs):
        if key in (t.name, feature_name(t.name)) or (
                bridge is not None and key == bridge.signature_name(t.name)):
            return i
    return next(i for i, t in enumerate(state.outputs) if t.name == key) \
        if any(t.name == key for t in state.outputs) else -1


def _converted(state: ModelState, cfg: CoreMLConfig, precision: str, target: str | None) -> Any:
    """The model converted once per (model version, kind, precision, deployment target)."""
    key = ("coreml_base", state.model_version, cfg.kind, precision, target)
    if key in state.memo:
        return state.memo[key]
    ct = import_coremltools()
    src, shape, order = _source(state)
    kwargs: dict[str, Any] = {
        "source": "tensorflow",
        "convert_to": "mlprogram" if cfg.kind == "mlpackage" else "neuralnetwork",
        "inputs": [ct.TensorType(shape=tuple(shape), dtype=np.float32)],
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
        model = ct.convert(src, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the converter raises many types
        text = str(exc).strip().splitlines()
        raise ConversionError(f"coremltools could not convert the model: "
                              f"{(text[0] if text else type(exc).__name__)[:400]}") from exc
    model = _rename_io(ct, state, model, order)
    state.memo[key] = model
    return model


def _rename_io(ct: Any, state: ModelState, model: Any, order: list[int]) -> Any:
    """Give the Core ML features the source model's input/output names (and output order)."""
    spec = model.get_spec()
    renames: list[tuple[str, str]] = []
    ins = [i.name for i in spec.description.input]
    if len(ins) == len(state.inputs):
        renames += list(zip(ins, [feature_name(t.name) for t in state.inputs], strict=True))
    outs = [o.name for o in spec.description.output]

    def identity_index(name: str) -> int:
        m = re.fullmatch(r"Identity(?:_(\d+))?", name)
        return int(m.group(1) or 0) if m else -1

    if len(outs) == len(state.outputs) == len(order) and sorted(order) == list(range(len(order))) \
            and sorted(identity_index(o) for o in outs) == list(range(len(outs))):
        renames += [(o, feature_name(state.outputs[order[identity_index(o)]].name)) for o in outs]
    renames = [(a, b) for a, b in renames if a != b]
    # A neuralnetwork spec leaves output shapes empty; record the source's (batch 1).
    filled = False
    by_name = {feature_name(t.name): t for t in state.outputs}
    for feature in spec.description.output:
        t = by_name.get(dict(renames).get(feature.name, feature.name))
        if t is None:
            continue
        arr = feature.type.multiArrayType
        if not arr.shape and t.shape and all(d is not None for d in t.shape[1:]):
            arr.shape.extend([1, *t.shape[1:]])
            filled = True
    if not renames and not filled:
        return model
    taken = set(ins) | set(outs)
    for old, new in renames:
        if new in taken and new not in dict(renames):
            continue  # would collide with a feature that keeps its name
        ct.utils.rename_feature(spec, old, new)
    if spec.WhichOneof("Type") == "mlProgram":
        return ct.models.MLModel(spec, weights_dir=model.weights_dir, skip_model_load=True)
    return ct.models.MLModel(spec, skip_model_load=True)


def _compress_mlprogram(base: Any, mode: str, bits: int) -> Any:
    if mode in ("float32", "float16"):
        return base
    import coremltools.optimize as cto

    opt = cto.coreml
    if mode in ("dynamic", "int8", "qat"):
        config = opt.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8",
                                             granularity="per_channel",
                                             weight_threshold=WEIGHT_THRESHOLD)
        return opt.linear_quantize_weights(base, opt.OptimizationConfig(global_config=config))
    if mode == "int4":
        config = opt.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int4",
                                             granularity="per_block", block_size=INT4_BLOCK,
                                             weight_threshold=WEIGHT_THRESHOLD)
        return opt.linear_quantize_weights(base, opt.OptimizationConfig(global_config=config))
    if mode == "palettize":
        config = opt.OpPalettizerConfig(mode="kmeans", nbits=bits,
                                        weight_threshold=WEIGHT_THRESHOLD)
        return opt.palettize_weights(base, opt.OptimizationConfig(global_config=config))
    raise UnsupportedError(f"quantization '{mode}' is not available for Core ML")


def _compress_neuralnetwork(base: Any, mode: str, bits: int) -> Any:
    if mode == "float32":
        return base
    from coremltools.models.neural_network import quantization_utils as qu

    if mode == "float16":
        return qu.quantize_weights(base, nbits=16)
    if mode in ("dynamic", "int8", "qat"):
        return qu.quantize_weights(base, nbits=8, quantization_mode="linear")
    if mode == "int4":
        return qu.quantize_weights(base, nbits=4, quantization_mode="linear")
    if mode == "palettize":
        # coremltools' own "kmeans" mode writes a 2-D table into a 1-D proto field under
        # numpy 2; the same k-means through a custom LUT function avoids that bug.
        return qu.quantize_weights(base, nbits=bits, quantization_mode="custom_lut",
                                   lut_function=_kmeans_lut)
    raise UnsupportedError(f"quantization '{mode}' is not available for Core ML")


def _kmeans_lut(nbits: int, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from coremltools.models.neural_network.quantization_utils import (
        _get_kmeans_lookup_table_and_weight,
    )

    lut, qw = _get_kmeans_lookup_table_and_weight(nbits, weights)
    return np.asarray(lut, dtype=np.float32).reshape(-1), qw


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


# ----------------------------------------------------------------------------- structure

_DTYPES = {65568: "float32", 65552: "float16", 131104: "int32", 65600: "float64"}


def describe_io(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Names, shapes and dtypes of a saved Core ML model's inputs and outputs."""
    ct = import_coremltools()
    spec = ct.utils.load_spec(str(path))

    def feat(f: Any) -> dict[str, Any]:
        arr = f.type.multiArrayType
        return {"name": f.name, "shape": [int(d) for d in arr.shape],
                "dtype": _DTYPES.get(arr.dataType, str(arr.dataType))}

    return {"inputs": [feat(f) for f in spec.description.input],
            "outputs": [feat(f) for f in spec.description.output]}


def structural_check(state: ModelState, artifact: Artifact) -> None:
    from mobilec.delegates.opcompat import coreml_program_ops

    ct = import_coremltools()
    problems: list[str] = []
    try:
        with _quiet(state):
            ct.models.MLModel(str(artifact.path), skip_model_load=True)
        io_ = describe_io(artifact.path)
        ops = coreml_program_ops(artifact.path)
    except Exception as exc:  # noqa: BLE001 - a spec that does not reload failed verification
        artifact.status = "failed-verification"
        artifact.error = f"the Core ML model does not reload: {str(exc).strip()[:300]}"
        return
    for kind, want, got in (("input", state.inputs, io_["inputs"]),
                            ("output", state.outputs, io_["outputs"])):
        if len(want) != len(got):
            problems.append(f"{len(got)} {kind}s, source has {len(want)}")
            continue
        named = {g["name"]: g for g in got}
        for i, w in enumerate(want):
            shape = [1, *w.shape[1:]]
            if kind == "input" and artifact.input_transpose:
                shape = [shape[k] for k in artifact.input_transpose]
            # Core ML matches features by name; a lone feature may only be misnamed
            g = named.get(feature_name(w.name)) or (got[i] if len(got) == 1 else None)
            if g is None or g["name"] != feature_name(w.name):
                has = ", ".join(f"'{n}'" for n in named)
                problems.append(f"no {kind} named '{feature_name(w.name)}' (has {has})")
                if g is None:
                    continue
            if any(d is not None and d != s for d, s in zip(shape, g["shape"], strict=False)) \
                    or len(shape) != len(g["shape"]):
                problems.append(f"{kind} '{g['name']}' has shape {g['shape']}, source {shape}")
            if g["dtype"] != "float32":
                problems.append(f"{kind} '{g['name']}' is {g['dtype']}, source float32")
    if not ops:
        problems.append("the Core ML program has no ops")
    artifact.verification = {"against": "source model structure (no Core ML runtime "
                                      "on this host)", "inputs": io_["inputs"],
                                      "outputs": io_["outputs"], "ops": len(ops)}
    if problems:
        artifact.status = "failed-verification"
        artifact.error = "Core ML structure differs from the source model: " + "; ".join(problems)
