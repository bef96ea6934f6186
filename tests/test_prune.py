"""prune: tfmot magnitude pruning, fine-tuned, stripped, and measured honestly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import artifact, compress, write_recipe

from mobilec.errors import UnsupportedError

POINT = 0.01
NNAPI = ["android-nnapi"]  # one .tflite int8 + its float32 baseline: the cheapest real run


def _stage(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in report["stages"] if s["name"] == name)


@pytest.fixture(scope="module")
def int8_unpruned(demo_keras: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("unpruned")
    return compress(write_recipe(tmp, demo_keras, targets=NNAPI,
                                 stages=[{"quantize": {"mode": "int8"}}]))


@pytest.fixture(scope="module")
def pruned_half(demo_keras: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("pruned50")
    return compress(write_recipe(tmp, demo_keras, targets=NNAPI, stages=[
        {"prune": {"sparsity": 0.5, "schedule": "constant", "epochs": 2}},
        {"quantize": {"mode": "int8"}}]))


@pytest.mark.slow
def test_prune_half_then_int8(pruned_half: dict[str, Any], int8_unpruned: dict[str, Any]) -> None:
    m = _stage(pruned_half, "prune")
    assert m["status"] == "ok"
    metrics = m["metrics"]
    # counted zeros in the stripped model's kernels, not the request echoed back
    assert abs(metrics["sparsity"] - 0.5) <= 0.02
    assert metrics["pruned_weights"] == pytest.approx(metrics["sparsity"] * metrics["prunable_weights"],
                                                      abs=1)
    assert metrics["pruned_layers"] == 4 and metrics["prunable_weights"] > 80_000
    pruned = artifact(pruned_half, "tflite", "int8", target="android-nnapi")
    plain = artifact(int8_unpruned, "tflite", "int8", target="android-nnapi")
    assert pruned["gzip_bytes"] <= 0.75 * plain["gzip_bytes"], (pruned["gzip_bytes"],
                                                                plain["gzip_bytes"])
    # the file itself does not shrink: zeros only pay off compressed
    assert pruned["size_bytes"] == pytest.approx(plain["size_bytes"], rel=0.02)
    assert pruned["accuracy_drop"] <= 2 * POINT
    assert pruned_half["exit_code"] == 0


@pytest.mark.slow
def test_prune_high_sparsity_is_reported_honestly(tmp_path: Path, demo_keras: Path,
                                                  pruned_half: dict[str, Any]) -> None:
    report = compress(write_recipe(tmp_path, demo_keras, targets=NNAPI, stages=[
        {"prune": {"sparsity": 0.8, "schedule": "polynomial", "epochs": 2}},
        {"quantize": {"mode": "int8"}}]))
    metrics = _stage(report, "prune")["metrics"]
    assert metrics["schedule"] == "polynomial" and metrics["target_sparsity"] == 0.8
    assert abs(metrics["sparsity"] - 0.8) <= 0.02
    row = artifact(report, "tflite", "int8", target="android-nnapi")
    assert row["accuracy"] is not None and row["accuracy_drop"] is not None  # whatever it costs
    half = artifact(pruned_half, "tflite", "int8", target="android-nnapi")
    assert row["gzip_bytes"] < half["gzip_bytes"]


@pytest.mark.slow
def test_graph_only_model_cannot_be_pruned(tmp_path: Path, demo_savedmodel: Path) -> None:
    """A plain SavedModel (no Keras metadata) has no layers to wrap: exit 2, no report."""
    recipe = write_recipe(tmp_path, demo_savedmodel, targets=NNAPI, stages=[{"prune": {}}])
    with pytest.raises(UnsupportedError, match="prune fine-tunes a Keras model") as err:
        compress(recipe)
    assert err.value.exit_code == 2
    assert "quantization" in err.value.hint
    assert not (tmp_path / "out" / "report.json").exists()


def test_onnx_and_missing_train_data_are_refused_up_front(tmp_path: Path) -> None:
    from mobilec.policy.plancheck import check_plan
    from mobilec.recipe.loader import load_recipe

    model = tmp_path / "m.onnx"
    model.write_bytes(b"")
    recipe = load_recipe(write_recipe(tmp_path, model, stages=[{"prune": {}}]))
    with pytest.raises(UnsupportedError, match="prune needs a Keras model"):
        check_plan(recipe, "onnx")
    np.savez(tmp_path / "eval.npz", x=np.zeros((4, 8, 8, 1), "float32"))
    recipe = load_recipe(write_recipe(tmp_path, tmp_path / "m.keras", name="e", stages=[{"prune": {}}],
                                      data={"source": "npz", "eval": str(tmp_path / "eval.npz")}))
    with pytest.raises(UnsupportedError, match="needs data.train"):
        check_plan(recipe, "keras")


# ---------------------------------------------------------------- the stage on small models

def _state(tmp_path: Path, model: Any, *, labels: bool = True, train: bool = True) -> Any:
    """A ModelState holding a tf_keras model and random 8x8 data (no conversion needed)."""
    from mobilec.recipe.loader import load_recipe
    from mobilec.sources.data import Dataset, Split
    from mobilec.state import ModelState, SourceInfo

    rng = np.random.default_rng(0)
    x = rng.random((96, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, 96) if labels else None
    recipe = load_recipe(write_recipe(tmp_path, tmp_path / "m.h5"))
    state = ModelState(recipe=recipe, out_dir=tmp_path / "out", work_dir=tmp_path)
    state.keras_model = model
    state.source = SourceInfo(path=tmp_path / "m.h5", format="h5", sha256="", size_bytes=0)
    state.data = Dataset(Split(x, y) if train else None, Split(x[:32], y if y is None else y[:32]),
                         Split(x[:32]))
    return state


def _small_model(custom: bool = False) -> Any:
    from mobilec.util.tfenv import import_tf_keras

    tfk = import_tf_keras()

    class Scale(tfk.layers.Layer):
        def build(self, shape: Any) -> None:
            self.w = self.add_weight(name="w", shape=(shape[-1],), initializer="ones")

        def call(self, x: Any) -> Any:
            return x * self.w

    inp = tfk.Input((8, 8, 1))
    h = tfk.layers.Conv2D(8, 3, activation="relu", name="conv")(inp)
    h = tfk.layers.Flatten()(h)
    if custom:
        h = Scale(name="my_scale")(h)
    out = tfk.layers.Dense(10, activation="softmax", name="probs")(h)
    return tfk.Model(inp, out)


def test_prune_counts_zeros_and_leaves_the_loaded_model_alone(tmp_path: Path) -> None:
    from mobilec.recipe.schema import PruneConfig
    from mobilec.stages import prune

    model = _small_model()
    before = [w.copy() for w in model.get_weights()]
    state = _state(tmp_path, model)
    metrics = prune.run(state, PruneConfig(sparsity=0.6, epochs=1))
    assert metrics["pruned_layers"] == 2
    assert metrics["prunable_weights"] == 3 * 3 * 8 + 288 * 10
    assert abs(metrics["sparsity"] - 0.6) <= 0.02
    assert metrics["loss"] == "sparse categorical cross-entropy"  # softmax output: probabilities
    kernels = [state.keras_model.get_layer(n).kernel.numpy() for n in ("conv", "probs")]
    zeros = sum(int((k == 0).sum()) for k in kernels)
    assert zeros == metrics["pruned_weights"]
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))
    assert state.keras_model is not model and state.model_version == 1
    assert not any("prune_low_magnitude" in layer.name for layer in state.keras_model.layers)


def test_prune_without_labels_fine_tunes_to_the_models_own_outputs(tmp_path: Path) -> None:
    from mobilec.recipe.schema import PruneConfig
    from mobilec.stages import prune

    state = _state(tmp_path, _small_model(), labels=False)
    metrics = prune.run(state, PruneConfig(sparsity=0.5, epochs=1))
    assert metrics["loss"] == "self-distillation (no labels)"
    assert any("no labels" in n for n in state.notes)


def test_a_layer_tfmot_cannot_prune_is_named(tmp_path: Path) -> None:
    from mobilec.recipe.schema import PruneConfig
    from mobilec.stages import prune

    state = _state(tmp_path, _small_model(custom=True))
    with pytest.raises(UnsupportedError, match="layer 'my_scale' \\(Scale\\) has weights tfmot "
                                               "cannot prune") as err:
        prune.run(state, PruneConfig())
    assert err.value.exit_code == 2 and "PrunableLayer" in err.value.hint


def test_no_train_data_and_graph_only_models_are_refused_by_the_stage(tmp_path: Path) -> None:
    from mobilec.recipe.schema import PruneConfig
    from mobilec.stages import prune

    state = _state(tmp_path, _small_model(), train=False)
    with pytest.raises(UnsupportedError, match="no data.train"):
        prune.run(state, PruneConfig())
    state = _state(tmp_path, None)
    state.source.format = "onnx"
    with pytest.raises(UnsupportedError, match="is an ONNX model"):
        prune.run(state, PruneConfig())


# ---------------------------------------------------------------- block sparsity (block > 1)

def runs_of(kernel: np.ndarray, axis: int, block: int) -> np.ndarray:
    """The kernel's weights as runs of `block` along `axis` (its length divides by block)."""
    moved = np.moveaxis(kernel, axis, -1)
    return moved.reshape(*moved.shape[:-1], moved.shape[-1] // block, block)


def test_block_prune_zeroes_whole_runs_along_the_input_channels(tmp_path: Path) -> None:
    """block 4 on Keras (tfmot's block_size takes Dense only): every run of 4 along each
    kernel's input-channel axis is all zero or all kept; sparsity counted 0.5."""
    from mobilec.recipe.schema import PruneConfig
    from mobilec.stages import prune
    from mobilec.util.tfenv import import_tf_keras

    tfk = import_tf_keras()
    inp = tfk.Input((8, 8, 1))
    h = tfk.layers.Conv2D(8, 3, activation="relu", name="conv")(inp)
    h = tfk.layers.Conv2D(12, 3, activation="relu", name="conv2")(h)  # 8 input channels
    out = tfk.layers.Dense(10, activation="softmax", name="probs")(tfk.layers.Flatten()(h))
    state = _state(tmp_path, tfk.Model(inp, out))
    metrics = prune.run(state, PruneConfig(sparsity=0.5, block=4, schedule="polynomial",
                                           epochs=2, learning_rate=1e-3))
    assert metrics["block"] == 4 and metrics["pruned_layers"] == 3
    assert abs(metrics["sparsity"] - 0.5) <= 0.01
    kernels = {n: state.keras_model.get_layer(n).kernel.numpy() for n in ("conv2", "probs")}
    assert sum(int((k == 0).sum()) for k in kernels.values()) > 0
    for name, kernel in kernels.items():  # Conv2D (kh, kw, in, out): axis 2; Dense (in, out): 0
        runs = runs_of(kernel, kernel.ndim - 2, 4)
        zeros = (runs == 0).sum(-1)
        assert np.all((zeros == 0) | (zeros == 4)), name
    assert not any("prune_low_magnitude" in layer.name for layer in state.keras_model.layers)


@pytest.mark.slow
def test_block_runs_are_contiguous_int8_zeros_in_the_tflite(tmp_path: Path, demo_keras: Path,
                                                             int8_unpruned: dict[str, Any]) -> None:
    """The axis is the file's innermost one: in the int8 .tflite (Conv OHWI, FullyConnected
    [out, in]) half the runs of 4 adjacent weights along the last axis are all int8 0 (at
    block 1, ~1/16 would be), and the file gzips under 0.70x int8 alone."""
    from mobilec.formats.tflite import interpreter

    report = compress(write_recipe(tmp_path, demo_keras, targets=NNAPI, stages=[
        {"prune": {"sparsity": 0.5, "block": 4, "schedule": "constant", "epochs": 1}},
        {"quantize": {"mode": "int8"}}]))
    assert _stage(report, "prune")["metrics"]["block"] == 4
    row = artifact(report, "tflite", "int8", target="android-nnapi")
    interp = interpreter(tmp_path / "out" / row["path"])
    interp.allocate_tensors()
    kernels = [interp.get_tensor(d["index"]) for d in interp.get_tensor_details()
               if d["dtype"] == np.int8 and len(d["shape"]) >= 2 and d["shape"][0] > 1
               and d["shape"][-1] % 4 == 0 and d["name"].endswith(("Conv2D", "MatMul"))]
    assert len(kernels) == 3  # conv2d_1 (64, 3, 3, 32), dense (64, 1024), probs (10, 64)
    for kernel in kernels:
        # kept runs may hold a weight that rounds to int8 0: count the all-zero runs
        assert np.mean((runs_of(kernel, -1, 4) == 0).all(-1)) >= 0.49
    plain = artifact(int8_unpruned, "tflite", "int8", target="android-nnapi")
    assert row["gzip_bytes"] < 0.70 * plain["gzip_bytes"], (row["gzip_bytes"], plain["gzip_bytes"])
