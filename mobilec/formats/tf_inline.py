"""Freezing a TF function with its never-inlined calls made inlinable.

TensorFlow runs a grouped convolution (ConvNeXt's depthwise 7x7, RegNet's group convs) on
a CPU through a jit-compiled tf.function: Keras 3's `_conv_xla`, tf_keras'
`_jit_compiled_convolution_op`. Such functions carry `_noinline` / `_XlaMustCompile`, so
freezing and grappler keep them as (Stateful)PartitionedCall ops, which neither tf2onnx
(copied through; onnxruntime rejects the file) nor coremltools (not implemented) converts.
Dropping the two marks lets the calls inline into plain Conv ops; XLA is a runtime hint,
the math of the function body is unchanged.
"""

from __future__ import annotations

from typing import Any

from mobilec.util.tfenv import import_tf

CALLS = ("PartitionedCall", "StatefulPartitionedCall")
MARKS = ("_noinline", "_XlaMustCompile")


def freeze(concrete: Any) -> tuple[Any, Any]:
    """(the frozen function, its GraphDef with shapes): variables become constants, also
    those read inside nested functions. ValueError when TF cannot freeze the graph."""
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    frozen = convert_variables_to_constants_v2(concrete, lower_control_flow=False,
                                               aggressive_inlining=True)
    return frozen, frozen.graph.as_graph_def(add_shapes=True)


def has_calls(graph_def: Any) -> bool:
    """Whether freezing left function calls in the graph."""
    return any(n.op in CALLS for n in graph_def.node)


def allow_inlining(graph_def: Any, rename_suffix: str | None = None) -> int:
    """Drop the marks that stop a function call being inlined, in place; the count dropped.
    rename_suffix: also rename every library function (and the references to it), for a
    GraphDef imported back into a process whose context already holds the marked ones."""
    names = {f.signature.name: f.signature.name + rename_suffix
             for f in graph_def.library.function} if rename_suffix else {}
    dropped = 0

    def unmark(attrs: Any) -> None:
        nonlocal dropped
        for mark in MARKS:
            if mark in attrs:
                del attrs[mark]
                dropped += 1

    for function in graph_def.library.function:
        unmark(function.attr)
        function.signature.name = names.get(function.signature.name, function.signature.name)
    for node in [*graph_def.node, *(n for f in graph_def.library.function for n in f.node_def)]:
        unmark(node.attr)
        for value in node.attr.values():
            if value.HasField("func") and value.func.name in names:
                value.func.name = names[value.func.name]
    return dropped


def inlinable(fn: Any) -> Any:
    """fn itself when freezing inlines every call; else an equivalent concrete function
    without the marks (what coremltools, which freezes with inlining, is handed)."""
    tf = import_tf()
    frozen, graph_def = freeze(fn)
    if not has_calls(graph_def):
        return fn
    # renamed: the eager context already holds the marked functions under their names
    allow_inlining(graph_def, rename_suffix="_mobilec_inlinable")
    inputs = [t.name for t in frozen.inputs]
    outputs = [t.name for t in frozen.outputs]
    wrapped = tf.compat.v1.wrap_function(
        lambda: tf.graph_util.import_graph_def(graph_def, name=""), [])
    get = wrapped.graph.get_tensor_by_name
    return wrapped.prune([get(n) for n in inputs], [get(n) for n in outputs])
