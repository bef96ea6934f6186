"""tf2onnx output that onnxruntime rejected as an invalid graph (conformance: transformer
encoder, ConvNeXt): exact GELU left as `Erfc` / `TFL_GELU`, and Keras 3's XLA-marked grouped
convolution left as a nested `StatefulPartitionedCall`. Real models, real conversions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import artifact, compress, write_recipe

from mobilec.errors import ConversionError
from mobilec.formats.onnx_repair import repair_onnx

RNG = np.random.default_rng(0)


def _ops(path: Path) -> set[str]:
    import onnx

    return {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}


def _gelu(x: np.ndarray, approximate: bool) -> np.ndarray:
    import math

    if approximate:
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def _one_node(tmp_path: Path, op_type: str, **attrs: Any) -> Path:
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node(op_type, ["x"], ["y"], name="n", **attrs)
    graph = helper.make_graph([node], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 5])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / f"{op_type}.onnx"
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("approximate", [0, 1])
def test_tflite_gelu_left_by_tf2onnx_is_rewritten_and_exact(tmp_path: Path,
                                                             approximate: int) -> None:
    import onnxruntime as ort

    path = _one_node(tmp_path, "TFL_GELU", approximate=approximate)
    assert repair_onnx(path) == ["1 TFL_GELU node(s) rewritten with standard ONNX ops"]
    assert "TFL_GELU" not in _ops(path)
    x = RNG.normal(0, 3, (4, 5)).astype(np.float32)
    y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, _gelu(x.astype(np.float64), bool(approximate)), atol=1e-5)


def test_tf2onnx_exact_gelu_becomes_the_form_runtimes_fuse(tmp_path: Path) -> None:
    """tf2onnx writes TensorFlow's exact GELU as Mul(Mul(x, 0.5), Erfc(Mul(Neg(x), 1/sqrt2)));
    the repair writes PyTorch's Div -> Erf -> Add -> Mul -> Mul instead (onnx2tf fuses only
    that into TFLite's GELU builtin), with the sqrt2 from a Constant node, and drops the rest."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    consts = [numpy_helper.from_array(np.array(v, np.float32), n)
              for n, v in (("c7071", 0.70710677), ("c05", 0.5))]
    nodes = [helper.make_node("Neg", ["x"], ["n"], name="neg"),
             helper.make_node("Mul", ["n", "c7071"], ["s"], name="scale"),
             helper.make_node("Erfc", ["s"], ["e"], name="erfc"),
             helper.make_node("Mul", ["x", "c05"], ["h"], name="half"),
             helper.make_node("Mul", ["h", "e"], ["y"], name="gelu")]
    graph = helper.make_graph(nodes, "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 5])],
                              initializer=consts)
    path = tmp_path / "tf_gelu.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert repair_onnx(path) == ["1 GELU (Erf/Erfc) node(s) rewritten with standard ONNX ops"]
    model = onnx.load(str(path))
    assert [n.op_type for n in model.graph.node] == ["Constant", "Div", "Erf", "Add", "Mul", "Mul"]
    assert [i.name for i in model.graph.initializer] == [
        model.graph.node[3].input[1], model.graph.node[5].input[1]]  # 1.0 and 0.5 only
    x = RNG.normal(0, 3, (4, 5)).astype(np.float32)
    y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, _gelu(x.astype(np.float64), False), atol=1e-5)


def test_an_op_with_no_onnx_definition_is_named(tmp_path: Path) -> None:
    path = _one_node(tmp_path, "ImagineOp")
    with pytest.raises(ConversionError, match=r"ImagineOp \(1\)"):
        repair_onnx(path)


@pytest.mark.slow
def test_keras3_exact_gelu_model_ships_onnx(tmp_path: Path) -> None:
    """Dense + exact GELU (`tf.nn.gelu` -> Erfc, no tf2onnx handler): both .onnx rows ok."""
    from mobilec.util.tfenv import import_keras3

    keras = import_keras3()
    x = keras.Input((16,), name="x")
    h = keras.layers.Dense(32, activation=keras.activations.gelu)(x)
    keras.Model(x, keras.layers.Dense(5)(h)).save(tmp_path / "gelu.keras")
    np.savez(tmp_path / "d.npz", x=RNG.normal(0, 2, (64, 16)).astype(np.float32))
    report = compress(write_recipe(tmp_path, tmp_path / "gelu.keras",
                                   data={"source": "npz", "eval": "d.npz"},
                                   stages=[{"quantize": {"mode": "int8"}},
                                           {"convert": {"formats": ["onnx"]}}]))
    for mode in ("float32", "int8"):
        a = artifact(report, "onnx", mode)
        assert a["status"] == "ok", (a["error"], a["routes_failed"])
        assert a["route"] in ("tf2onnx-keras", "tf2onnx-signature"), a["route"]
        assert not a["routes_failed"], a["routes_failed"]
        ops = _ops(tmp_path / "out" / a["path"])
        assert "Erfc" not in ops
    f32 = artifact(report, "onnx", "float32")
    assert f32["verification"]["snr_db"] is None or f32["verification"]["snr_db"] > 80

    # That .onnx as a source: onnx2tf fuses the GELU into TFLite's builtin (a bare Erf has
    # none, and onnx2tf's pseudo-Erf divides by |x|, which int8 cannot run): both rows ok.
    from mobilec.formats.tflite import list_ops

    again = tmp_path / "again"
    again.mkdir()
    report = compress(write_recipe(again, tmp_path / "out" / f32["path"],
                                   data={"source": "npz", "eval": str(tmp_path / "d.npz")},
                                   stages=[{"quantize": {"mode": "int8"}},
                                           {"convert": {"formats": ["tflite"]}}]))
    for mode in ("float32", "int8"):
        a = artifact(report, "tflite", mode)
        assert a["status"] == "ok", (a["error"], a["routes_failed"])
        assert a["route"] == "onnx2tf", a["route"]
        assert "GELU" in list_ops(again / "out" / a["path"])


@pytest.mark.slow
def test_grouped_conv_savedmodel_inlines_the_xla_call(tmp_path: Path) -> None:
    """Keras 3 on a CPU-only machine wraps a grouped conv in an XLA-compiled tf.function
    that grappler will not inline: the signature route must still give plain Conv nodes and
    no stray graph inputs (ConvNeXt in the conformance corpus)."""
    from mobilec.util.tfenv import import_keras3

    keras = import_keras3()
    x = keras.Input((8, 8, 4), name="img")
    # Normalization's mean/variance are captured tensors: traced as inputs, frozen to constants.
    h = keras.layers.Normalization(mean=[0.5] * 4, variance=[4.0] * 4)(x)
    h = keras.layers.Conv2D(4, 3, groups=4, padding="same")(h)
    h = keras.layers.Dense(8, activation=keras.activations.gelu)(h)
    y = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(h))
    keras.Model(x, y).export(str(tmp_path / "sm"), format="tf_saved_model", verbose=False)
    np.savez(tmp_path / "d.npz", img=RNG.normal(0, 1, (32, 8, 8, 4)).astype(np.float32))
    report = compress(write_recipe(tmp_path, tmp_path / "sm",
                                   data={"source": "npz", "eval": "d.npz"},
                                   stages=[{"convert": {"formats": ["onnx"]}}]))
    a = artifact(report, "onnx", "float32")
    assert a["status"] == "ok", (a["error"], a["routes_failed"])
    assert a["route"] == "tf2onnx-signature"
    ops = _ops(tmp_path / "out" / a["path"])
    assert "Conv" in ops and not ops & {"StatefulPartitionedCall", "Erfc"}, ops
    import onnx

    graph = onnx.load(str(tmp_path / "out" / a["path"]), load_external_data=False).graph
    assert [i.name for i in graph.input] == ["img"]  # no captured variable left as an input
