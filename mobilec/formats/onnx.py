"""ONNX: tf2onnx from the tf_keras model (or a SavedModel), run with onnxruntime."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from mobilec.delegates.opcompat import onnx_compat
from mobilec.delegates.snippets import kotlin_ort
from mobilec.errors import ConversionError, UnsupportedError
from mobilec.formats.kept_float import kept_nodes, note_kept_float
from mobilec.formats.onnx_quant import quantize_onnx
from mobilec.formats.runtime import measure_latency, ort_session, ort_session_runner
from mobilec.state import Artifact, ModelState
from mobilec.util.tfenv import import_tf

PRECISION = {
    "float32": "float32 weights and compute",
    "float16": "float16 weights and compute",
    "dynamic": "int8 weights (dynamic quantization)",
    "int8": "int8 QDQ weights and activations, float32 I/O",
}


class OnnxFormat:
    name = "onnx"
    suffix = ".onnx"

    def build(self, state: ModelState, artifact: Artifact, dest: Path) -> None:
        float_path = float32_onnx(state)
        mode = artifact.quantization
        if mode == "float32":
            shutil.copyfile(float_path, dest)
        else:
            # keep_float: the plan's float layers stay out of quantization.
            quantize_onnx(state, float_path, mode, dest,
                          nodes_to_exclude=kept_nodes(state, "onnx", mode))
        artifact.precision = PRECISION.get(mode, mode)
        note_kept_float(state, artifact)
        artifact.input_layout = state.input_layout

    def runner(self, state: ModelState, artifact: Artifact) -> Any:
        return ort_session_runner(artifact.path, state.outputs, artifact.input_transpose)

    def latency(self, state: ModelState, artifact: Artifact, sample: np.ndarray) -> dict[str, float]:
        sess, in_name = ort_session(artifact.path)
        x1 = sample[:1]
        if artifact.input_transpose:
            x1 = np.transpose(x1, artifact.input_transpose)
        feed = {in_name: x1.astype(np.float32)}
        return measure_latency(lambda: sess.run(None, feed))

    def describe_io(self, path: Path) -> dict[str, list[dict[str, Any]]]:
        return describe_io(path)

    def op_compat(self, path: Path, delegate: str | None) -> dict[str, Any]:
        return onnx_compat(path)

    def loader_snippet(self, artifact: Artifact, manifest: dict[str, Any]) -> tuple[str, str]:
        return "kotlin", kotlin_ort(artifact, manifest)


def float32_onnx(state: ModelState) -> Path:
    """The float32 .onnx of the current model, converted once per model version."""
    key = "onnx_float32"
    if key in state.memo:
        return state.memo[key]
    if state.onnx_path is not None:
        state.memo[key] = state.onnx_path  # an ONNX input passes through
        return state.onnx_path
    out = state.work_dir / f"float32-v{state.model_version}.onnx"
    opset = _opset(state)

    tf = import_tf()
    import tf2onnx

    try:
        if state.keras_model is not None:
            model = state.keras_model
            spec = [tf.TensorSpec([None if i == 0 else d for i, d in enumerate(t.shape)],
                                  tf.float32, name=t.name) for t in state.inputs]
            tf2onnx.convert.from_keras(model, input_signature=spec, opset=opset,
                                       output_path=str(out))
        elif state.graph_dir is not None:
            loaded = tf.saved_model.load(str(state.graph_dir))
            fn = loaded.signatures["serving_default"]
            (name, spec), = fn.structured_input_signature[1].items()
            # tf2onnx wants a tf.function; a signature is a bare ConcreteFunction.
            wrapped = tf.function(lambda x: fn(**{name: x}),
                                  input_signature=[tf.TensorSpec(spec.shape, spec.dtype, name=name)])
            tf2onnx.convert.from_function(wrapped, input_signature=wrapped.input_signature,
                                          opset=opset, output_path=str(out))
        else:
            raise UnsupportedError("no TensorFlow form of the model is available for tf2onnx")
    except UnsupportedError:
        raise
    except Exception as exc:  # noqa: BLE001 - tf2onnx raises many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        raise ConversionError(f"tf2onnx failed: {first[:400]}") from exc
    state.memo[key] = out
    return out


def _opset(state: ModelState) -> int:
    cfg = state.recipe.stage("convert")
    return cfg.opset if cfg is not None else 17


def describe_io(path: Path) -> dict[str, list[dict[str, Any]]]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}

    def row(v: Any) -> dict[str, Any]:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in t.shape.dim]
        return {"name": v.name, "shape": dims,
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name}

    return {"inputs": [row(v) for v in graph.input if v.name not in inits],
            "outputs": [row(v) for v in graph.output]}
