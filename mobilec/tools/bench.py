"""`mobilec bench MODEL`: host latency of a .tflite, .onnx or Keras/SavedModel model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mobilec.errors import MobilecError, UnsupportedError
from mobilec.formats.runtime import measure_latency, source_runner
from mobilec.recipe.schema import ModelSpec, Recipe
from mobilec.sources.detect import check_input_size, detect_format
from mobilec.stages import load
from mobilec.state import ModelState
from mobilec.util.fs import size_of


def bench_model(path: Path, runs: int = 100, threads: int = 1) -> dict[str, Any]:
    for name, value in (("--runs", runs), ("--threads", threads)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise MobilecError(f"{name} must be a whole number of at least 1, got {value!r}",
                               hint="e.g. mobilec bench model.tflite --runs 100 --threads 1")
    fmt = detect_format(path)
    result: dict[str, Any] = {"path": str(path), "format": fmt, "size_bytes": size_of(path),
                              "threads": threads}
    if fmt == "tflite":
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=str(path), num_threads=threads)
        d = it.get_input_details()[0]
        shape = [1 if s < 1 else int(s) for s in d["shape"]]
        check_input_size(shape, str(path))  # compress's refusal, before anything allocates
        it.resize_tensor_input(d["index"], shape)
        it.allocate_tensors()
        it.set_tensor(d["index"], _sample(shape, np.dtype(d["dtype"])))
        result["input"] = {"name": d["name"], "shape": shape, "dtype": np.dtype(d["dtype"]).name}
        result["latency_ms"] = measure_latency(it.invoke, runs=runs, budget_s=10)
    elif fmt == "onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        inp = sess.get_inputs()[0]
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
        check_input_size(shape, str(path))  # compress's refusal, before the sample is allocated
        dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        feed = {inp.name: _sample(shape, np.dtype(dtype))}
        result["input"] = {"name": inp.name, "shape": shape, "dtype": np.dtype(dtype).name}
        result["latency_ms"] = measure_latency(lambda: sess.run(None, feed), runs=runs, budget_s=10)
    elif fmt in ("keras", "h5", "savedmodel"):
        import tempfile

        with tempfile.TemporaryDirectory() as work:
            state = ModelState(recipe=Recipe(model=ModelSpec(path=path)), out_dir=Path(work),
                               work_dir=Path(work))
            load.run(state)
            shape = [1] + [d or 1 for d in state.inputs[0].shape[1:]]
            x = _sample(shape, np.dtype("float32"))
            run = source_runner(state)
            result["input"] = {"name": state.inputs[0].name, "shape": shape, "dtype": "float32"}
            result["latency_ms"] = measure_latency(lambda: run(x), runs=runs, budget_s=10)
            result["note"] = "TensorFlow eager call on the host; convert it to measure a mobile runtime"
    else:
        raise UnsupportedError(f"cannot benchmark '{fmt}' models on this host", where=str(path))
    return result


def _sample(shape: list[int], dtype: np.dtype) -> np.ndarray:
    rng = np.random.default_rng(0)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype)
    return rng.standard_normal(shape).astype(dtype)
