"""Running models on this host: the source model, and the shared runner contract.

A runner takes a batch in the *recipe's* data layout and returns the model's
outputs as float arrays in the source model's output order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mobilec.errors import ConversionError
from mobilec.sources.batch import as_list, batch_axes, batched, from_model, match_names, to_model
from mobilec.sources.pytorch import eager_runner
from mobilec.state import ModelState, TensorSpec
from mobilec.util.latency import measure_latency as measure_latency  # its users import it here
from mobilec.util.tfenv import import_tf


class Runner(Protocol):
    def __call__(self, x: np.ndarray) -> list[np.ndarray]: ...


def align_outputs(ref: list[TensorSpec], got_names: list[str], got: list[np.ndarray]
                  ) -> list[np.ndarray]:
    """Put a converted model's outputs in the source model's order (match_outputs)."""
    order = match_outputs(ref, got_names, [list(a.shape) for a in got])
    return got if order is None else [got[k] for k in order]


def match_outputs(ref: list[TensorSpec], got_names: list[str], got_shapes: list[list[Any]]
                  ) -> list[int] | None:
    """For each source output, the index of the converted model's output it is (None when
    the counts differ). Converters rename and reorder outputs (TFLite sorts signature outputs
    by name): match by exact name, then by name prefix, then by unique shape, then by order.
    The runners align by it, and the report names each file's outputs by it."""
    if len(got_names) != len(ref):
        return None
    if len(ref) == 1:
        return [0]
    remaining = dict(enumerate(got_names))
    out: list[int | None] = [None] * len(ref)
    for i, spec in enumerate(ref):
        for k, name in list(remaining.items()):
            base = name.split(":")[0]
            if name == spec.name or base == spec.name or base.endswith("/" + spec.name):
                out[i] = k
                del remaining[k]
                break
    for i, spec in enumerate(ref):
        if out[i] is not None:
            continue
        same = [k for k in remaining if list(got_shapes[k][1:]) == list(spec.shape[1:])]
        if len(same) == 1:
            out[i] = same[0]
            del remaining[same[0]]
    rest = iter(remaining)
    return [o if o is not None else next(rest) for o in out]


def source_runner(state: ModelState) -> Runner:
    """Runs the model as the state currently holds it (after prune/distill, …)."""
    if state.torch_module is not None:
        return eager_runner(state.torch_module, batch_size=state.torch_batch or 256)
    if state.keras_model is not None:
        model = state.keras_model

        def run_keras(x: np.ndarray) -> list[np.ndarray]:
            out = model(x, training=False)
            out = out if isinstance(out, (list, tuple)) else [out]
            return [np.asarray(o) for o in out]

        return lambda x: batched(run_keras, x)
    if state.onnx_path is not None:
        return ort_session_runner(state.onnx_path, state.outputs, None, state.inputs)
    if state.graph_dir is not None:
        return _saved_model_runner(state)
    raise RuntimeError("state holds no model")


def loaded_saved_model(state: ModelState) -> Any:
    """The model's SavedModel, loaded once per run (the source runner, tf2onnx, the TFLite
    signature routes and Core ML all read its serving signature)."""
    key = ("saved_model", str(state.graph_dir))
    if key not in state.memo:
        state.memo[key] = import_tf().saved_model.load(str(state.graph_dir))
    return state.memo[key]


def _saved_model_runner(state: ModelState) -> Runner:
    tf = import_tf()
    fn = loaded_saved_model(state).signatures["serving_default"]
    in_names = [t.name for t in state.inputs]
    names = list(fn.structured_outputs.keys())

    def run(x: Any) -> list[np.ndarray]:
        res = fn(**{n: tf.constant(a) for n, a in zip(in_names, as_list(x), strict=True)})
        return align_outputs(state.outputs, names, [res[n].numpy() for n in names])

    return lambda x: batched(run, x)


def count_params(model: Any) -> int | None:
    try:
        return int(model.count_params())
    except Exception:  # noqa: BLE001 - a model we cannot count just reports null
        return None


ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
              "tensor(double)": np.float64, "tensor(int64)": np.int64, "tensor(int32)": np.int32,
              "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


def ort_session(path: Path) -> tuple[Any, str]:
    """A one-thread CPU onnxruntime session and its first input's name."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess, sess.get_inputs()[0].name


def ort_feed_names(sess: Any, model_inputs: list[str]) -> list[str]:
    """The session inputs the model's inputs go to, in the model's order (matched by name,
    else by position).

    A graph with more inputs than the model has is refused by name: a converter left
    captured resources or state as graph inputs (tf2onnx: names like '34845:0'), and
    nothing the recipe's data holds could feed them.
    """
    names = [i.name for i in sess.get_inputs()]
    if len(names) != len(model_inputs):
        raise ConversionError(
            f"the .onnx graph has {len(names)} inputs ({', '.join(names[:6])}) where the model "
            f"has {len(model_inputs)}: the converter left stray graph inputs",
            hint="another route may export it cleanly (see routes_failed)")
    matched = match_names(model_inputs, names)
    return names if None in matched else [m for m in matched if m is not None]


def ort_feed(sess: Any, names: list[str], x: Any, transpose: tuple[int, ...] | None,
             inputs: list[TensorSpec] | None = None) -> dict[str, np.ndarray]:
    """{graph input: array} with each array in the graph's dtype; the layout permutation
    applies to the 4-D float (image) inputs only. With the model's `inputs`, the samples-first
    data goes where each takes its batch (sources/batch.py: to_model)."""
    types = {i.name: i.type for i in sess.get_inputs()}
    feed = {}
    parts = to_model(x, batch_axes(inputs)) if inputs else as_list(x)
    for name, a in zip(names, parts, strict=True):
        if transpose and a.ndim == len(transpose) and a.dtype.kind == "f":
            a = np.transpose(a, transpose)
        feed[name] = a.astype(ORT_DTYPES.get(types[name], a.dtype), copy=False)
    return feed


def ort_session_runner(path: Path, outputs: list[TensorSpec],
                       transpose: tuple[int, ...] | None, inputs: list[TensorSpec]) -> Any:
    sess, _ = ort_session(path)
    in_names = ort_feed_names(sess, [t.name for t in inputs])
    names = [o.name for o in sess.get_outputs()]
    in_axes, out_axes = batch_axes(inputs), batch_axes(outputs)
    first = next((i for i, a in enumerate(in_axes) if a is not None), 0)
    fixed_batch = (sess.get_inputs()[first].shape or [None])[in_axes[first] or 0]
    size = fixed_batch if isinstance(fixed_batch, int) and fixed_batch > 0 else 256

    def run(x: Any) -> list[np.ndarray]:
        res = sess.run(None, ort_feed(sess, in_names, x, transpose, inputs))
        got = align_outputs(outputs, names, [np.asarray(r, dtype=np.float32) for r in res])
        return from_model(got, out_axes)

    return lambda x: batched(run, x, size=size)
