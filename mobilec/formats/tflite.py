"""TensorFlow Lite: TFLite converter for float and PTQ modes, run with LiteRT."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mobilec.delegates.opcompat import tflite_compat, tflite_ops
from mobilec.delegates.snippets import kotlin_tflite
from mobilec.formats.kept_float import kept_nodes, note_kept_float, route_builders, split_route
from mobilec.formats.runtime import align_outputs, batched, measure_latency
from mobilec.formats.tflite_convert import convert_tflite, route_names
from mobilec.formats.tflite_int4 import build_int4
from mobilec.formats.tflite_selective import selective_int8
from mobilec.sources.batch import as_list, match_names
from mobilec.sources.onnx2tf_bridge import tf_input_layout
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

    def routes(self, state: ModelState, artifact: Artifact) -> list[tuple[str, Any]]:
        names = route_names(state)
        # litert_torch cannot keep ops in float: the retry goes through onnx2tf's graph
        return route_builders(self.build, state, artifact, names,
                              "onnx2tf" if "onnx2tf" in names else None)

    def build(self, state: ModelState, artifact: Artifact, dest: Path,
              route: str | None = None) -> None:
        mode = artifact.quantization
        route, float_outputs = split_route(route)
        if mode == "int4":
            build_int4(state, artifact, dest, route)
        else:
            # keep_float: int8 with a few layers left in float; otherwise the plain converter.
            nodes = kept_nodes(state, "tflite", mode)
            if float_outputs:
                nodes += [d["name"] for d in interpreter_of(
                    convert_tflite(state, "float32", route)).get_output_details()]
            # keep_float's node names are the first route's; the float-outputs retry names
            # its own route's outputs
            dest.write_bytes(selective_int8(state, mode, nodes, route if float_outputs else None)
                             if nodes
                             else convert_tflite(state, mode, route))
        artifact.precision = PRECISION.get(mode, mode)
        if mode != "int4":
            note_kept_float(state, artifact)
        # An ONNX input reaches TF through onnx2tf, which may change the layout (NCHW -> NHWC).

        if route == "litert-torch":  # the module's own layout, no bridge in between
            artifact.input_layout, artifact.input_transpose = state.input_layout, None
        else:
            artifact.input_layout, artifact.input_transpose = tf_input_layout(state)
        if mode == "int8-io":
            artifact.io_quant = read_io_quant(dest)

    def runner(self, state: ModelState, artifact: Artifact) -> Any:
        return LiteRTRunner(artifact, state.outputs, state.inputs)

    def latency(self, state: ModelState, artifact: Artifact, sample: np.ndarray) -> dict[str, float]:
        return LiteRTRunner(artifact, state.outputs, state.inputs).latency(sample)

    def describe_io(self, path: Path, artifact: Artifact) -> dict[str, list[dict[str, Any]]]:
        return describe_io(path)

    def op_compat(self, path: Path, artifact: Artifact) -> dict[str, Any]:
        return tflite_compat(path, artifact.delegate)

    def loader_snippet(self, artifact: Artifact, manifest: dict[str, Any]) -> tuple[str, str]:
        return "kotlin", kotlin_tflite(artifact, manifest)


def interpreter_of(model: bytes) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_content=model, num_threads=1)


def interpreter(path: Path) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=str(path), num_threads=1)


def read_io_quant(path: Path) -> dict[str, Any]:
    it = interpreter(path)
    def q(details: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"name": d["name"], "dtype": np.dtype(d["dtype"]).name,
                 "scale": float(d["quantization"][0]), "zero_point": int(d["quantization"][1])}
                for d in details]
    return {"inputs": q(it.get_input_details()), "outputs": q(it.get_output_details())}


def list_ops(path: Path) -> list[str]:
    """The op name of every operator in a .tflite, in graph order (as LiteRT reads it)."""
    return [op.name for op in tflite_ops(path)]


class LiteRTRunner:
    """Runs a .tflite with LiteRT, 1 thread; quantizes/dequantizes integer I/O. Inputs go in
    by signature name (matched to the model's), integer inputs as they are."""

    def __init__(self, artifact: Artifact, outputs: list[Any], inputs: list[Any] | None = None):
        self.artifact = artifact
        self.outputs = outputs
        self.it = interpreter(artifact.path)
        sig = self.it.get_signature_list()
        self.sig_key = next(iter(sig)) if sig else None
        want = [t.name for t in inputs] if inputs else []
        if self.sig_key:
            self.runner = self.it.get_signature_runner(self.sig_key)
            have = list(sig[self.sig_key]["inputs"])
            matched = match_names(want, have) if len(want) == len(have) > 1 else [None]
            self.in_names = have if None in matched else [m for m in matched if m]
            self.in_details = self.runner.get_input_details()
            self.out_details = self.runner.get_output_details()
        self.input_details = self.it.get_input_details()
        self.output_details = self.it.get_output_details()
        if not self.sig_key:
            # The tensor API below needs allocated tensors (a signature runner allocates itself).
            self.it.allocate_tensors()

    def _prep(self, x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
        perm = self.artifact.input_transpose
        if perm and x.ndim == len(perm) and x.dtype.kind == "f":
            x = np.transpose(x, perm)
        dtype = np.dtype(detail["dtype"])
        if dtype.kind in "iu" and x.dtype.kind == "f":
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

    def _invoke_batch(self, x: Any) -> list[np.ndarray]:
        parts = as_list(x)
        if self.sig_key:
            feed = {n: self._prep(a, self.in_details[n])
                    for n, a in zip(self.in_names, parts, strict=True)}
            res = self.runner(**feed)
            names = list(res)
            outs = [self._deq(res[n], self.out_details[n]) for n in names]
            return align_outputs(self.outputs, names, outs)
        # No signature: tensor API, one sample at a time (static shapes).
        rows = []
        for i in range(len(parts[0])):
            for d, a in zip(self.input_details, parts, strict=True):
                self.it.set_tensor(d["index"], self._prep(a[i:i + 1], d))
            self.it.invoke()
            rows.append([self._deq(self.it.get_tensor(o["index"]), o) for o in self.output_details])
        outs = [np.concatenate([r[k] for r in rows]) for k in range(len(rows[0]))]
        return align_outputs(self.outputs, [o["name"] for o in self.output_details], outs)

    def __call__(self, x: Any) -> list[np.ndarray]:
        if any(list(d.get("shape_signature", d["shape"]))[:1] == [1] for d in self.input_details):
            # Built with a fixed batch of 1 (the fixed-batch RNN route): resizing it may be
            # refused or, worse, accepted by ops whose state shapes stay at batch 1.
            return batched(self._invoke_batch, x, size=1)
        try:
            return batched(self._invoke_batch, x, size=64)
        except (ValueError, RuntimeError):
            # Some models have a fixed batch of 1: fall back to one sample at a time.
            return batched(self._invoke_batch, x, size=1)

    def latency(self, sample: Any) -> dict[str, float]:
        # A fresh interpreter: the signature runner holds references that forbid re-allocation.
        it = interpreter(self.artifact.path)
        details = it.get_input_details()
        order = self._tensor_order(details)
        feeds = [(details[k], self._prep(a[:1], details[k]))
                 for k, a in zip(order, as_list(sample), strict=True)]
        for d, a in feeds:
            if list(d["shape"]) != list(a.shape):
                it.resize_tensor_input(d["index"], list(a.shape))
        it.allocate_tensors()
        for d, a in feeds:
            it.set_tensor(d["index"], a)
        return measure_latency(it.invoke)

    def _tensor_order(self, details: list[dict[str, Any]]) -> list[int]:
        """Which input tensor each of the model's inputs is (via the signature's names)."""
        if not self.sig_key or len(details) == 1:
            return list(range(len(details)))
        index = {d["index"]: k for k, d in enumerate(details)}
        return [index[self.in_details[n]["index"]] for n in self.in_names]


def describe_io(path: Path) -> dict[str, list[dict[str, Any]]]:
    """The .tflite's own input/output names, shapes, dtypes and integer quantization."""
    it = interpreter(path)
    sigs = it.get_signature_list()

    def row(name: str, d: dict[str, Any]) -> dict[str, Any]:
        out = {"name": name, "shape": [int(x) for x in d["shape"]],
               "dtype": np.dtype(d["dtype"]).name}
        scale, zero = d.get("quantization", (0.0, 0))
        if np.dtype(d["dtype"]).kind in "iu" and scale:
            out["quantization"] = {"scale": float(scale), "zero_point": int(zero)}
        return out

    if sigs:
        runner = it.get_signature_runner(next(iter(sigs)))
        return {"inputs": [row(n, d) for n, d in runner.get_input_details().items()],
                "outputs": [row(n, d) for n, d in runner.get_output_details().items()]}
    return {"inputs": [row(d["name"], d) for d in it.get_input_details()],
            "outputs": [row(d["name"], d) for d in it.get_output_details()]}
