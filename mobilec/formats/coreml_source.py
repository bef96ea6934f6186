"""What coremltools' TensorFlow frontend is handed: one concrete function, one
ct.TensorType per input (named as the function's placeholders, fixed batch-1 shape, a
dtype Core ML has), and which source output each converted output is.

Also the TF ops coremltools 9 lacks but a Keras model can produce (registered once).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mobilec.errors import UnsupportedError
from mobilec.formats.coreml_tools import feature_name
from mobilec.formats.intermediate import require_verified, verified_onnx2tf_graph
from mobilec.formats.runtime import loaded_saved_model
from mobilec.formats.tf_inline import freeze, inlinable
from mobilec.sources import onnx2tf_bridge
from mobilec.sources.batch import as_list, batched
from mobilec.sources.keras_rnn import unrolled_model
from mobilec.state import ModelState, TensorSpec
from mobilec.util.tfenv import import_tf

_REGISTERED: list[str] = []


@dataclass
class TFSource:
    function: Any  # a tf ConcreteFunction
    inputs: list[tuple[str, list[int], Any]]  # (placeholder name, shape, numpy dtype)
    order: list[int]  # converted output i is source output order[i]
    features: list[str]  # the Core ML name input i should have (the source input's)
    # the intermediate graphs it came from, verified against the source (their figures)
    verified: list[dict[str, Any]] = field(default_factory=list)


def coreml_dtype(dtype: str) -> Any:
    """The dtype a Core ML feature can have for a source dtype: Core ML has no int64 or
    float64 (nor bool inputs), so integers travel as int32 and floats as float32."""
    return np.float32 if "float" in dtype else np.int32


def coreml_dtype_name(dtype: str) -> str:
    return "float32" if coreml_dtype(dtype) is np.float32 else "int32"


def register_missing_tf_ops() -> None:
    """Erfc (Keras 3's exact GELU lowers to 0.5·x·erfc(-x/√2)): erfc(x) = 1 - erf(x)."""
    if "Erfc" in _REGISTERED:
        return
    from coremltools.converters.mil.frontend.tensorflow.tf_op_registry import (
        _TF_OPS_REGISTRY,
        register_tf_op,
    )
    from coremltools.converters.mil.mil import Builder as mb

    if "Erfc" not in _TF_OPS_REGISTRY:  # a later coremltools may bring its own

        def Erfc(context: Any, node: Any) -> None:  # noqa: N802 - the TF op's name
            x = context[node.inputs[0]]
            erf = mb.erf(x=x, name=node.name + "_erf")
            context.add(node.name, mb.sub(x=np.float32(1.0), y=erf, name=node.name))

        register_tf_op(Erfc)
    _REGISTERED.append("Erfc")


def tf_source(state: ModelState, unroll: bool = False) -> TFSource:
    """The serving function of the model's TensorFlow form, with its inputs described.
    unroll: trace the Keras model with its recurrent layers unrolled (keras_rnn; a masked
    bidirectional RNN's while loop is one coremltools fails on)."""
    verified: list[dict[str, Any]] = []
    if state.keras_model is None and state.onnx_path is not None and \
            (state.graph_dir is None or isinstance(state.tf_bridge, onnx2tf_bridge.TFGraph)):
        # an ONNX source: onnx2tf's graph, verified before Core ML is built from it
        verified = verified_onnx2tf_graph(state)
    for spec in state.inputs:
        if any(d is None for d in spec.shape[1:]):
            raise UnsupportedError(
                f"Core ML needs fixed input dimensions; input '{spec.name}' is "
                f"{['?' if d is None else d for d in spec.shape]}",
                where=str(state.recipe.model.path),
                hint="set model.input_shape, e.g. [1, 224, 224, 3]")
    key = ("coreml_tf_source", state.model_version, unroll)
    if key not in state.memo:  # once for every precision converted
        state.memo[key] = _saved_model_source(state) if state.keras_model is None else \
            _keras_source(state, unrolled_model(state) if unroll else state.keras_model)
        state.memo[key].verified = verified
    return state.memo[key]


def _keras_source(state: ModelState, model: Any) -> TFSource:
    # Our own function around the model, returning a list: its outputs are Identity,
    # Identity_1, … in the model's output order (handing coremltools the Keras model lets
    # it pick an order of its own for several outputs). Each input is a placeholder named
    # as the Core ML feature will be, so coremltools can be told which is which.
    tf = import_tf()
    specs = [(feature_name(t.name), [1, *t.shape[1:]], coreml_dtype(t.dtype))
             for t in state.inputs]
    signature = [tf.TensorSpec(shape, tf.as_dtype(_model_dtype(t)), name=name)
                 for (name, shape, _), t in zip(specs, state.inputs, strict=True)]

    @tf.function(input_signature=signature)
    def serve(*xs: Any) -> list[Any]:
        # the model sees the dtypes it was built for; Core ML feeds int32/float32
        y = model(list(xs) if len(xs) > 1 else xs[0], training=False)
        return list(y) if isinstance(y, (list, tuple)) else [y]

    fn = inlinable(serve.get_concrete_function())
    return TFSource(fn, specs, list(range(len(model.outputs))), [s[0] for s in specs])


def _model_dtype(t: TensorSpec) -> str:
    """The placeholder dtype: what Core ML feeds (int64 tokens arrive as int32; Keras
    casts inside the model as it would for any int input)."""
    return "float32" if coreml_dtype(t.dtype) is np.float32 else "int32"


def _saved_model_source(state: ModelState) -> TFSource:
    fn = loaded_saved_model(state).signatures["serving_default"]
    # A SavedModel holds many functions; coremltools wants exactly one: the serving one.
    # Its inputs are keyword arguments; the graph's placeholders carry the spec names.
    signature = fn.structured_input_signature[1]
    specs: list[tuple[str, list[int], Any]] = []
    features: list[str] = []
    for i, (arg, spec) in enumerate(sorted(signature.items())):
        src = _matching_input(state, arg, i, len(signature))
        shape = [1, *spec.shape[1:]]
        if any(d is None for d in shape) and src is not None:
            shape = [1, *src.shape[1:]]
        if any(d is None for d in shape):
            raise UnsupportedError(
                f"Core ML needs fixed input dimensions; input '{arg}' is "
                f"{['?' if d is None else d for d in spec.shape]}",
                where=str(state.recipe.model.path), hint="set model.input_shape")
        specs.append((spec.name or arg, [int(d) for d in shape],
                      coreml_dtype(spec.dtype.name)))
        features.append(feature_name(src.name if src is not None else arg))
    # A signature returns a dict; TF flattens it in sorted key order.
    return TFSource(inlinable(fn), specs, [source_index(state, k) for k in sorted(fn.structured_outputs)],
                    features)


def _matching_input(state: ModelState, key: str, i: int, n: int) -> TensorSpec | None:
    for t in state.inputs:
        if key in (t.name, feature_name(t.name), onnx2tf_bridge.signature_name(t.name)):
            return t
    # one input (or as many inputs, sorted alike): position tells
    return state.inputs[i] if n == len(state.inputs) == 1 else None


def source_index(state: ModelState, key: str) -> int:
    """Which source output a SavedModel signature key is (keys may be sanitized names)."""
    for i, t in enumerate(state.outputs):
        if key in (t.name, feature_name(t.name), onnx2tf_bridge.signature_name(t.name)):
            return i
    return -1


def verify_tf_source(state: ModelState, src: TFSource, unroll: bool = False) -> dict[str, Any]:
    """The function coremltools is handed (inlined, maybe unrolled, maybe onnx2tf's), run on the
    verification inputs and held against the source before Core ML is built from it."""
    return require_verified(state, "the TensorFlow function handed to coremltools",
                            ("unrolled" if unroll else "as-is", id(src.function)),
                            lambda: _function_runner(state, src))


def _function_runner(state: ModelState, src: TFSource) -> Any:
    """The frozen function, one sample at a time (its placeholders are batch 1), fed in the
    placeholders' order and dtypes, outputs back in the source's order."""
    tf = import_tf()
    frozen, graph_def = freeze(src.function)
    wrapped = tf.compat.v1.wrap_function(
        lambda: tf.graph_util.import_graph_def(graph_def, name=""), [])
    get = wrapped.graph.get_tensor_by_name
    placeholders = [t.name for t in frozen.inputs]
    pruned = wrapped.prune([get(n) for n in placeholders], [get(t.name) for t in frozen.outputs])
    by_placeholder = {name: (feature, dtype) for (name, _, dtype), feature
                      in zip(src.inputs, src.features, strict=True)}
    position = {feature_name(t.name): i for i, t in enumerate(state.inputs)}
    _, perm = onnx2tf_bridge.tf_input_layout(state)
    order = src.order if sorted(src.order) == list(range(len(src.order))) else \
        list(range(len(src.order)))

    def one(x: Any) -> list[np.ndarray]:
        arrays = as_list(x)
        feed = []
        for i, name in enumerate(placeholders):
            feature, dtype = by_placeholder.get(name.split(":")[0]) or \
                (src.features[i], src.inputs[i][2])
            a = arrays[position.get(feature, 0)]
            if perm and a.ndim == len(perm):
                a = np.transpose(a, perm)
            feed.append(tf.constant(a.astype(dtype)))
        outs = pruned(*feed)
        got: list[np.ndarray] = [np.zeros(0)] * len(outs)
        for i, o in enumerate(outs):
            got[order[i]] = np.asarray(o.numpy(), dtype=np.float32)
        return got

    return lambda x: batched(one, x, size=1)
