"""Core ML from TensorFlow graphs coremltools' frontend trips on: several inputs (each
named), Erfc (Keras 3's exact GELU), grouped convolutions (never-inlined XLA calls)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import COREML_STATUS, artifact, compress, write_recipe

from mobilec.util.tfenv import configure_environment, import_keras3, import_tf


def _keras_recipe(d: Path, model: object, data: dict[str, np.ndarray]) -> Path:
    model.save(d / "m.keras")  # type: ignore[attr-defined]
    np.savez(d / "eval.npz", **data)
    return write_recipe(d, d / "m.keras", name="m", targets=["ios-coreml"],
                        data={"source": "npz", "eval": str(d / "eval.npz"), "eval_samples": 8,
                              "calibration_samples": 8},
                        stages=[{"quantize": {"mode": "float16"}},
                                {"convert": {"formats": ["coreml"]}}])


@pytest.mark.slow
def test_two_input_keras_model_converts_with_named_inputs(tmp_path: Path) -> None:
    configure_environment()
    keras = import_keras3()
    image = keras.Input((8, 8, 3), name="image")
    features = keras.Input((4,), name="features")
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(image))
    y = keras.layers.Dense(3, activation="softmax", name="probs")(
        keras.layers.Concatenate()([x, features]))
    rng = np.random.default_rng(0)
    recipe = _keras_recipe(tmp_path, keras.Model([image, features], y),
                           {"image": rng.random((8, 8, 8, 3), np.float32),
                            "features": rng.random((8, 4), np.float32)})
    report = compress(recipe)
    ml = artifact(report, "coreml", "float16", "ios-coreml")
    assert ml["status"] == COREML_STATUS, ml["error"]
    # the function coremltools got, run on both inputs (fed by name) against the Keras model
    graph = ml["built_from"][0]
    assert graph["graph"] == "the TensorFlow function handed to coremltools"
    assert graph["snr_db"] is None or graph["snr_db"] > 40
    names = [i["name"] for i in ml["verification"]["inputs"]]
    assert names == ["image", "features"]
    assert [i["shape"] for i in ml["verification"]["inputs"]] == [[1, 8, 8, 3], [1, 4]]


@pytest.mark.slow
def test_grouped_convolution_converts(tmp_path: Path) -> None:
    """groups > 1 runs through a jit-compiled, _noinline tf.function in TensorFlow."""
    configure_environment()
    keras = import_keras3()
    image = keras.Input((8, 8, 4), name="image")
    x = keras.layers.Conv2D(4, 3, groups=4, padding="same")(image)  # depthwise, ConvNeXt-style
    x = keras.layers.Conv2D(8, 3, groups=2)(x)
    y = keras.layers.Dense(2, name="out")(keras.layers.GlobalAveragePooling2D()(x))
    recipe = _keras_recipe(tmp_path, keras.Model(image, y),
                           {"image": np.random.default_rng(0).random((8, 8, 8, 4), np.float32)})
    report = compress(recipe)
    ml = artifact(report, "coreml", "float16", "ios-coreml")
    assert ml["status"] == COREML_STATUS, ml["error"]


def test_erfc_converts_once_registered() -> None:
    """Keras 3's exact GELU lowers to Erfc, which coremltools 9 has no converter for."""
    configure_environment()
    from mobilec.formats.coreml_source import register_missing_tf_ops
    from mobilec.formats.coreml_tools import import_coremltools

    tf = import_tf()
    ct = import_coremltools()
    register_missing_tf_ops()
    register_missing_tf_ops()  # idempotent

    @tf.function(input_signature=[tf.TensorSpec([1, 6], tf.float32, name="x")])
    def f(x: object) -> object:
        return 0.5 * x * tf.math.erfc(-x / np.sqrt(2.0))

    model = ct.convert([f.get_concrete_function()], source="tensorflow",
                       convert_to="mlprogram", skip_model_load=True,
                       inputs=[ct.TensorType(name="x", shape=(1, 6))])
    ops = [op.type for op in model.get_spec().mlProgram.functions["main"].block_specializations
           [next(iter(model.get_spec().mlProgram.functions["main"].block_specializations))]
           .operations]
    assert "erf" in ops
