"""Cross-layer equalization (Keras and ONNX) and per-channel diagnosis.

The issue's outlier model: the trained digits CNN with one hidden Dense unit scaled
by 1e4 and its outgoing weights divided by 1e4. ReLU is positively homogeneous, so
the float model is unchanged; full int8 collapses (one shared activation scale), and
equalization brings it back to float accuracy. Exactness is checked on small graphs
with every construct the pass handles (BatchNorm folding, depthwise, Flatten, ReLU6).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mobilec.errors import ConversionError

POINT = 0.01
OUTLIER = 1e4


def tfk() -> Any:
    from mobilec.util.tfenv import import_tf_keras

    return import_tf_keras()


# -- exactness on small graphs --------------------------------------------------------

def mixed_model() -> Any:
    """Conv -> BN -> ReLU -> depthwise -> conv(relu) -> pool -> flatten -> dense -> relu6 -> dense."""
    k = tfk()
    x = k.Input((8, 8, 3), name="img")
    a = k.layers.Conv2D(8, 3, padding="same", use_bias=False, name="c1")(x)
    a = k.layers.BatchNormalization(name="bn1")(a)
    a = k.layers.ReLU(name="r1")(a)
    b = k.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(a)
    c = k.layers.Conv2D(6, 1, activation="relu", name="c2")(b)
    d = k.layers.Flatten(name="flat")(k.layers.MaxPooling2D(name="pool")(c))
    e = k.layers.Dense(12, activation="relu6", name="d1")(d)
    out = k.layers.Dense(4, name="d2")(e)
    model = k.Model(x, out)
    rng = np.random.default_rng(0)
    model.set_weights([rng.standard_normal(w.shape).astype("float32") * 0.5
                       if "variance" not in w.name else rng.uniform(0.5, 2, w.shape).astype("float32")
                       for w in model.weights])
    return model


def test_equalize_keras_preserves_the_function_and_never_mutates_its_input() -> None:
    from mobilec.training.equalize import equalize_keras

    model = mixed_model()
    before = [w.copy() for w in model.get_weights()]
    x = np.random.default_rng(1).random((8, 8, 8, 3)).astype("float32")
    new, report = equalize_keras(model, calib_x=x)
    np.testing.assert_allclose(new(x).numpy(), model(x).numpy(), rtol=1e-4, atol=1e-4 * float(
        np.abs(model(x).numpy()).max()))
    assert report["max_rel_diff"] <= 1e-5
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), before, strict=True))
    assert report["bn_folded"] == [{"batchnorm": "bn1", "into": "c1"}]
    assert "bn1" not in [layer.name for layer in new.layers]
    pairs = {(p["first"], p["second"]): p for p in report["pairs"]}
    assert set(pairs) == {("c1", "dw"), ("dw", "c2"), ("c2", "d1")}
    assert pairs[("c2", "d1")]["via"] == ["pool", "flat"]
    # relu6 clips at 6, not 6/s: the d1 -> d2 pair is refused, and the report says why
    assert [s["layer"] for s in report["skipped"]] == ["d1"]
    assert "relu6" in report["skipped"][0]["reason"]


def test_equalize_keras_balances_a_rescaled_unit() -> None:
    from mobilec.training.equalize import equalize_keras

    k = tfk()
    x = k.Input((16,))
    h = k.layers.Dense(8, activation="relu", name="h")(x)
    model = k.Model(x, k.layers.Dense(3, name="o")(h))
    w, b = model.get_layer("h").get_weights()
    w[:, 2] *= OUTLIER
    b[:] = 0.1
    b[2] *= OUTLIER
    model.get_layer("h").set_weights([w, b])
    w2, b2 = model.get_layer("o").get_weights()
    w2[2] /= OUTLIER
    model.get_layer("o").set_weights([w2, b2])
    new, report = equalize_keras(model)
    (pair,) = report["pairs"]
    assert pair["range_ratio_before"] > 1000 and pair["range_ratio_after"] < 10
    assert report["verified_on"].startswith("random probe")
    r1 = np.abs(new.get_layer("h").get_weights()[0]).max(axis=0)
    r2 = np.abs(new.get_layer("o").get_weights()[0]).max(axis=1)
    np.testing.assert_allclose(r1, r2, rtol=1e-3)  # Nagel's fixed point: equal ranges


def test_a_broken_rescaling_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    from mobilec.training import equalize

    monkeypatch.setattr(equalize, "_scale_in", lambda kernel, f: kernel)  # forget one side
    with pytest.raises(ConversionError, match="changed the float outputs"):
        equalize.equalize_keras(mixed_model())


def small_onnx() -> Any:
    """Conv -> BatchNormalization -> Relu -> Conv -> Relu -> Flatten -> Gemm -> Clip -> MatMul+Add."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def init(name: str, *shape: int, positive: bool = False) -> Any:
        a = rng.uniform(0.5, 2, shape) if positive else rng.standard_normal(shape) * 0.5
        return numpy_helper.from_array(a.astype("float32"), name)

    inits = [init("w1", 4, 3, 3, 3), init("b1", 4), init("g", 4, positive=True), init("be", 4),
             init("mu", 4), init("var", 4, positive=True), init("w2", 5, 4, 3, 3), init("b2", 5),
             init("w3", 6, 5 * 16), init("b3", 6), init("w4", 6, 2), init("b4", 2),
             numpy_helper.from_array(np.array(0, "float32"), "lo"),
             numpy_helper.from_array(np.array(6, "float32"), "hi")]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "g", "be", "mu", "var"], ["n1"], name="bn"),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Flatten", ["r2"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["g3"], name="fc", transB=1),
        helper.make_node("Clip", ["g3", "lo", "hi"], ["k3"], name="relu6"),
        helper.make_node("MatMul", ["k3", "w4"], ["m4"], name="head"),
        helper.make_node("Add", ["m4", "b4"], ["y"], name="head_bias"),
    ]
    graph = helper.make_graph(nodes, "small", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["n", 3, 4, 4])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, ["n", 2])], inits)
    return onnx.helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_equalize_onnx_preserves_the_function() -> None:
    import onnx

    from mobilec.formats.onnx_equalize import _session, equalize_onnx

    model = small_onnx()
    original = model.SerializeToString()
    new, report = equalize_onnx(model)
    onnx.checker.check_model(new)
    assert model.SerializeToString() == original  # the input is never touched
    assert report["bn_folded"] == [{"batchnorm": "bn", "into": "conv1"}]
    assert "BatchNormalization" not in [n.op_type for n in new.graph.node]
    assert [(p["first"], p["second"]) for p in report["pairs"]] == [("conv1", "conv2"),
                                                                    ("conv2", "fc")]
    assert [s["layer"] for s in report["skipped"]] == ["fc"] and "Clip" in report["skipped"][0][
        "reason"]
    x = {"x": np.random.default_rng(3).random((5, 3, 4, 4)).astype("float32")}
    a, b = _session(model).run(None, x)[0], _session(new).run(None, x)[0]
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * float(np.abs(a).max()))


# -- channel statistics -----------------------------------------------------------------

def test_channel_stats_and_blame_order() -> None:
    from mobilec.diagnose.channels import blame_order, channel_snr_db, channel_stats

    acts = np.ones((10, 4, 4, 8))
    acts[..., 0] = 0.0  # a dead channel must not make the ratio infinite
    acts[:5, ..., 3] *= 500.0
    acts[5:] *= -1
    stats = channel_stats(acts)
    assert stats["channels"] == 8 and stats["dead_channels"] == 1
    assert stats["widest_channel"] == 3 and stats["range_ratio"] == pytest.approx(250.5)
    snr = channel_snr_db(acts, acts + 0.1 * (np.arange(8) == 5))
    assert snr["worst_channel"] == 5 and snr["snr_db"][1] == float("inf")
    # the error shows in the consumer; the producer with unbalanced channels is blamed first
    order = blame_order(["probs", "conv2d_1", "conv2d", "hidden"],
                        [{"layer": "hidden", "kind": "Dense", "range_ratio": 9000.0},
                         {"layer": "conv2d", "kind": "Conv2D", "range_ratio": 2.0}],
                        {"hidden": ["probs"], "conv2d": ["conv2d_1"]})
    assert order == ["hidden", "probs", "conv2d_1", "conv2d"]


# -- the outlier model, end to end (real int8 conversions) -----------------------

@pytest.fixture(scope="module")
def digits_cnn() -> tuple[Any, Any, Any]:
    """The demo digits CNN (make_demo_model's layers) in tf_keras, trained 12 epochs."""
    from mobilec.sources.data import digits_split
    from mobilec.util.tfenv import set_seed

    k = tfk()
    set_seed(0)
    model = k.Sequential([
        k.Input((8, 8, 1), name="image"),
        k.layers.Conv2D(32, 3, padding="same", activation="relu"),
        k.layers.Conv2D(64, 3, padding="same", activation="relu"),
        k.layers.MaxPooling2D(), k.layers.Flatten(),
        k.layers.Dense(64, activation="relu", name="hidden"),
        k.layers.Dense(10, activation="softmax", name="probs")], name="digits_cnn")
    train, ev = digits_split()
    model.compile(optimizer=k.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy")
    model.fit(train.x, train.y, epochs=12, batch_size=32, verbose=0)
    return model, train, ev


def outlier_model(model: Any, x: np.ndarray) -> tuple[Any, int]:
    """Scale the most active hidden unit by 1e4 (weights and bias), its outgoing weights by 1e-4.

    The most active unit: a dead ReLU unit would make the same edit and change nothing.
    """
    k = tfk()
    hidden = k.Model(model.inputs, model.get_layer("hidden").output)(x, training=False).numpy()
    unit = int(hidden.mean(axis=0).argmax())
    out = k.models.clone_model(model)
    out.set_weights(model.get_weights())
    w, b = out.get_layer("hidden").get_weights()
    w[:, unit] *= OUTLIER
    b[unit] *= OUTLIER
    out.get_layer("hidden").set_weights([w, b])
    w2, b2 = out.get_layer("probs").get_weights()
    w2[unit] /= OUTLIER
    out.get_layer("probs").set_weights([w2, b2])
    return out, unit


def keras_accuracy(model: Any, ev: Any) -> float:
    return float(np.mean(model(ev.x, training=False).numpy().argmax(-1) == ev.y))


def tflite(model: Any, calib: np.ndarray | None = None) -> bytes:
    from mobilec.util.tfenv import import_tf

    tf = import_tf()
    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if calib is not None:  # full integer: int8 ops, activations calibrated on `calib`
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([calib[i:i + 1]] for i in range(len(calib)))
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return conv.convert()


def tflite_accuracy(blob: bytes, ev: Any) -> float:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=blob)
    i, o = it.get_input_details()[0], it.get_output_details()[0]
    it.resize_tensor_input(i["index"], [len(ev.x), 8, 8, 1])
    it.allocate_tensors()
    it.set_tensor(i["index"], ev.x.astype("float32"))
    it.invoke()
    return float(np.mean(it.get_tensor(o["index"]).argmax(-1) == ev.y))


def onnx_int8(proto: Any, calib: np.ndarray, tmp: Path, name: str) -> tuple[Path, Path]:
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    float_path, int8_path = tmp / f"{name}.onnx", tmp / f"{name}-int8.onnx"
    onnx.save(proto, str(float_path))
    in_name = proto.graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calib[i:i + 1] for i in range(len(calib)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.it, None)
            return None if batch is None else {in_name: batch}

    quantize_static(str(float_path), str(int8_path), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    return float_path, int8_path


def onnx_accuracy(path: Path, ev: Any) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: ev.x.astype("float32")})[0]
    return float(np.mean(out.argmax(-1) == ev.y))


@pytest.mark.slow
def test_equalization_rescues_int8_of_the_outlier_model(digits_cnn: tuple[Any, Any, Any],
                                                        tmp_path: Path) -> None:
    from mobilec.diagnose.channels import (
        blame_order,
        keras_consumers,
        layer_channel_stats,
        range_imbalance,
    )
    from mobilec.training.equalize import equalize_keras

    model, train, ev = digits_cnn
    calib = train.x[:100]
    float_acc = keras_accuracy(model, ev)
    assert float_acc >= 0.97
    bad, unit = outlier_model(model, train.x)
    assert keras_accuracy(bad, ev) == pytest.approx(float_acc, abs=1 / len(ev.x))

    # the diagnosis: only the rescaled Dense's output is unbalanced, and it is blamed first
    imbalance = range_imbalance(bad, calib)
    assert [r["layer"] for r in imbalance] == ["hidden"] and imbalance[0]["widest_channel"] == unit
    assert range_imbalance(model, calib) == []
    stats = layer_channel_stats(bad, calib)
    assert blame_order(["probs", "conv2d_1", "conv2d", "hidden"], stats,
                       keras_consumers(bad))[0] == "hidden"

    float_size = len(tflite(bad))
    int8_bad = tflite_accuracy(tflite(bad, calib), ev)
    assert int8_bad <= 0.3, int8_bad  # the 1e4 channel crushes the other 63 to zero

    fixed, report = equalize_keras(bad, calib_x=calib)
    assert report["max_rel_diff"] <= 1e-5
    pair = next(p for p in report["pairs"] if p["first"] == "hidden")
    assert pair["range_ratio_before"] > 1000 > 10 > pair["range_ratio_after"]
    blob = tflite(fixed, calib)
    int8_fixed = tflite_accuracy(blob, ev)
    assert int8_fixed >= float_acc - POINT, (int8_fixed, float_acc)
    assert len(blob) <= 0.30 * float_size, (len(blob), float_size)

    # bias correction keeps it there (it shifts biases by the weight-rounding error's mean)
    corrected, report_bc = equalize_keras(bad, calib_x=calib, bias_correction=True)
    assert report_bc["bias_correction"] and tflite_accuracy(tflite(corrected, calib), ev) >= \
        float_acc - POINT

    # on the plain model equalization costs nothing
    plain_int8 = tflite_accuracy(tflite(model, calib), ev)
    same, _ = equalize_keras(model, calib_x=calib)
    assert tflite_accuracy(tflite(same, calib), ev) >= plain_int8
    print(f"\nCLE tflite: float {float_acc:.4f}, outlier int8 {int8_bad:.4f}, equalized int8 "
          f"{int8_fixed:.4f}, size {len(blob)}/{float_size} = {len(blob) / float_size:.3f}, "
          f"plain int8 {plain_int8:.4f}")


@pytest.mark.slow
def test_onnx_equalization_rescues_ort_int8_of_the_outlier_model(
        digits_cnn: tuple[Any, Any, Any], tmp_path: Path) -> None:
    import tf2onnx

    from mobilec.formats.onnx_equalize import equalize_onnx
    from mobilec.util.tfenv import import_tf

    tf = import_tf()
    model, train, ev = digits_cnn
    calib = train.x[:100]
    bad, _ = outlier_model(model, train.x)
    spec = (tf.TensorSpec((None, 8, 8, 1), tf.float32, name="image"),)
    proto, _ = tf2onnx.convert.from_keras(bad, input_signature=spec, opset=17)
    from mobilec.diagnose.channels import onnx_range_imbalance

    rows = onnx_range_imbalance(proto, {"image": calib})  # the rescaled Dense's MatMul/Add/Relu
    assert rows and all("hidden" in r["layer"] for r in rows) and rows[0]["range_ratio"] > 1000
    float_path, int8_path = onnx_int8(proto, calib, tmp_path, "bad")
    float_acc = onnx_accuracy(float_path, ev)
    int8_bad = onnx_accuracy(int8_path, ev)
    assert int8_bad <= 0.3, int8_bad

    fixed, report = equalize_onnx(proto, calib={"image": calib})
    assert report["max_rel_diff"] <= 1e-5 and len(report["pairs"]) == 3
    float_path, int8_path = onnx_int8(fixed, calib, tmp_path, "fixed")
    int8_fixed = onnx_accuracy(int8_path, ev)
    assert onnx_accuracy(float_path, ev) == pytest.approx(float_acc)
    assert int8_fixed >= float_acc - POINT, (int8_fixed, float_acc)
    size, float_size = int8_path.stat().st_size, float_path.stat().st_size
    assert size <= 0.30 * float_size, (size, float_size)

    # the plain model: equalized int8 is no worse than plain int8
    plain, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17)
    plain_int8 = onnx_accuracy(onnx_int8(plain, calib, tmp_path, "plain")[1], ev)
    assert onnx_range_imbalance(plain, {"image": calib}) == []
    same, _ = equalize_onnx(plain)
    assert onnx_accuracy(onnx_int8(same, calib, tmp_path, "same")[1], ev) >= plain_int8
    print(f"\nCLE onnx: float {float_acc:.4f}, outlier int8 {int8_bad:.4f}, equalized int8 "
          f"{int8_fixed:.4f}, size {size}/{float_size} = {size / float_size:.3f}")
