"""tf2onnx from a SavedModel's serving signature, with the nested functions inlined first.

`tf2onnx.convert.from_function` freezes the function and lets grappler inline the calls it
contains, but grappler never inlines a function marked `_noinline` or `_XlaMustCompile`
(Keras' jit-compiled grouped convolution, see tf_inline): tf2onnx then copies the call
through as an op named `StatefulPartitionedCall`, plus the variables it reads as stray
graph inputs, and onnxruntime rejects the file. Frozen with the marks dropped first, the
.onnx holds plain Conv nodes.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mobilec.formats.tf_inline import allow_inlining, freeze
from mobilec.util.tfenv import import_tf


def signature_function(loaded: Any, sorted_names: bool = False) -> Any:
    """A tf.function over the loaded SavedModel's serving signature, inputs by position."""
    tf = import_tf()
    fn = loaded.signatures["serving_default"]
    specs = fn.structured_input_signature[1]
    names = sorted(specs) if sorted_names else list(specs)
    sig = [tf.TensorSpec(specs[n].shape, specs[n].dtype, name=n) for n in names]

    def call(*xs: Any) -> Any:
        _ = loaded  # the signature reads the object's variables: keep them alive with it
        return fn(**dict(zip(names, xs, strict=True)))

    # tf2onnx wants a tf.function; a signature is a bare ConcreteFunction.
    return tf.function(call, input_signature=sig)


def function_to_onnx(function: Any, dest: Path, opset: int) -> None:
    """What `tf2onnx.convert.from_function(function, ...)` does, with nested calls inlined
    (see the module doc). Input and output names are the signature's, as tf2onnx gives."""
    tf = import_tf()
    import tf2onnx

    concrete = function.get_concrete_function(*function.input_signature)
    # Freezing first: it also turns the variables read inside the nested functions into
    # constants, so none is left over as a graph input.
    try:
        frozen, graph_def = freeze(concrete)
    except ValueError:
        # tf2onnx has its own repairs for graphs that TF cannot freeze: let it try.
        tf2onnx.convert.from_function(function, input_signature=function.input_signature,
                                      opset=opset, output_path=str(dest))
        return
    allow_inlining(graph_def)
    # The frozen function's inputs, not the traced one's: those include the captured tensors
    # (a Normalization layer's mean and variance), which freezing made constants; naming
    # them as inputs (as tf2onnx's from_function does) leaves them as stray graph inputs.
    inputs = [t.name for t in frozen.inputs if t.dtype != tf.dtypes.resource]
    outputs = [t.name for t in frozen.outputs if t.dtype != tf.dtypes.resource]
    rename = tf2onnx.convert.tensor_names_from_structed(concrete, inputs, outputs)
    with _quiet_tf2onnx():
        tf2onnx.convert.from_graph_def(graph_def, name=concrete.name, input_names=inputs,
                                       output_names=outputs, opset=opset,
                                       tensors_to_rename=rename, output_path=str(dest))


@contextmanager
def _quiet_tf2onnx() -> Iterator[None]:
    """tf2onnx logs one ERROR line per op it leaves unconverted; the repair pass after it
    rewrites or reports those, so the lines are noise."""
    logger = logging.getLogger("tf2onnx")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
