"""Make a TF function's never-inlined calls inlinable before coremltools sees it.

TensorFlow runs a grouped convolution (ConvNeXt's depthwise 7x7, RegNet's group convs)
on CPU through a jit-compiled tf.function: Keras 3's `_conv_xla`, tf_keras'
`_jit_compiled_convolution_op`. Such functions are marked `_noinline`, so freezing (which
coremltools does with aggressive inlining) keeps them as (Stateful)PartitionedCall ops,
which coremltools cannot convert. Here the function is frozen, its library functions
lose the `_noinline`/`_XlaMustCompile` marks (under new names: the eager context already
holds the marked ones), and the graph is wrapped back into a concrete function whose
calls coremltools' own freeze then inlines into plain Conv2D ops.
"""

from __future__ import annotations

from typing import Any

from mobilec.util.tfenv import import_tf

_CALLS = ("PartitionedCall", "StatefulPartitionedCall")
_MARKS = ("_noinline", "_XlaMustCompile")
_SUFFIX = "_mobilec_inlinable"


def inlinable(fn: Any) -> Any:
    """fn itself when freezing inlines every call; else an equivalent concrete function
    without the marks that keep calls from being inlined."""
    tf = import_tf()
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    frozen = convert_variables_to_constants_v2(fn, lower_control_flow=False,
                                               aggressive_inlining=True)
    graph_def = frozen.graph.as_graph_def()
    if not any(n.op in _CALLS for n in graph_def.node):
        return fn
    names = {f.signature.name: f.signature.name + _SUFFIX for f in graph_def.library.function}

    def unmark(nodes: Any) -> None:
        for node in nodes:
            for mark in _MARKS:
                if mark in node.attr:
                    del node.attr[mark]
            for value in node.attr.values():
                if value.HasField("func") and value.func.name in names:
                    value.func.name = names[value.func.name]

    unmark(graph_def.node)
    for function in graph_def.library.function:
        for mark in _MARKS:
            if mark in function.attr:
                del function.attr[mark]
        function.signature.name = names[function.signature.name]
        unmark(function.node_def)
    inputs = [t.name for t in frozen.inputs]
    outputs = [t.name for t in frozen.outputs]
    wrapped = tf.compat.v1.wrap_function(
        lambda: tf.graph_util.import_graph_def(graph_def, name=""), [])
    get = wrapped.graph.get_tensor_by_name
    return wrapped.prune([get(n) for n in inputs], [get(n) for n in outputs])
