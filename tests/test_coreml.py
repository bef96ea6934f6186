"""Core ML: .mlpackage (mlprogram) and .mlmodel (neuralnetwork) from Keras and ONNX, the
quantize plan applied with coremltools.optimize, structural verification off macOS."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import COREML_STATUS, artifact, compress, write_recipe

from mobilec.delegates.manifest import MANIFEST_SUFFIX
from mobilec.errors import MobilecError, UnsupportedError
from mobilec.formats.coreml import NOT_RUN_REASON, deployment_target
from mobilec.recipe.schema import CoreMLConfig

OFF_MAC = sys.platform != "darwin"
METADATA = {"author": "Ada", "version": "2.1", "description": "digits classifier", "license": "MIT"}


def _ct():  # noqa: ANN202 - coremltools, quietly
    from mobilec.formats.coreml import import_coremltools

    return import_coremltools()


@pytest.fixture(scope="module")
def int8_run(demo_keras: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """int8 Core ML plus .tflite, so the float32 .tflite of the same model is the yardstick."""
    d = tmp_path_factory.mktemp("coreml-int8")
    recipe = write_recipe(d, demo_keras, name="digits", targets=["ios-coreml"],
                          stages=[{"quantize": {"mode": "int8"}},
                                  {"convert": {"formats": ["coreml", "tflite"]}}],
                          metadata=METADATA)
    return compress(recipe), d / "out"


# ----------------------------------------------------------------------------- no TensorFlow


def test_deployment_target_follows_kind_and_mode() -> None:
    assert deployment_target(CoreMLConfig(), "float16") == "iOS16"
    assert deployment_target(CoreMLConfig(), "int4") == "iOS18"  # default raised for int4
    assert deployment_target(CoreMLConfig(kind="mlmodel"), "int8") is None
    with pytest.raises(UnsupportedError, match="needs kind mlpackage"):
        deployment_target(CoreMLConfig(kind="mlmodel", minimum_deployment_target="iOS16"), "int8")
    with pytest.raises(UnsupportedError, match="iOS18"):
        deployment_target(CoreMLConfig(minimum_deployment_target="iOS17"), "int4")
    with pytest.raises(UnsupportedError, match="mlprogram"):
        deployment_target(CoreMLConfig(minimum_deployment_target="iOS14"), "float16")


# ----------------------------------------------------------------------------- Keras -> Core ML


@pytest.mark.slow
def test_int8_mlpackage_reloads_and_is_a_third_of_float32_tflite(int8_run: tuple[dict, Path]
                                                                 ) -> None:
    report, out = int8_run
    assert report["exit_code"] == 0, [(a["path"], a["error"]) for a in report["artifacts"]]
    ml = artifact(report, "coreml", "int8", "ios-coreml")
    base = artifact(report, "coreml", "float32", None)
    tfl32 = artifact(report, "tflite", "float32", None)
    assert ml["path"] == "ios-coreml/digits-int8.mlpackage"
    assert ml["status"] == base["status"] == COREML_STATUS
    assert ml["size_bytes"] <= 0.35 * tfl32["size_bytes"], (ml["size_bytes"], tfl32["size_bytes"])
    assert base["size_bytes"] > 4 * 85_000  # float32 weights of the 85k-parameter model
    assert ml["size_ratio"] > 3.0  # vs the float32 Core ML baseline
    assert ml["precision"].startswith("int8 weights") and "float16 compute" in ml["precision"]
    assert base["precision"] == "float32 weights and compute"
    ct = _ct()
    model = ct.models.MLModel(str(out / ml["path"]), skip_model_load=True)
    spec = model.get_spec()
    assert spec.WhichOneof("Type") == "mlProgram"
    # tf_keras numbers input layers per process (input_1, input_3, …): the report knows which
    assert [i.name for i in spec.description.input] == [report["model"]["inputs"][0]["name"]]
    assert list(spec.description.input[0].type.multiArrayType.shape) == [1, 8, 8, 1]
    assert [o.name for o in spec.description.output] == ["probs"]
    arr = spec.description.output[0].type.multiArrayType
    assert list(arr.shape) == [1, 10] and arr.dataType == ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32
    assert (model.author, model.version, model.short_description, model.license) == \
        ("Ada", "2.1", "digits classifier", "MIT")
    ops = [op.type for f in spec.mlProgram.functions.values()
           for b in f.block_specializations.values() for op in b.operations]
    assert ops.count("constexpr_affine_dequantize") >= 2  # the int8 conv and dense kernels
    assert ml["verification"]["ops"] == ml["op_compat"]["total"] > 5


@pytest.mark.slow
@pytest.mark.skipif(not OFF_MAC, reason="off macOS only: on a Mac Core ML runs and is measured")
def test_core_ml_accuracy_is_null_with_the_reason_off_macos(int8_run: tuple[dict, Path]) -> None:
    report, out = int8_run
    ml = artifact(report, "coreml", "int8", "ios-coreml")
    assert ml["accuracy"] is None and ml["latency_ms"] is None
    assert NOT_RUN_REASON in ml["note"]
    tfl = artifact(report, "tflite", "int8", None)  # the .tflite of the same plan did run
    assert tfl["accuracy"] > 0.9
    manifest = json.loads((out / (ml["path"] + MANIFEST_SUFFIX)).read_text())
    assert manifest["delegate"] == "coreml" and manifest["fallback"] == "cpu_only"
    assert manifest["options"]["minimum_deployment_target"] == "iOS16"


@pytest.mark.slow
def test_4bit_palettized_mlpackage_is_under_a_fifth_of_float32_tflite(
        demo_keras: Path, int8_run: tuple[dict, Path], tmp_path: Path) -> None:
    tfl32 = artifact(int8_run[0], "tflite", "float32", None)["size_bytes"]
    report = compress(write_recipe(tmp_path, demo_keras, name="digits", targets=["ios-coreml"],
                                   stages=[{"quantize": {"mode": "palettize", "bits": 4}}]))
    pal = artifact(report, "coreml", "palettize", "ios-coreml")
    assert pal["status"] == COREML_STATUS, pal
    assert pal["size_bytes"] <= 0.2 * tfl32, (pal["size_bytes"], tfl32)
    assert pal["precision"].startswith("4-bit palettized weights")
    spec = _ct().utils.load_spec(str(tmp_path / "out" / pal["path"]))
    ops = [op.type for f in spec.mlProgram.functions.values()
           for b in f.block_specializations.values() for op in b.operations]
    assert ops.count("constexpr_lut_to_dense") >= 2


@pytest.mark.slow
def test_mlmodel_kind_writes_a_neuralnetwork(demo_keras: Path, tmp_path: Path) -> None:
    report = compress(write_recipe(tmp_path, demo_keras, name="digits", targets=["ios-coreml"],
                                   stages=[{"convert": {"coreml": {"kind": "mlmodel"}}}]))
    ml = artifact(report, "coreml", "float16", "ios-coreml")
    base = artifact(report, "coreml", "float32", None)
    assert ml["path"] == "ios-coreml/digits-float16.mlmodel"
    assert ml["status"] == base["status"] == COREML_STATUS, (ml["error"], base["error"])
    assert 0.45 < ml["size_bytes"] / base["size_bytes"] < 0.55  # float16 weights
    spec = _ct().models.MLModel(str(tmp_path / "out" / ml["path"]), skip_model_load=True).get_spec()
    assert spec.WhichOneof("Type") == "neuralNetwork"
    assert [o.name for o in spec.description.output] == ["probs"]
    layers = [layer.WhichOneof("layer") for layer in spec.neuralNetwork.layers]
    assert layers.count("convolution") == 2 and layers.count("innerProduct") == 2
    assert (tmp_path / "out" / (ml["path"] + MANIFEST_SUFFIX)).is_file()


@pytest.mark.slow
@pytest.mark.skipif(not OFF_MAC, reason="structural check is the off-macOS verification")
def test_structure_that_differs_from_the_source_fails_verification(
        int8_run: tuple[dict, Path], tmp_path: Path) -> None:
    from mobilec.formats.coreml import structural_check
    from mobilec.recipe.loader import load_recipe_text
    from mobilec.state import Artifact, ModelState, TensorSpec

    report, out = int8_run
    recipe = load_recipe_text("version: 1\nmodel: {path: m.keras}\n", base_dir=tmp_path,
                              filename="t.yaml")
    state = ModelState(recipe=recipe, out_dir=tmp_path, work_dir=tmp_path)
    state.inputs = [TensorSpec(report["model"]["inputs"][0]["name"], [None, 8, 8, 1])]
    state.outputs = [TensorSpec("probs", [None, 10])]
    good = Artifact(path=out / "ios-coreml/digits-int8.mlpackage", format="coreml",
                    quantization="int8")
    structural_check(state, good)
    assert good.status == "ok" and good.verification["inputs"][0]["shape"] == [1, 8, 8, 1]
    state.outputs = [TensorSpec("scores", [None, 12])]  # not what the source model had
    bad = Artifact(path=good.path, format="coreml", quantization="int8")
    structural_check(state, bad)
    assert bad.status == "failed-verification"
    assert "no output named 'scores' (has 'probs')" in bad.error and "[1, 12]" in bad.error


@pytest.mark.slow
def test_several_outputs_keep_their_names_shapes_and_order(tmp_path: Path) -> None:
    from mobilec.util.tfenv import import_tf_keras

    tfk = import_tf_keras()
    inp = tfk.Input((8, 8, 1), name="image")
    flat = tfk.layers.Flatten()(inp)
    # names that sort against the model's order: nothing may be matched alphabetically
    zeta = tfk.layers.Dense(10, activation="softmax", name="zeta")(flat)
    alpha = tfk.layers.Dense(1, name="alpha")(flat)
    path = tmp_path / "two.h5"
    tfk.Model(inp, [zeta, alpha]).save(str(path), save_format="h5")
    report = compress(write_recipe(tmp_path, path, name="two", targets=["ios-coreml"]))
    ml = artifact(report, "coreml", "float16", "ios-coreml")
    assert ml["status"] == COREML_STATUS, ml["error"]
    spec = _ct().utils.load_spec(str(tmp_path / "out" / ml["path"]))
    assert [(o.name, list(o.type.multiArrayType.shape)) for o in spec.description.output] == \
        [("zeta", [1, 10]), ("alpha", [1, 1])]


# ----------------------------------------------------------------------------- ONNX -> Core ML


def _tiny_onnx(path: Path) -> Path:
    """Flatten -> Gemm -> Softmax on the digits layout [N, 8, 8, 1], written with onnx.helper."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((64, 10)) * 0.3).astype("float32"), "w")
    b = numpy_helper.from_array(np.zeros(10, "float32"), "b")
    nodes = [helper.make_node("Flatten", ["image"], ["flat"], axis=1),
             helper.make_node("Gemm", ["flat", "w", "b"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=1)]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 8, 8, 1])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["n", 10])], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.slow
def test_onnx_recipe_targeting_ios_coreml(tmp_path: Path) -> None:
    """Works through onnx2tf's SavedModel; where ONNX cannot reach TF, a clear exit 2."""
    model = _tiny_onnx(tmp_path / "tiny.onnx")
    recipe = write_recipe(tmp_path, model, name="tiny", targets=["ios-coreml"])
    try:
        report = compress(recipe, strict=True)
    except MobilecError as exc:
        assert exc.exit_code == 2
        assert "ONNX" in exc.message
        assert not list((tmp_path / "out").glob("**/*.mlpackage"))
        return
    ml = artifact(report, "coreml", "float16", "ios-coreml")
    assert ml["status"] == COREML_STATUS, ml["error"]
    # what it stands on: onnx2tf's graph, verified against onnxruntime before Core ML was built
    graph = ml["built_from"][0]
    assert graph["graph"] == "onnx2tf's TensorFlow graph" and graph["snr_db"] > 40
    assert report["exit_code"] == (0 if COREML_STATUS == "ok" else 3)  # --strict
    io = json.loads((tmp_path / "out" / (ml["path"] + MANIFEST_SUFFIX)).read_text())
    assert [t["name"] for t in io["inputs"]] == ["image"]
    assert io["inputs"][0]["shape"] == [1, 8, 8, 1]
    assert [t["name"] for t in io["outputs"]] == ["probs"]
    assert ml["op_compat"]["supported"] == ml["op_compat"]["total"] > 0
