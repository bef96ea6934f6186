"""Targets and delegates: one artifact per device, a delegate manifest per artifact (and the
hint inside each .tflite), op compatibility measured on the real op list, loading snippets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import COREML_STATUS, artifact, compress, read_report, run_cli, write_recipe

from mobilec.delegates.manifest import MANIFEST_SUFFIX
from mobilec.delegates.opcompat import nnapi_compat, parse_analyzer, tflite_ops
from mobilec.delegates.tflite_metadata import read_tflite_hint
from mobilec.policy.targets import NNAPI_DEPRECATED_API, TARGETS, plan_artifacts

ALL_TARGETS = ["android-nnapi", "android-gpu", "ios-coreml", "cpu"]
# (format, quantization, target, delegate, fallback) the demo must ship
EXPECTED = [
    ("tflite", "int8", "android-nnapi", "nnapi", "xnnpack"),
    ("tflite", "float16", "android-gpu", "gpu", "xnnpack"),
    ("coreml", "float16", "ios-coreml", "coreml", "cpu_only"),
    ("tflite", "float32", "cpu", "xnnpack", None),
    ("tflite", "int8", "cpu", "xnnpack", None),
    ("onnx", "float32", "cpu", "ort-cpu", None),
    ("onnx", "int8", "cpu", "ort-cpu", None),
]


@pytest.fixture(scope="module")
def four(demo_keras: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    d = tmp_path_factory.mktemp("four-targets")
    recipe = write_recipe(d, demo_keras, name="digits", targets=ALL_TARGETS,
                          metadata={"author": "Ada", "version": "2.1", "description": "digits",
                                    "license": "MIT"})
    report = compress(recipe)
    return report, d / "out"


def _input_name(report: dict) -> str:
    """tf_keras numbers input layers per process (input_1, input_3, …): ask the report."""
    return report["model"]["inputs"][0]["name"]


def _manifest(out: Path, a: dict) -> dict:
    path = out / (a["path"] + MANIFEST_SUFFIX)
    assert path.is_file(), path
    assert a["delegate_manifest"] == a["path"] + MANIFEST_SUFFIX
    return json.loads(path.read_text())


# ----------------------------------------------------------------------------- no TensorFlow


def test_planner_maps_each_target_to_its_artifact_and_delegate() -> None:
    specs = plan_artifacts(ALL_TARGETS, None)
    got = {(s.format, s.quantization, s.target, s.delegate, s.fallback) for s in specs}
    assert set(EXPECTED) <= got
    # the float32 Core ML baseline: what "smaller" is measured against
    assert any(s.format == "coreml" and s.quantization == "float32" and s.role == "baseline"
               for s in specs)
    # a recipe's quantize mode overrides the profiles; Core ML keeps float I/O
    coreml = {s.quantization for s in plan_artifacts(["ios-coreml"], "int8-io")}
    assert coreml == {"int8", "float32"}
    assert {s.quantization for s in plan_artifacts(["ios-coreml"], "palettize")} == \
        {"palettize", "float32"}
    skipped = [s for s in plan_artifacts(["android-gpu"], "palettize") if s.skipped_reason]
    assert skipped and "palettize" in skipped[0].skipped_reason


def test_targets_command_lists_profiles_with_nnapi_deprecation() -> None:
    proc = run_cli("targets", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = {r["target"]: r for r in json.loads(proc.stdout)}
    # ALL_TARGETS: the demo's targets; the ExecuTorch ones take PyTorch sources, ios-coreai
    # (every source, Keras through the ONNX bridge) has tests/test_coreai.py
    assert list(rows) == [*ALL_TARGETS, "android-executorch", "ios-executorch", "ios-coreai"]
    assert rows["android-executorch"]["artifacts"] == ".pte"
    assert rows["ios-executorch"]["delegate"] == "coreml"
    assert rows["android-nnapi"]["delegate"] == "nnapi"
    assert "Android 15" in rows["android-nnapi"]["warning"]
    assert rows["cpu"]["artifacts"] == ".tflite, .onnx"
    assert rows["ios-coreml"]["options"]["compute_units"] == "ALL"


def test_analyzer_gpu_warnings_are_parsed_per_op() -> None:
    # The analyzer's output format (tensorflow/lite/python/analyzer_wrapper/model_analyzer.cc)
    text = ("Subgraph#0 main(T#0) -> [T#4]\n"
            "  Op#0 CONV_2D(T#0, T#1, T#2) -> [T#3]\n"
            "  Op#1 CUMSUM(T#3, T#5[1]) -> [T#4]\n"
            "GPU COMPATIBILITY WARNING: Not supported op CUMSUM\n"
            "\nGPU COMPATIBILITY WARNING: Subgraph#0 has GPU delegate compatibility issues at "
            "nodes 1 with TFLite runtime version 2.x\n")
    assert parse_analyzer(text) == {1: "Not supported op CUMSUM"}


# ----------------------------------------------------------------------------- four targets


@pytest.mark.slow
def test_four_targets_write_each_artifact_with_its_delegate(four: tuple[dict, Path]) -> None:
    report, out = four
    assert report["exit_code"] == 0, [(a["path"], a["error"]) for a in report["artifacts"]]
    for fmt, quant, target, delegate, fallback in EXPECTED:
        a = artifact(report, fmt, quant, target)
        assert a["status"] == (COREML_STATUS if fmt == "coreml" else "ok"), a
        assert (a["delegate"], a["fallback"]) == (delegate, fallback)
        suffix = {"tflite": ".tflite", "onnx": ".onnx", "coreml": ".mlpackage"}[fmt]
        assert a["path"] == f"{target}/digits-{quant}{suffix}"
        assert (out / a["path"]).exists()
    nnapi = artifact(report, "tflite", "int8", "android-nnapi")
    gpu = artifact(report, "tflite", "float16", "android-gpu")
    f32 = artifact(report, "tflite", "float32", "cpu")
    assert nnapi["size_bytes"] < 0.3 * f32["size_bytes"]
    assert 0.45 * f32["size_bytes"] < gpu["size_bytes"] < 0.55 * f32["size_bytes"]
    for a in (nnapi, gpu):  # the hint in the metadata did not change what the model computes
        assert a["fidelity"]["top1_agreement"] >= 0.99
        assert abs(a["accuracy"] - report["model"]["accuracy"]) <= 0.01


@pytest.mark.slow
def test_every_artifact_has_a_correct_delegate_manifest(four: tuple[dict, Path]) -> None:
    report, out = four
    placed = [a for a in report["artifacts"] if a["status"] in ("ok", "unverified")]
    assert len(placed) == 8  # the 7 above + the float32 Core ML baseline
    for a in placed:
        m = _manifest(out, a)
        assert m["artifact"] == Path(a["path"]).name
        assert (m["format"], m["quantization"], m["target"]) == \
            (a["format"], a["quantization"], a["target"])
        assert (m["delegate"], m["fallback"]) == (a["delegate"], a["fallback"])
        assert m["status"] == a["status"]
        # the artifact's own I/O: what the app must feed and read
        assert [t["name"] for t in m["inputs"]] == [_input_name(report)]
        assert [t["name"] for t in m["outputs"]] == ["probs"]
        assert m["inputs"][0]["shape"][1:] == [8, 8, 1] and m["inputs"][0]["dtype"] == "float32"
        assert m["outputs"][0]["shape"][-1] == 10
        compat = m["op_compatibility"]
        assert compat["total"] > 0 and compat["supported"] == compat["total"]
        assert compat["unsupported"] == []
        assert a["op_compat"] == {k: compat[k] for k in a["op_compat"]}
        if a["target"]:
            assert m["options"] == {**TARGETS[a["target"]].options, **m["options"]}
    nnapi = _manifest(out, artifact(report, "tflite", "int8", "android-nnapi"))
    assert nnapi["deprecation"]["from_api_level"] == NNAPI_DEPRECATED_API
    assert nnapi["deprecation"]["then_runs_on"] == "xnnpack"
    assert any("Android 15" in w for w in nnapi["warnings"])
    # the int8 demo: QUANTIZE to int8 is NNAPI 1.3, so Android 11 (API 30)
    assert nnapi["op_compatibility"]["min_android_api"] == 30
    assert nnapi["op_compatibility"]["ops"]["CONV_2D"] == 2
    onnx_eps = _manifest(out, artifact(report, "onnx", "float32", "cpu"))["op_compatibility"]
    for ep in ("nnapi", "coreml-mlprogram"):
        info = onnx_eps["execution_providers"][ep]
        assert info["total_nodes"] > 0 and 0 <= info["supported_nodes"] <= info["total_nodes"]
    coreml = _manifest(out, artifact(report, "coreml", "float16", "ios-coreml"))
    assert coreml["options"]["compute_units"] == "ALL"
    assert coreml["op_compatibility"]["ops"]["conv"] == 2


@pytest.mark.slow
def test_tflite_files_carry_the_delegate_hint_and_still_run(four: tuple[dict, Path]) -> None:
    from ai_edge_litert.interpreter import Interpreter

    from mobilec.sources.data import digits_split

    report, out = four
    x = digits_split()[1].x[:16].astype("float32")
    name = _input_name(report)
    outputs = {}
    for a in report["artifacts"]:
        if a["format"] != "tflite":
            continue
        hint = read_tflite_hint(out / a["path"])
        assert hint is not None, a["path"]
        assert (hint["delegate"], hint["fallback"], hint["target"]) == \
            (a["delegate"], a["fallback"], a["target"])
        assert hint["op_compat"]["supported"] == a["op_compat"]["supported"]
        run = Interpreter(model_path=str(out / a["path"])).get_signature_runner()
        outputs[a["path"]] = np.concatenate([run(**{name: x[i:i + 1]})["probs"]
                                             for i in range(16)])
    assert "NNAPI" in read_tflite_hint(out / "android-nnapi/digits-int8.tflite")["warnings"][0]
    # the same int8 model placed twice (nnapi, cpu) with different hints computes the same
    np.testing.assert_array_equal(outputs["android-nnapi/digits-int8.tflite"],
                                  outputs["cpu/digits-int8.tflite"])
    assert (outputs["cpu/digits-float32.tflite"].argmax(1) ==
            outputs["android-gpu/digits-float16.tflite"].argmax(1)).all()


@pytest.mark.slow
def test_report_says_nnapi_is_deprecated_and_shows_loading_snippets(four: tuple[dict, Path]
                                                                    ) -> None:
    report, out = four
    on_disk = read_report(out)
    nnapi = artifact(on_disk, "tflite", "int8", "android-nnapi")
    assert "deprecated from Android 15" in nnapi["note"] and "XNNPACK" in nnapi["note"]
    assert "markdown_sections" not in on_disk
    md = (out / "report.md").read_text()
    snippets = md.split("## Loading on device", 1)[1]
    name = _input_name(report)
    var = name.replace("_", "")
    for needle in ("NnApiDelegate(", "Build.VERSION.SDK_INT in 27..34", "GpuDelegate(",
                   "CompatibilityList()", "config.computeUnits = .all", ".cpuOnly",
                   '"digits-int8.tflite"', '"digits-float16.tflite"', '"digits-float16", '
                   'withExtension: "mlmodelc"', '"digits-int8.onnx"',
                   f'mapOf("{name}" to {var}), mapOf("probs" to probs)',
                   f'["{name}": MLFeatureValue(multiArray: {var})]', 'featureValue(for: "probs")'):
        assert needle in snippets, needle
    assert snippets.count("```kotlin") == 4 and snippets.count("```swift") == 1


@pytest.mark.slow
def test_nnapi_check_depends_on_the_android_api_level(four: tuple[dict, Path]) -> None:
    _, out = four
    path = out / "android-nnapi/digits-int8.tflite"
    names = [o.name for o in tflite_ops(path)]
    assert names[0] == "QUANTIZE" and names[-1] == "DEQUANTIZE"
    at_30, at_28 = nnapi_compat(path, 30), nnapi_compat(path, 28)
    assert at_30["supported"] == at_30["total"] == len(names)
    # Android 9 has no signed int8 tensors: the int8 ops fall back, named with the reason
    assert at_28["supported"] < at_28["total"]
    assert {"QUANTIZE", "CONV_2D", "FULLY_CONNECTED"} <= set(at_28["unsupported"])
    assert any("needs Android API 30" in d["reason"] for d in at_28["details"])


# ----------------------------------------------------------------------------- GPU fallback


@pytest.mark.slow
def test_an_op_the_gpu_delegate_cannot_run_is_named_as_falling_back(
        tmp_path: Path, models_dir: Path) -> None:
    from mobilec.util.tfenv import import_keras3

    keras = import_keras3()
    keras.utils.set_random_seed(0)
    # UnitNormalization becomes TFLite's L2_NORMALIZATION, which the GPU delegate lacks
    model = keras.Sequential([
        keras.Input((8, 8, 1), name="image"),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.Flatten(),
        keras.layers.UnitNormalization(),
        keras.layers.Dense(10, activation="softmax", name="probs"),
    ])
    path = models_dir / "l2norm.keras"
    model.save(path)
    report = compress(write_recipe(tmp_path, path, name="l2", targets=["android-gpu"]))
    a = artifact(report, "tflite", "float16", "android-gpu")
    assert a["status"] == "ok", a
    compat = a["op_compat"]
    assert compat["unsupported"] == ["L2_NORMALIZATION"]
    assert compat["supported"] == compat["total"] - 1
    assert "L2_NORMALIZATION" in a["note"] and "fall back to the XNNPACK CPU delegate" in a["note"]
    m = _manifest(tmp_path / "out", a)
    detail = m["op_compatibility"]["details"]
    assert [d["op"] for d in detail] == ["L2_NORMALIZATION"]
    assert "Not supported op" in detail[0]["reason"]
    assert any("L2_NORMALIZATION" in w for w in m["warnings"])
    assert read_tflite_hint(tmp_path / "out" / a["path"])["op_compat"]["unsupported"] == \
        ["L2_NORMALIZATION"]
