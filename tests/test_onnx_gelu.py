"""Exact GELU as exporters spell it becomes the one form onnx2tf fuses into TFLite's GELU
builtin (sources/onnx_gelu.py): same values under onnxruntime, pattern nodes gone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mobilec.sources.onnx_gelu import fuse_gelu

RNG = np.random.default_rng(0)


def _model(nodes: list, consts: dict[str, float]):  # noqa: ANN202 - onnx.ModelProto
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.array(v, np.float32), n) for n, v in consts.items()]
    graph = helper.make_graph(nodes, "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 6])],
                              initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _torch_dynamo() -> tuple[list, dict[str, float]]:
    """torch.onnx.export(dynamo=True) of nn.GELU(): Mul(x, Mul(0.5, Add(Erf(Div(x, √2)), 1)))."""
    from onnx import helper

    return [helper.make_node("Div", ["x", "sqrt2"], ["d"], name="div"),
            helper.make_node("Erf", ["d"], ["e"], name="erf"),
            helper.make_node("Add", ["e", "one"], ["a"], name="add"),
            helper.make_node("Mul", ["half", "a"], ["m"], name="mul_half"),
            helper.make_node("Mul", ["x", "m"], ["y"], name="mul_x")], \
        {"sqrt2": 1.4142135381698608, "one": 1.0, "half": 0.5}


def _scaled_erf() -> tuple[list, dict[str, float]]:
    """Mul(Mul(x, 0.5), Add(Erf(Mul(x, 1/√2)), 1))."""
    from onnx import helper

    return [helper.make_node("Mul", ["x", "r"], ["d"], name="scale"),
            helper.make_node("Erf", ["d"], ["e"], name="erf"),
            helper.make_node("Add", ["one", "e"], ["a"], name="add"),
            helper.make_node("Mul", ["x", "half"], ["h"], name="half_x"),
            helper.make_node("Mul", ["h", "a"], ["y"], name="gelu")], \
        {"r": 0.70710677, "one": 1.0, "half": 0.5}


@pytest.mark.parametrize("spelling", [_torch_dynamo, _scaled_erf])
def test_exact_gelu_spellings_become_the_fusable_form(tmp_path: Path, spelling) -> None:  # noqa: ANN001
    import math

    import onnx
    import onnxruntime as ort

    model = _model(*spelling())
    assert fuse_gelu(model.graph) == 1
    assert [n.op_type for n in model.graph.node] == ["Constant", "Div", "Erf", "Add", "Mul", "Mul"]
    assert len(model.graph.initializer) == 2  # 1.0 and 0.5; the old constants are gone
    onnx.checker.check_model(model)
    path = tmp_path / "g.onnx"
    onnx.save(model, str(path))
    x = RNG.normal(0, 3, (5, 6)).astype(np.float32)
    y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    want = 0.5 * x * (1 + np.vectorize(math.erf)(x.astype(np.float64) / math.sqrt(2)))
    np.testing.assert_allclose(y, want, atol=1e-5)


def test_an_erf_that_is_not_a_gelu_is_left_alone() -> None:
    from onnx import helper

    model = _model([helper.make_node("Erf", ["x"], ["e"], name="erf"),
                    helper.make_node("Add", ["e", "one"], ["y"], name="add")], {"one": 1.0})
    assert fuse_gelu(model.graph) == 0
    assert [n.op_type for n in model.graph.node] == ["Erf", "Add"]
