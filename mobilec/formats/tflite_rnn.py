"""TFLite routes for recurrent models (LSTM, GRU, SimpleRNN), builtin ops only.

A Keras RNN traced with a dynamic batch leaves `TensorListReserve` ops whose element shape
is unknown, and the converter refuses them ("requires element_shape to be static") unless
the Flex runtime is shipped. Two ways out, both pure TFLite builtins:

- keras-unrolled (first, for a Keras model): the model rebuilt with `unroll=True`, same
  weights: no loop, no list ops, any batch, stateless, and int8 calibrates. Needs a fixed
  sequence length.
- fixed-batch (a SavedModel, or a Keras model that cannot unroll): the model or the
  serving signature called with batch 1 in every input, and the converter told to give
  list ops of unknown shape batch 1. The loop stays a WHILE loop, on which the int8
  calibrator dies with SIGSEGV (tensorflow#75140, #62281): calibrated modes refuse such a
  graph. Not re-traced at batch 1 on purpose: a Keras LSTM traced so becomes the fused
  UNIDIRECTIONAL_SEQUENCE_LSTM op, whose state lives in variable tensors and carries over
  from one invocation to the next unless the app resets them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mobilec.delegates.opcompat import tflite_ops
from mobilec.errors import ConversionError, UnsupportedError
from mobilec.formats.runtime import loaded_saved_model
from mobilec.sources.keras_rnn import rnn_layers, unrolled_model
from mobilec.state import ModelState
from mobilec.util.tfenv import import_tf


def keras_rnn_routes(model: Any) -> list[str]:
    """The RNN routes to try first for this Keras model, or [] when it has no RNN layer."""
    return ["keras-unrolled", "fixed-batch"] if rnn_layers(model) else []


def fixed_batch_converter(state: ModelState) -> Any:
    """A converter for the model, or the SavedModel's serving signature, called from a
    function whose inputs (names and dtypes kept) have batch 1. The inner function stays
    traced with a dynamic batch, so Keras' LSTM is not fused into the stateful op; the
    converter's default-to-batch-1 flag gives its list ops their static shapes."""
    tf = import_tf()
    if state.keras_model is not None:
        model = trackable = state.keras_model
        dynamic = _traced(model, batch=None)
        specs = [tf.TensorSpec(t.shape, t.dtype, name=n)
                 for n, t in zip(model.input_names, model.inputs, strict=True)]
        fn = _batch_one(lambda args: dynamic(*args), specs)
    elif state.graph_dir is not None:
        trackable = loaded_saved_model(state)
        signature = trackable.signatures["serving_default"]
        inputs = signature.structured_input_signature[1]
        names = sorted(inputs)
        fn = _batch_one(lambda args: signature(**dict(zip(names, args, strict=True))),
                        [tf.TensorSpec(inputs[n].shape, inputs[n].dtype, name=n) for n in names])
    else:
        raise UnsupportedError("the fixed-batch route needs a Keras model or a SavedModel")

    def make() -> Any:
        conv = tf.lite.TFLiteConverter.from_concrete_functions([fn], trackable)
        conv._experimental_default_to_single_batch_in_tensor_list_ops = True  # noqa: SLF001
        return conv

    return NoLoopCalibration(make(), make)


def unrolled_converter(state: ModelState) -> Any:
    """A converter for the Keras model rebuilt with every recurrent layer unrolled."""
    tf = import_tf()
    model = unrolled_model(state)
    return tf.lite.TFLiteConverter.from_concrete_functions([_traced(model, batch=None)], model)


def _traced(model: Any, batch: int | None) -> Any:
    """The model's inference call as a concrete function: inputs named as the model names
    them, batch dimension `batch`, outputs keyed by the model's output names."""
    tf = import_tf()
    names = list(model.input_names)
    specs = [tf.TensorSpec([batch, *t.shape[1:]], t.dtype, name=n)
             for n, t in zip(names, model.inputs, strict=True)]
    out_names = list(model.output_names)

    def call(*args: Any) -> dict[str, Any]:
        out = model(list(args) if len(args) > 1 else args[0], training=False)
        out = out if isinstance(out, (list, tuple)) else [out]
        return dict(zip(out_names, out, strict=True))

    return tf.function(call, input_signature=specs).get_concrete_function()


def _batch_one(inner: Callable[[list[Any]], Any], specs: list[Any]) -> Any:
    """`inner` (called with the inputs in `specs` order) behind a batch-1 input signature."""
    tf = import_tf()
    if any(t.shape.rank is None for t in specs):
        raise UnsupportedError("an input has an unknown rank: no batch dimension to fix")
    if all(t.shape.rank and t.shape[0] is not None for t in specs):
        raise UnsupportedError("every input already has a fixed batch")
    fixed = [tf.TensorSpec([1, *t.shape[1:]], t.dtype, name=t.name) for t in specs]
    return tf.function(lambda *args: inner(list(args)), input_signature=fixed
                       ).get_concrete_function()


#: Fused sequence ops keep their state in variable tensors: it carries from one invocation
#: into the next unless the app resets it, a wrong answer verification may not notice.
STATEFUL_OPS = {"UNIDIRECTIONAL_SEQUENCE_LSTM", "BIDIRECTIONAL_SEQUENCE_LSTM",
                "UNIDIRECTIONAL_SEQUENCE_RNN", "BIDIRECTIONAL_SEQUENCE_RNN"}


class NoLoopCalibration:
    """A TFLite converter that refuses to calibrate a graph with a WHILE loop (the
    calibrator dies with SIGSEGV on one, tensorflow#75140, which would end the whole run)
    and refuses a result with a stateful fused sequence op. Every attribute reads and
    writes through to the wrapped converter."""

    def __init__(self, conv: Any, make: Any) -> None:
        object.__setattr__(self, "_conv", conv)
        object.__setattr__(self, "_make", make)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conv, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._conv, name, value)

    def convert(self) -> bytes:
        if self._conv.representative_dataset is not None and \
                "WHILE" in op_names(self._make().convert()):
            raise ConversionError(
                "the fixed-batch graph keeps its recurrent layers as a WHILE loop, "
                "and TFLite's int8 calibrator crashes on WHILE loops",
                hint="the keras-unrolled route (a Keras source with a fixed sequence length) "
                     "calibrates; or use quantize mode dynamic or float16")
        model = self._conv.convert()
        fused = sorted(STATEFUL_OPS & op_names(model))
        if fused:
            raise ConversionError(
                f"the converter fused the recurrent layers into {', '.join(fused)}, whose "
                "state carries over between invocations unless the app resets it",
                hint="give the model a fixed sequence length: the keras-unrolled route "
                     "then converts it stateless")
        return model


def op_names(model: bytes) -> set[str]:
    return {op.name for op in tflite_ops(model)}
