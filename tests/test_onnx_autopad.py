"""auto_pad SAME_UPPER/SAME_LOWER made explicit for the Core AI bridge (onnx2torch has none)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _same_padded_graph(path: Path) -> None:
    """Conv (stride 2, kernel 4), MaxPool, two AveragePools, on odd sizes, all auto_pad SAME:
    9x9 -> Conv pads 1|2 -> 5x5 -> MaxPool (k3, s1, SAME_LOWER) 1|1 -> 5x5, then AveragePool
    k2 s2 (pads 0|1, the pad excluded from the average) and k2 s2 count_include_pad=1."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((4, 3, 4, 4)).astype(np.float32), "w")
    bias = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], strides=[2, 2],
                              auto_pad="SAME_UPPER"),
             helper.make_node("MaxPool", ["c"], ["m"], kernel_shape=[3, 3],
                              auto_pad="SAME_LOWER"),
             helper.make_node("AveragePool", ["m"], ["y"], kernel_shape=[2, 2], strides=[2, 2],
                              auto_pad="SAME_UPPER"),
             helper.make_node("AveragePool", ["m"], ["z"], kernel_shape=[2, 2], strides=[2, 2],
                              auto_pad="SAME_UPPER", count_include_pad=1)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 9, 9])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n", 4, 3, 3]) for n in ("y", "z")],
        [weight, bias])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_the_bridge_makes_same_auto_pad_explicit(tmp_path: Path) -> None:
    """onnx2torch raises '"SAME_UPPER" auto_pad is not implemented'; the bridge hands it the
    graph with explicit pads, which computes what onnxruntime does on the original, and the
    converted module does too, exported."""
    import onnx
    import onnxruntime as ort
    import pytest
    import torch

    from mobilec.formats.coreai_bridge import onnx_to_torch
    from mobilec.formats.coreai_convert import export_decomposed
    from mobilec.formats.onnx_autopad import with_explicit_pads

    path = tmp_path / "same.onnx"
    _same_padded_graph(path)
    x = np.random.default_rng(1).standard_normal((2, 3, 9, 9)).astype(np.float32)
    want = ort.InferenceSession(str(path)).run(None, {"x": x})
    explicit = with_explicit_pads(path)
    assert not isinstance(explicit, str)
    assert all(a.name != "auto_pad" for n in explicit.graph.node for a in n.attribute)
    onnx.save(explicit, str(tmp_path / "explicit.onnx"))
    got = ort.InferenceSession(str(tmp_path / "explicit.onnx")).run(None, {"x": x})
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-6)

    module = onnx_to_torch(path)
    from onnx2torch import convert  # imported by onnx_to_torch (torchvision stood in)

    with pytest.raises(NotImplementedError, match="auto_pad"):
        convert(str(path))
    for g, w in zip(module(torch.tensor(x)), want, strict=True):
        np.testing.assert_allclose(g.detach().numpy(), w, rtol=1e-6, atol=1e-6)
    ep, _ = export_decomposed(module, (x[:1],))
    for g, w in zip(ep.module()(torch.tensor(x[:1])), want, strict=True):
        np.testing.assert_allclose(g.detach().numpy(), w[:1], rtol=1e-6, atol=1e-6)


def test_unknown_spatial_dims_stay_same_until_the_bridge_folds_them(tmp_path: Path) -> None:
    """Pads depend on the input size: with spatial dims unknown (a Keras Input((None, None,
    3)), where tf2onnx writes SAME_UPPER) the nodes are left alone, and the bridge's second
    try, folded at one sample's shapes, makes them explicit and computes what onnxruntime
    does."""
    import onnx
    import onnxruntime as ort
    import torch

    from mobilec.formats.coreai_bridge import bridged_program
    from mobilec.formats.onnx_autopad import explicit_pads

    path = tmp_path / "same.onnx"
    _same_padded_graph(path)
    model: Any = onnx.load(str(path))
    for axis, name in ((2, "h"), (3, "w")):
        model.graph.input[0].type.tensor_type.shape.dim[axis].dim_param = name
    onnx.save(model, str(path))
    assert explicit_pads(onnx.shape_inference.infer_shapes(model)) == 0
    x = np.random.default_rng(2).standard_normal((1, 3, 9, 9)).astype(np.float32)
    ep, _, folded = bridged_program(path, (x,))
    assert folded
    want = ort.InferenceSession(str(path)).run(None, {"x": x})
    for g, w in zip(ep.module()(torch.tensor(x)), want, strict=True):
        np.testing.assert_allclose(g.detach().numpy(), w, rtol=1e-6, atol=1e-6)
