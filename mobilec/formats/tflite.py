"""TensorFlow Lite: TFLite converter for float and PTQ modes, run with LiteRT."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mobilec.errors import ConversionError, UnsupportedError
from mobilec.formats.runtime import align_outputs, batched, measure_latency
from mobilec.state import Artifact, ModelState

PRECISION = {
    "float32": "float32 weights and compute",
    "float16": "float16 weights, float32 compute on CPU",
    "dynamic": "int8 weights, float activations (dynamic range)",
    "int8": "int8 weights and activations, float32 I/O",
    "int8-io": "int8 weights, activations and I/O",
    "int16x8": "int8 weights, int16 activations",
    "int4": "int4 weights, float activations",
    "qat": "int8 weights and activations (quantization-aware trained), float32 I/O",
}


class TFLiteFormat:
    name = "tflite"
    suffix = ".tflite"
    modes = frozenset({"float32", "float16", "dynamic", "int8", "int8-io", "int16x8", "int4", "qat"})

    def build(self, state: ModelState, artifact: Artifact, dest: Path) -> None:
        mode = artifact.quantization
        if mode == "int4":
            from mobilec.formats.tflite_int4 import build_int4

            build_int4(state, artifact, dest)
        else:
            # keep_float: int8 with a few layers left in float; otherwise the plain converter.
            from mobilec.diagnose.keep_float import mixed_tflite, note_kept_float

            dest.write_bytes(mixed_tflite(state, mode) or convert_tflite(state, mode))
        artifact.precision = PRECISION.get(mode, mode)
        if mode != "int4":
            note_kept_float(state, artifact)
        # An ONNX input reaches TF through onnx2tf, which may change the layout (NCHW -> NHWC).
        from mobilec.sources.onnx2tf_bridge import tf_input_layout

        artifact.input_layout, artifact.input_transpose = tf_input_layout(state)
        if mode == "int8-io":
            artifact.io_quant = read_io_quant(dest)

    def runner(self, state: ModelState, artifact: Artifact) -> Any:
        return LiteRTRunner(artifact, state.outputs)

    def latency(self, state: ModelState, artifact: Artifact, sample: np.ndarray) -> dict[str, float]:
        return LiteRTRunner(artifact, state.outputs).latency(sample)


def representative_dataset(state: ModelState) -> Any:
    if state.data is None or state.data.calibration is None:
        raise UnsupportedError(
            "full-integer quantization needs calibration data and the recipe has none",
            hint="add a data: section (train or eval), or use quantize mode dynamic or float16")
    from mobilec.sources.onnx2tf_bridge import to_tf_layout

    x = to_tf_layout(state, state.data.calibration.x.astype("float32"))

    def gen() -> Iterator[list[np.ndarray]]:
        for i in range(len(x)):
            yield [x[i:i + 1]]

    return gen


def make_converter(state: ModelState) -> Any:
    from mobilec.util.tfenv import import_tf

    tf = import_tf()
    if state.keras_model is not None:
        from mobilec.sources.serving_export import serving_savedmodel

        # The serving function alone: from_keras_model would save the whole tf_keras model
        # first (3x slower on MobileNetV2); same ops, names and outputs.
        serving = serving_savedmodel(state)
        if serving is not None:
            return tf.lite.TFLiteConverter.from_saved_model(str(serving))
        return tf.lite.TFLiteConverter.from_keras_model(state.keras_model)
    if state.graph_dir is None and state.onnx_path is not None:
        from mobilec.sources.onnx2tf_bridge import ensure_graph

        ensure_graph(state)  # ONNX input: onnx2tf's SavedModel, converted on first use
    if state.graph_dir is not None:
        return tf.lite.TFLiteConverter.from_saved_model(str(state.graph_dir))
    raise UnsupportedError("no TensorFlow form of the model is available for the TFLite converter")


def convert_tflite(state: ModelState, mode: str) -> bytes:
    from mobilec.util.tfenv import import_tf

    tf = import_tf()
    conv = make_converter(state)
    if mode == "float16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif mode in ("dynamic", "qat"):
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    elif mode in ("int8", "int8-io"):
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative_dataset(state)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if mode == "int8-io":
            conv.inference_input_type = tf.int8
            conv.inference_output_type = tf.int8
    elif mode == "int16x8":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative_dataset(state)
        conv.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
    elif mode != "float32":
        raise UnsupportedError(f"quantization '{mode}' is not available for .tflite")
    try:
        return conv.convert()
    except Exception as exc:  # noqa: BLE001 - converter errors are many types
        text = str(exc).strip().splitlines()
        msg = next((ln for ln in text if "error" in ln.lower()), text[0] if text else repr(exc))
        raise ConversionError(f"TFLite converter failed ({mode}): {msg[:400]}") from exc


def _interpreter(path: Path) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=str(path), num_threads=1)


def read_io_quant(path: Path) -> dict[str, Any]:
    it = _interpreter(path)
    def q(details: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"name": d["name"], "dtype": np.dtype(d["dtype"]).name,
                 "scale": float(d["quantization"][0]), "zero_point": int(d["quantization"][1])}
                for d in details]
    return {"inputs": q(it.get_input_details()), "outputs": q(it.get_output_details())}


def list_ops(path: Path) -> list[str]:
    """The op name of every operator in a .tflite, in graph order (as LiteRT reads it)."""
    it = _interpreter(path)
    return [d["op_name"] for d in it._get_ops_details()]  # noqa: SLF001 - the only op listing


class LiteRTRunner:
    """Runs a .tflite with LiteRT, 1 thread; quantizes/dequantizes integer I/O."""

    def __init__(self, artifact: Artifact, outputs: list[Any]):
        self.artifact = artifact
        self.outputs = outputs
        self.it = _interpreter(artifact.path)
        sig = self.it.get_signature_list()
        self.sig_key = next(iter(sig)) if sig else None
        if self.sig_key:
            self.runner = self.it.get_signature_runner(self.sig_key)
            self.in_names = list(sig[self.sig_key]["inputs"])
            self.in_details = self.runner.get_input_details()
            self.out_details = self.runner.get_output_details()
        self.input_details = self.it.get_input_details()
        self.output_details = self.it.get_output_details()
        if not self.sig_key:
            # The tensor API below needs allocated tensors (a signature runner allocates itself).
            self.it.allocate_tensors()

    def _prep(self, x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
        if self.artifact.input_transpose:
            x = np.transpose(x, self.artifact.input_transpose)
        dtype = np.dtype(detail["dtype"])
        if dtype.kind in "iu":
            scale, zp = detail["quantization"]
            if scale:
                info = np.iinfo(dtype)
                return np.clip(np.round(x / scale + zp), info.min, info.max).astype(dtype)
        return x.astype(dtype)

    @staticmethod
    def _deq(y: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
        if np.dtype(detail["dtype"]).kind in "iu":
            scale, zp = detail["quantization"]
            if scale:
                return (y.astype(np.float32) - zp) * scale
        return y.astype(np.float32)

    def _invoke_batch(self, x: np.ndarray) -> list[np.ndarray]:
        if self.sig_key:
            name = self.in_names[0]
            res = self.runner(**{name: self._prep(x, self.in_details[name])})
            names = list(res)
            outs = [self._deq(res[n], self.out_details[n]) for n in names]
            return align_outputs(self.outputs, names, outs)
        # No signature: tensor API, one sample at a time (static shapes).
        rows = []
        for i in range(len(x)):
            d = self.input_details[0]
            self.it.set_tensor(d["index"], self._prep(x[i:i + 1], d))
            self.it.invoke()
            rows.append([self._deq(self.it.get_tensor(o["index"]), o) for o in self.output_details])
        outs = [np.concatenate([r[k] for r in rows]) for k in range(len(rows[0]))]
        return align_outputs(self.outputs, [o["name"] for o in self.output_details], outs)

    def __call__(self, x: np.ndarray) -> list[np.ndarray]:
        try:
            return batched(self._invoke_batch, x, size=64)
        except (ValueError, RuntimeError):
            # Some models have a fixed batch of 1: fall back to one sample at a time.
            return batched(self._invoke_batch, x, size=1)

    def latency(self, sample: np.ndarray) -> dict[str, float]:
        # A fresh interpreter: the signature runner holds references that forbid re-allocation.
        it = _interpreter(self.artifact.path)
        d = it.get_input_details()[0]
        x1 = self._prep(sample[:1], d)
        if list(d["shape"]) != list(x1.shape):
            it.resize_tensor_input(d["index"], list(x1.shape))
        it.allocate_tensors()
        it.set_tensor(d["index"], x1)
        return measure_latency(it.invoke)
