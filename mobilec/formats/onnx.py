"""ONNX: tf2onnx from the tf_keras model or a SavedModel's signature (or, as a second
route, from the float32 .tflite), run with onnxruntime. An ONNX source passes through."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from mobilec.delegates.opcompat import onnx_compat
from mobilec.delegates.snippets import kotlin_ort
from mobilec.errors import ConversionError, UnsupportedError, first_line
from mobilec.formats.kept_float import kept_nodes, note_kept_float, route_builders, split_route
from mobilec.formats.onnx_quant import quantize_onnx
from mobilec.formats.onnx_repair import repair_onnx
from mobilec.formats.onnx_tf import function_to_onnx, signature_function
from mobilec.formats.runtime import (
    loaded_saved_model,
    measure_latency,
    ort_feed,
    ort_feed_names,
    ort_session,
    ort_session_runner,
)
from mobilec.formats.tflite_int4 import float32_tflite
from mobilec.formats.torch_onnx import torch_float32_onnx
from mobilec.sources.batch import first_n
from mobilec.sources.onnx_input import reopened
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

    def routes(self, state: ModelState, artifact: Artifact) -> list[tuple[str, Any]]:
        return route_builders(self.build, state, artifact, route_names(state))

    def build(self, state: ModelState, artifact: Artifact, dest: Path,
              route: str | None = None) -> None:
        route, float_outputs = split_route(route)
        float_path = float32_onnx(state, route)
        if route == "onnx-source":
            float_path = reopened(state, float_path)  # dims only the data fixed stay open
        mode = artifact.quantization
        if mode == "float32":
            shutil.copyfile(float_path, dest)
        else:
            # keep_float: the plan's float layers stay out of quantization.
            exclude = kept_nodes(state, "onnx", mode)
            if float_outputs:
                exclude += output_nodes(float_path)
            quantize_onnx(state, float_path, mode, dest, nodes_to_exclude=exclude)
        artifact.precision = PRECISION.get(mode, mode)
        note_kept_float(state, artifact)
        artifact.input_layout = state.input_layout

    def runner(self, state: ModelState, artifact: Artifact) -> Any:
        return ort_session_runner(artifact.path, state.outputs, artifact.input_transpose,
                                  state.inputs)

    def latency(self, state: ModelState, artifact: Artifact, sample: Any) -> dict[str, float]:
        sess, _ = ort_session(artifact.path)
        names = ort_feed_names(sess, [t.name for t in state.inputs])
        feed = ort_feed(sess, names, first_n(sample, 1), artifact.input_transpose,
                        state.inputs)
        return measure_latency(lambda: sess.run(None, feed))

    def describe_io(self, path: Path, artifact: Artifact) -> dict[str, list[dict[str, Any]]]:
        return describe_io(path)

    def op_compat(self, path: Path, artifact: Artifact) -> dict[str, Any]:
        return onnx_compat(path)

    def loader_snippet(self, artifact: Artifact, manifest: dict[str, Any]) -> tuple[str, str]:
        return "kotlin", kotlin_ort(artifact, manifest)


def route_names(state: ModelState) -> list[str]:
    """tf2onnx from the model (Keras, or a SavedModel's serving signature), then tf2onnx from
    the float32 .tflite (its graph has only the signature's inputs: what rescues an export
    with stray captured inputs or one onnxruntime rejects). An ONNX source passes through."""
    if state.torch_program is not None:
        return ["torch-dynamo"]
    if state.onnx_path is not None:
        return ["onnx-source"]
    if state.keras_model is not None:
        return ["tf2onnx-keras", "tf2onnx-tflite"]
    if state.graph_dir is not None:
        return ["tf2onnx-signature", "tf2onnx-tflite"]
    return []


def float32_onnx(state: ModelState, route: str | None = None) -> Path:
    """The float32 .onnx of the current model along `route` (default: the first), converted
    once per model version and route."""
    route = route or (route_names(state) or ["none"])[0]
    key = ("onnx_float32", route)
    if key in state.memo:
        return state.memo[key]
    if route == "onnx-source":
        state.memo[key] = state.onnx_path  # an ONNX input passes through
        return state.onnx_path
    if route == "torch-dynamo":
        state.memo[key] = torch_float32_onnx(state)
        return state.memo[key]
    out = state.work_dir / f"float32-v{state.model_version}-{route}.onnx"
    opset = _opset(state)
    tf = import_tf()
    import tf2onnx

    try:
        if route == "tf2onnx-keras":
            spec = [tf.TensorSpec([None, *t.shape[1:]], _tf_dtype(tf, t.dtype), name=t.name)
                    for t in state.inputs]
            tf2onnx.convert.from_keras(state.keras_model, input_signature=spec, opset=opset,
                                       output_path=str(out))
        elif route == "tf2onnx-signature":
            function_to_onnx(signature_function(loaded_saved_model(state)), out, opset)
        elif route == "tf2onnx-tflite":
            tfl = state.work_dir / f"float32-v{state.model_version}.tflite"
            tfl.write_bytes(float32_tflite(state))
            tf2onnx.convert.from_tflite(str(tfl), opset=opset, output_path=str(out))
        else:
            raise UnsupportedError("no TensorFlow form of the model is available for tf2onnx")
    except UnsupportedError:
        raise
    except Exception as exc:  # noqa: BLE001 - tf2onnx raises many types
        first = first_line(exc, 400)
        raise ConversionError(f"tf2onnx failed: {first[:400]}") from exc
    # tf2onnx writes ops it cannot convert as-is (exact GELU's Erfc, TFLite's GELU): the
    # runtime would reject the whole file.
    repair_onnx(out)
    state.memo[key] = out
    return out


def output_nodes(path: Path) -> list[str]:
    """The nodes that produce the graph's outputs."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    outs = {o.name for o in graph.output}
    return [n.name for n in graph.node if n.name and outs & set(n.output)]


def _tf_dtype(tf: Any, name: str) -> Any:
    return tf.as_dtype("float32" if name in (None, "string") else name)


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
