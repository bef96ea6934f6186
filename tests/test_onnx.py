"""ONNX models in: load/inspect, .onnx -> .tflite through onnx2tf, always verified.

Real models (tests/onnx_models.py: tf2onnx exports of trained tf_keras models and
onnx.helper graphs), real conversions, numbers from real runs. Models are built
once per session, only those a selected test needs.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import numpy as np
import onnx_models
import pytest
import yaml
from conftest import artifact, compress, read_report, run_cli, write_recipe

from mobilec.errors import ModelLoadError
from mobilec.util.fs import sha256_path


class Zoo:
    """Builds each test model on first use, into one session directory."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.paths: dict[str, Path] = {}

    def __getitem__(self, name: str) -> Path:
        if name not in self.paths:
            from mobilec.util.tfenv import configure_environment

            configure_environment()
            self.paths[name] = getattr(onnx_models, name)(self.directory)
        return self.paths[name]


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    return Zoo(tmp_path_factory.mktemp("onnx-zoo"))


def onnx_recipe(directory: Path, model: Path, *, input_shape: list[int] | None = None,
                formats: list[str] | None = None, mode: str | None = None,
                targets: list[str] | None = None) -> Path:
    stages: list[Any] = []
    if mode:
        stages.append({"quantize": {"mode": mode}})
    if formats:
        stages.append({"convert": {"formats": formats}})
    path = write_recipe(directory, model, name=model.stem, data=onnx_models.data_paths(model),
                        stages=stages, targets=targets or ["cpu"])
    if input_shape is not None:
        doc = yaml.safe_load(path.read_text())
        doc["model"]["input_shape"] = input_shape
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def verified(row: dict[str, Any], min_top1: float = 0.99) -> dict[str, Any]:
    """The artifact passed the gate; return its verification numbers."""
    assert row["status"] == "ok", row
    v = row["verification"]
    assert v["samples"] > 0
    if v["top1_agreement"] is not None:
        assert v["top1_agreement"] >= min_top1, v
    return v


def ort_outputs(model: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    fixed = isinstance(sess.get_inputs()[0].shape[0], int)
    rows = [sess.run(None, {name: x[i:i + 1]}) for i in range(len(x))] if fixed else \
        [sess.run(None, {name: x})]
    names = [o.name for o in sess.get_outputs()]
    return {n: np.concatenate([r[k] for r in rows]) for k, n in enumerate(names)}


def tflite_outputs(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """Run a .tflite's serving signature one sample at a time (batch 1), outputs by name."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    runner = it.get_signature_runner()
    in_name = next(iter(runner.get_input_details()))
    rows = [runner(**{in_name: x[i:i + 1]}) for i in range(len(x))]
    return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}


# ----------------------------------------------------------------------------- load and inspect
# (no TensorFlow: onnx and onnxruntime only)


def test_inspect_shows_io_opset_ops_params(zoo: Zoo) -> None:
    from mobilec.sources.onnx_input import inspect_onnx

    info = inspect_onnx(zoo["helper_image_model"])
    assert info["inputs"] == [{"name": "pixels", "shape": [1, 3, "height", "width"],
                               "dtype": "float32"}]
    assert info["outputs"] == [{"name": "probs", "shape": [1, 5], "dtype": "float32"},
                               {"name": "features", "shape": [1, 4, "height", "width"],
                                "dtype": "float32"}]
    assert info["opset"] == {"ai.onnx": 17}
    assert info["ops"] == {"Conv": 1, "Flatten": 1, "Gemm": 1, "GlobalAveragePool": 1, "Relu": 1,
                           "Softmax": 1}
    assert info["params"] == 4 * 3 * 3 * 3 + 4 + 4 * 5 + 5
    assert info["input_layout"] == "NCHW"


def test_inspect_cli_names_custom_domain_ops(zoo: Zoo) -> None:
    res = run_cli("inspect", str(zoo["custom_op_model"]), "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["format"] == "onnx"
    assert info["ops"] == {"MatMul": 2, "Softmax": 1, "com.microsoft::QuickGelu": 1}
    assert info["opset"] == {"ai.onnx": 17, "com.microsoft": 1}
    assert info["params"] == 64 * 16 + 16 * 10
    assert info["size_bytes"] == zoo["custom_op_model"].stat().st_size


def _state(tmp_path: Path, model: Path, input_shape: list[int] | None = None) -> Any:
    from mobilec.recipe.schema import ModelSpec, Recipe
    from mobilec.state import ModelState

    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    recipe = Recipe(model=ModelSpec(path=model, input_shape=input_shape))
    return ModelState(recipe=recipe, out_dir=tmp_path / "out", work_dir=work)


def test_dynamic_dim_without_input_shape_names_the_dim(zoo: Zoo, tmp_path: Path) -> None:
    from mobilec.sources.onnx_input import load_onnx

    with pytest.raises(ModelLoadError) as err:
        load_onnx(_state(tmp_path, zoo["helper_image_model"]), zoo["helper_image_model"])
    assert "dynamic dim 2 ('height')" in err.value.message
    assert "model.input_shape" in err.value.hint


def test_input_shape_fixes_dims_on_a_copy_never_the_users_file(zoo: Zoo, tmp_path: Path) -> None:
    import onnx

    from mobilec.sources.onnx_input import dims_of, load_onnx

    path = zoo["helper_image_model"]
    before = sha256_path(path)
    state = _state(tmp_path, path, [1, 3, 16, 16])
    params = load_onnx(state, path)
    assert sha256_path(path) == before
    assert state.onnx_path.parent == state.work_dir
    assert state.inputs[0].shape == [1, 3, 16, 16]
    assert state.input_layout == "NCHW"
    copy = onnx.load(str(state.onnx_path))
    assert dims_of(copy.graph.input[0]) == [1, 3, 16, 16]
    assert [o.shape for o in state.outputs] == [[1, 5], [1, 4, 16, 16]]  # shape inference
    assert params == 137
    with pytest.raises(ModelLoadError, match="dim 1 is 3"):
        load_onnx(_state(tmp_path, path, [1, 4, 16, 16]), path)


def _external_model(directory: Path, location: str) -> Path:
    """An MLP whose weights live in a separate file, then pointed at `location`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    directory.mkdir(parents=True, exist_ok=True)
    w = numpy_helper.from_array(np.arange(64 * 10, dtype=np.float32).reshape(64, 10) / 640, "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "ext",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])],
                              [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = directory / "ext.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="weights.bin",
              size_threshold=0)
    if location != "weights.bin":
        model = onnx.load(str(path), load_external_data=False)
        for entry in model.graph.initializer[0].external_data:
            if entry.key == "location":
                entry.value = location
        onnx.save(model, str(path))
    return path


def test_external_data_inside_the_models_folder_loads_into_a_self_contained_copy(
        tmp_path: Path) -> None:
    import onnxruntime as ort

    from mobilec.sources.onnx_input import load_onnx

    path = _external_model(tmp_path / "m", "weights.bin")
    state = _state(tmp_path, path)
    assert load_onnx(state, path) == 640
    assert not list(state.work_dir.glob("*.bin"))  # weights are inside the copy
    out = ort.InferenceSession(str(state.onnx_path)).run(None, {"x": np.ones((2, 64), "float32")})
    assert out[0].shape == (2, 10) and float(out[0][0, 9]) == pytest.approx(sum(
        (np.arange(64) * 10 + 9) / 640), rel=1e-5)


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../secret.bin"])
def test_external_data_outside_the_models_folder_is_refused(tmp_path: Path, location: str) -> None:
    from mobilec.sources.onnx_input import inspect_onnx, load_onnx

    (tmp_path / "secret.bin").write_bytes(b"\0" * 4096)
    path = _external_model(tmp_path / "m", location)
    with pytest.raises(ModelLoadError, match="outside the model's folder|absolute path"):
        load_onnx(_state(tmp_path, path), path)
    with pytest.raises(ModelLoadError, match="outside the model's folder|absolute path"):
        inspect_onnx(path)


@pytest.mark.parametrize(("shape", "layout"), [
    ([None, 1, 8, 8], "NCHW"), ([None, 3, 224, 224], "NCHW"), ([None, 8, 8, 1], "NHWC"),
    ([None, 224, 224, 3], "NHWC"), ([None, 64, 7, 7], "NCHW"), ([None, 4, 32], "NCW"),
    ([None, 32, 4], "NWC"), ([None, 64], "NC"), ([None, 2, 16, 16, 16], "NCDHW")])
def test_input_layout_guess(shape: list[int | None], layout: str) -> None:
    from mobilec.sources.onnx_input import guess_layout

    assert guess_layout(shape) == layout


# ----------------------------------------------------------------------------- .onnx -> .tflite


@pytest.mark.slow
def test_nchw_conv_classifier_every_plan_verified(zoo: Zoo, tmp_path: Path) -> None:
    """float32, float16 and int8 (calibrated with the recipe's NCHW data, transposed) .tflite,
    plus the .onnx pass-through and ORT int8, all from one onnx2tf conversion."""
    model = zoo["conv_classifier_nchw"]
    before = sha256_path(model)
    report = compress(onnx_recipe(tmp_path, model, targets=["cpu", "android-gpu"]))
    assert sha256_path(model) == before
    assert report["exit_code"] == 0, [(a["path"], a["error"]) for a in report["artifacts"]]
    assert report["model"]["format"] == "onnx"
    assert report["model"]["inputs"][0]["shape"] == [None, 1, 8, 8]
    for quant, target in (("float32", "cpu"), ("int8", "cpu"), ("float16", "android-gpu")):
        row = artifact(report, "tflite", quant, target)
        v = verified(row)
        assert row["input_layout"] == "NHWC"
        assert row["accuracy"] >= report["model"]["accuracy"] - 0.02
        if quant != "int8":
            assert v["snr_db"] is None or v["snr_db"] >= 40
    assert artifact(report, "tflite", "float32")["accuracy"] == report["model"]["accuracy"]
    for quant in ("float32", "int8"):
        row = artifact(report, "onnx", quant)
        verified(row)
        assert row["input_layout"] == "NCHW"
    assert report["model"]["accuracy"] > 0.8  # a trained model, not noise
    assert any("onnx2tf" in n and "[0, 2, 3, 1]" in n for n in report["notes"])
    # The .tflite really takes NHWC: LiteRT on transposed data matches onnxruntime on NCHW data.
    x = np.load(str(model.with_suffix("")) + "-eval.npz")["x"][:16]
    tfl = tflite_outputs(tmp_path / "out" / artifact(report, "tflite", "float32")["path"],
                         np.transpose(x, (0, 2, 3, 1)))
    ref = ort_outputs(model, x)
    assert np.abs(tfl["probs"] - ref["probs"]).max() < 1e-4


@pytest.mark.slow
def test_mlp_dynamic_range_plan(zoo: Zoo, tmp_path: Path) -> None:
    model = zoo["mlp"]
    report = compress(onnx_recipe(tmp_path, model, mode="dynamic"), evaluate=False)
    assert report["exit_code"] == 0, [(a["path"], a["error"]) for a in report["artifacts"]]
    f32 = verified(artifact(report, "tflite", "float32"))
    assert f32["snr_db"] >= 60 and f32["top1_agreement"] == 1.0
    dyn = artifact(report, "tflite", "dynamic")
    verified(dyn)
    assert dyn["input_layout"] == "NC"
    assert dyn["size_bytes"] < artifact(report, "tflite", "float32")["size_bytes"] / 2
    verified(artifact(report, "onnx", "dynamic"))


@pytest.mark.slow
def test_conv1d_over_sequences_ncw_becomes_nwc(zoo: Zoo, tmp_path: Path) -> None:
    model = zoo["conv1d_sequences"]
    report = compress(onnx_recipe(tmp_path, model, formats=["tflite"]), evaluate=False)
    assert report["exit_code"] == 0, [(a["path"], a["error"]) for a in report["artifacts"]]
    for quant in ("float32", "int8"):
        row = artifact(report, "tflite", quant)
        verified(row)
        assert row["input_layout"] == "NWC"
    assert report["model"]["inputs"][0]["shape"] == [None, 4, 32]


@pytest.mark.slow
def test_two_outputs_keep_their_names_order_and_values(zoo: Zoo, tmp_path: Path) -> None:
    """A classifier head and a regression head: both verified, each by its ONNX name."""
    model = zoo["two_outputs"]
    report = compress(onnx_recipe(tmp_path, model, formats=["tflite"]), evaluate=False)
    assert report["exit_code"] == 0, [(a["path"], a["error"]) for a in report["artifacts"]]
    assert [o["name"] for o in report["model"]["outputs"]] == ["digit", "ink"]
    v = verified(artifact(report, "tflite", "float32"))
    assert v["snr_db"] >= 40  # the worst of both outputs
    assert artifact(report, "tflite", "float32")["input_layout"] == "NHWC"  # kept as exported
    x = np.load(str(model.with_suffix("")) + "-eval.npz")["x"][:16]
    got = tflite_outputs(tmp_path / "out" / artifact(report, "tflite", "float32")["path"], x)
    ref = ort_outputs(model, x)
    assert sorted(got) == ["digit", "ink"]
    for name in ("digit", "ink"):
        assert got[name].shape == ref[name].shape
        assert np.abs(got[name] - ref[name]).max() < 1e-4


@pytest.mark.slow
def test_helper_model_dynamic_dims_nchw_feature_map_and_no_network(
        zoo: Zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A [1, 3, H, W] input is exactly when onnx2tf downloads sample images from GitHub.
    With every connection refused, the conversion still works and nothing tried to connect."""
    import onnx2tf.utils.common_functions as o2t_common

    from mobilec.sources import onnx2tf_bridge

    attempts: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(o2t_common.requests, "get", refuse)
    served: list[int] = []
    real_samples = onnx2tf_bridge.sample_images
    monkeypatch.setattr(onnx2tf_bridge, "sample_images",
                        lambda: served.append(1) or real_samples())

    model = zoo["helper_image_model"]
    before = sha256_path(model)
    report = compress(onnx_recipe(tmp_path, model, input_shape=[1, 3, 16, 16],
                                  formats=["tflite", "onnx"]), evaluate=False)
    assert attempts == []
    assert served, "onnx2tf did not reach its sample-image download path; the test proves nothing"
    assert sha256_path(model) == before
    assert report["exit_code"] == 0, [(a["path"], a["error"]) for a in report["artifacts"]]
    for quant in ("float32", "int8"):
        verified(artifact(report, "tflite", quant))
        verified(artifact(report, "onnx", quant))
    # The NCHW feature map comes back NCHW (onnx2tf computed it NHWC), under its ONNX name.
    x = np.load(str(model.with_suffix("")) + "-eval.npz")["x"][:8]
    got = tflite_outputs(tmp_path / "out" / artifact(report, "tflite", "float32")["path"],
                         np.transpose(x, (0, 2, 3, 1)))
    ref = ort_outputs(tmp_path / "out" / artifact(report, "onnx", "float32")["path"], x)
    assert got["features"].shape == (8, 4, 16, 16)
    assert np.abs(got["features"] - ref["features"]).max() < 1e-4
    assert np.abs(got["probs"] - ref["probs"]).max() < 1e-5


@pytest.mark.slow
def test_op_onnx2tf_cannot_convert_fails_tflite_only(zoo: Zoo, tmp_path: Path) -> None:
    model = zoo["custom_op_model"]
    report = compress(onnx_recipe(tmp_path, model), evaluate=False)
    assert report["exit_code"] == 3
    for quant in ("float32", "int8"):
        row = artifact(report, "tflite", quant)
        assert row["status"] == "failed"
        assert "com.microsoft::QuickGelu" in row["error"] and "'quick_gelu'" in row["error"]
    assert not list((tmp_path / "out").rglob("*.tflite"))
    verified(artifact(report, "onnx", "float32"))
    for quant in ("float32", "int8"):
        row = artifact(report, "onnx", quant)
        assert row["status"] == "ok"
        assert (tmp_path / "out" / row["path"]).is_file()


def _perturb_weights(path: Path) -> None:
    """Add noise to every weight of the copy onnx2tf is about to convert."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    rng = np.random.default_rng(0)
    for init in model.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.dtype == np.float32 and w.size > 16:
            init.CopyFrom(numpy_helper.from_array(
                (w + rng.normal(0, w.std(), w.shape)).astype(np.float32), init.name))
    onnx.save(model, str(path))


def _reverse_classes(outputs: list[Any]) -> list[Any]:
    """Swap the class axis end for end: a layout bug that still runs and looks plausible."""
    from mobilec.util.tfenv import import_tf

    return [import_tf().reverse(outputs[0], axis=[-1]), *outputs[1:]]


@pytest.mark.slow
@pytest.mark.parametrize("hook", ["weights", "class-axis"])
def test_broken_conversion_is_caught_before_anything_is_built_from_it(
        zoo: Zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hook: str) -> None:
    """onnx2tf's graph is verified against onnxruntime before any .tflite is made from it: a
    wrong graph fails every artifact built from it, with its figures, and no file is written."""
    from mobilec.sources import onnx2tf_bridge

    if hook == "weights":
        monkeypatch.setattr(onnx2tf_bridge, "before_onnx2tf", _perturb_weights)
    else:
        monkeypatch.setattr(onnx2tf_bridge, "after_onnx2tf", _reverse_classes)
    model = zoo["mlp"]
    report = compress(onnx_recipe(tmp_path, model, formats=["tflite", "onnx"]), evaluate=False)
    assert report["exit_code"] == 3
    for quant in ("float32", "int8"):
        row = artifact(report, "tflite", quant)
        assert row["status"] == "failed", row
        assert "onnx2tf's TensorFlow graph differs from the source model" in row["error"]
        assert "SNR" in row["error"]
        if hook == "class-axis":
            assert "top-1 agreement" in row["error"]
    assert not list((tmp_path / "out").rglob("*.tflite"))
    verified(artifact(report, "onnx", "float32"))  # the ONNX path never went through onnx2tf


@pytest.mark.slow
def test_cli_exit_3_for_unconvertible_op_and_onnx_still_written(zoo: Zoo, tmp_path: Path) -> None:
    model = zoo["custom_op_model"]
    res = run_cli("compress", str(onnx_recipe(tmp_path, model)), "--no-eval")
    assert res.returncode == 3, res.stderr[-2000:]
    report = read_report(tmp_path / "out")
    assert artifact(report, "tflite", "float32")["status"] == "failed"
    assert "QuickGelu" in res.stdout + res.stderr
    assert (tmp_path / "out" / artifact(report, "onnx", "float32")["path"]).is_file()
