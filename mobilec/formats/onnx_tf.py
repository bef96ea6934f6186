"""tf2onnx from a SavedModel's serving signature, with the nested functions inlined first.

`tf2onnx.convert.from_function` freezes the function and lets grappler inline the calls it
contains, but grappler never inlines a function marked `_noinline` or `_XlaMustCompile`.
Keras 3 marks some layers so: on a machine without a GPU its TensorFlow backend runs a
grouped convolution (ConvNeXt's depthwise 7x7, any Conv2D with groups > 1) in a
`@tf.function(jit_compile=True)`. tf2onnx then copies the call through as an op named
`StatefulPartitionedCall`, plus the variables it reads as stray graph inputs, and
onnxruntime rejects the file. Freezing and dropping those two marks before grappler runs
inlines the calls: the .onnx holds plain Conv nodes. (XLA is a TF runtime hint; the math
of the function body is unchanged.)
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mobilec.util.tfenv import import_tf

_NO_INLINE = ("_XlaMustCompile", "_noinline")
_CALLS = ("StatefulPartitionedCall", "PartitionedCall")


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


def allow_inlining(graph_def: Any) -> int:
    """Drop the marks that stop grappler inlining a function call; the count dropped."""
    dropped = 0
    for fdef in graph_def.library.function:
        for key in _NO_INLINE:
            if key in fdef.attr:
                del fdef.attr[key]
                dropped += 1
    nodes = [*graph_def.node, *(n for f in graph_def.library.function for n in f.node_def)]
    for node in nodes:
        if node.op in _CALLS:
            for key in _NO_INLINE:
                if key in node.attr:
                    del node.attr[key]
                    dropped += 1
    return dropped


def function_to_onnx(function: Any, dest: Path, opset: int) -> None:
    """What `tf2onnx.convert.from_function(function, ...)` does, with nested calls inlined
    (see the module doc). Input and output names are the signature's, as tf2onnx gives."""
    tf = import_tf()
    import tf2onnx
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    concrete = function.get_concrete_function(*function.input_signature)
    # Freezing first: it also turns the variables read inside the nested functions into
    # constants, so none is left over as a graph input.
    try:
        frozen = convert_variables_to_constants_v2(concrete, lower_control_flow=False,
                                                   aggressive_inlining=True)
    except ValueError:
        # tf2onnx has its own repairs for graphs that TF cannot freeze: let it try.
        tf2onnx.convert.from_function(function, input_signature=function.input_signature,
                                      opset=opset, output_path=str(dest))
        return
    graph_def = frozen.graph.as_graph_def(add_shapes=True)
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
