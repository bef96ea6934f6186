"""factorize and the FLOP counter: exact maths on small graphs, and the issue's bound on a
real trained model with a large Dense layer (>= 2x fewer params, <= 1 point drop after
1 epoch of fine-tuning)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import write_recipe

from mobilec.errors import UnsupportedError

POINT = 0.01


def tfk() -> Any:
    from mobilec.util.tfenv import import_tf_keras

    return import_tf_keras()


def loaded_state(tmp: Path, model: Path, **kw: Any) -> Any:
    """A ModelState after the real load stage (model, data, reference outputs)."""
    from mobilec.recipe.loader import load_recipe
    from mobilec.stages import get_stage
    from mobilec.state import ModelState

    recipe = load_recipe(write_recipe(tmp, model, **kw))
    state = ModelState(recipe=recipe, out_dir=tmp / "out", work_dir=tmp / "work")
    state.work_dir.mkdir(parents=True, exist_ok=True)
    get_stage("load")(state, None)
    return state


# -- FLOPs ------------------------------------------------------------------

def test_flops_are_multiply_adds_of_each_layer_kind() -> None:
    from mobilec.training.flops import model_cost

    k = tfk()
    x = k.Input((16, 16, 3))
    a = k.layers.Conv2D(8, 3, strides=2, padding="same")(x)           # 8x8x8: 64*27*8
    b = k.layers.DepthwiseConv2D(3, padding="same")(a)                # 64*9*8
    c = k.layers.SeparableConv2D(16, 3, padding="valid")(b)           # 36*(9*8 + 8*16)
    d = k.layers.Conv2DTranspose(4, 2, strides=2)(c)                  # 6*6 inputs * 2*2*16*4
    e = k.layers.BatchNormalization()(d)
    f = k.layers.Dense(5)(e)                                          # 12*12*(4*5)
    g = k.layers.Dense(3)(k.layers.Flatten()(f))                      # 720*3
    cost = model_cost(k.Model(x, g))
    expected = 64 * 27 * 8 + 64 * 9 * 8 + 36 * (9 * 8 + 8 * 16) + 36 * 256 + 144 * 20 + 720 * 3
    assert cost.flops == expected
    assert cost.params == k.Model(x, g).count_params()
    assert cost.uncounted == []


def test_flops_follow_nested_models_and_shared_layers() -> None:
    from mobilec.training.flops import model_cost

    k = tfk()
    inner_in = k.Input((4,))
    inner = k.Model(inner_in, k.layers.Dense(6)(inner_in), name="inner")    # 24
    x = k.Input((4,))
    shared = k.layers.Dense(4)
    y = shared(shared(x))                                                   # 2 * 16
    cost = model_cost(k.Model(x, inner(y)))
    assert cost.flops == 24 + 32


# -- factorization maths ------------------------------------------------------

@pytest.mark.parametrize("shape", [(32, 12), (3, 3, 5, 7), (5, 4, 6)])
def test_low_rank_at_full_rank_rebuilds_the_kernel(shape: tuple[int, ...]) -> None:
    from mobilec.stages.factorize import low_rank

    kernel = np.random.default_rng(0).standard_normal(shape).astype("float32")
    low = low_rank(kernel, rank=1.0, energy=None)
    rebuilt = low.first.reshape(-1, low.rank) @ low.second.reshape(low.rank, -1)
    np.testing.assert_allclose(rebuilt.reshape(shape), kernel, atol=1e-4)
    assert low.rank == min(int(np.prod(shape[:-1])), shape[-1]) and low.energy == pytest.approx(1.0)


def test_energy_keeps_the_fewest_singular_values_that_hold_it() -> None:
    from mobilec.stages.factorize import low_rank

    rng = np.random.default_rng(1)
    u, _ = np.linalg.qr(rng.standard_normal((40, 40)))
    v, _ = np.linalg.qr(rng.standard_normal((20, 20)))
    s = np.array([10.0, 5.0, 3.0, 1.0] + [0.1] * 16)  # energies 100, 25, 9, 1, 0.01 each
    kernel = (u[:, :20] * s) @ v.T
    total = float(np.sum(s ** 2))
    assert low_rank(kernel, rank=None, energy=0.90).rank == 2          # 125/135.16 = 0.925
    assert low_rank(kernel, rank=None, energy=0.95).rank == 3          # 134/135.16 = 0.991
    assert low_rank(kernel, rank=None, energy=0.95).energy == pytest.approx(134 / total)
    assert low_rank(kernel, rank=0.25, energy=None).rank == 5


def small_functional() -> Any:
    """Conv k x k, 1x1 conv, Dense on a 3-D tensor, a residual Add, a softmax Dense head."""
    k = tfk()
    x = k.Input((10, 10, 6), name="img")
    a = k.layers.Conv2D(48, 3, strides=2, padding="same", activation="relu", name="c3")(x)
    b = k.layers.Conv2D(48, 1, activation="relu", name="c1")(a)
    c = k.layers.Add()([a, b])
    d = k.layers.Dense(40, activation="relu", name="d3")(c)
    e = k.layers.Conv1D(32, 3, padding="causal", name="c1d")(k.layers.Reshape((25, 40))(d))
    f = k.layers.Dense(64, activation="relu", name="wide")(k.layers.Flatten()(e))
    out = k.layers.Dense(10, activation="softmax", name="probs")(f)
    model = k.Model(x, out)
    rng = np.random.default_rng(0)
    model.set_weights([rng.standard_normal(w.shape).astype("float32") * 0.2
                       for w in model.get_weights()])
    return model


def test_full_rank_factorization_computes_the_same_function(monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    from mobilec.stages import factorize

    monkeypatch.setattr(factorize, "MIN_SAVING", -10.0)  # factorize even where it costs
    model = small_functional()
    new, done, skipped = factorize.factorize_model(model, rank=1.0, energy=None)
    assert {d["name"] for d in done} == {"c3", "c1", "d3", "c1d", "wide", "probs"} and not skipped
    x = np.random.default_rng(2).standard_normal((4, 10, 10, 6)).astype("float32")
    np.testing.assert_allclose(new(x).numpy(), model(x).numpy(), atol=1e-5)
    # the second layer of each pair keeps the original name, activation and bias
    assert new.get_layer("probs").get_config()["activation"] == "softmax"
    assert new.get_layer("c3_lowrank").get_config()["strides"] == (2, 2)
    assert new.get_layer("c3").get_config()["kernel_size"] == (1, 1)
    assert new.output_names == model.output_names
    # the source model is untouched (it may still be someone's teacher)
    assert not {w.ref() for w in model.weights} & {w.ref() for w in new.weights}


def test_factorization_skips_layers_it_would_not_shrink() -> None:
    from mobilec.stages.factorize import factorize_model
    from mobilec.training.flops import model_cost

    model = small_functional()
    # rank 0.8: only `wide` (800x64 -> r 51: 51*864 < 0.9 * 800*64) gets smaller.
    new, done, skipped = factorize_model(model, rank=0.8, energy=None)
    assert [(d["name"], d["rank"], d["params_after"]) for d in done] == [
        ("wide", 51, 51 * (800 + 64) + 64)]
    assert sorted(skipped) == ["c1", "c1d", "c3", "d3", "probs"]
    # rank 0.25: every eligible layer shrinks, and so do the model's params and FLOPs.
    new, done, skipped = factorize_model(model, rank=0.25, energy=None)
    assert not skipped and all(d["params_after"] <= 0.9 * d["params_before"] for d in done)
    before, after = model_cost(model), model_cost(new)
    assert after.params < before.params / 2 and after.flops < before.flops / 2


# -- the stage ------------------------------------------------------------------

def test_stage_refuses_a_graph_only_model(tmp_path: Path) -> None:
    from mobilec.recipe.loader import load_recipe
    from mobilec.recipe.schema import FactorizeConfig
    from mobilec.stages.factorize import run
    from mobilec.state import ModelState

    recipe = load_recipe(write_recipe(tmp_path, tmp_path / "m.onnx"))
    state = ModelState(recipe=recipe, out_dir=tmp_path, work_dir=tmp_path)
    with pytest.raises(UnsupportedError, match="factorize rewrites a Keras model"):
        run(state, FactorizeConfig(energy=0.9))


def build_large_dense(path: Path) -> float:
    """Digits CNN whose 2048x512 Dense holds 99% of the weights, trained with L2.

    Weight decay is what makes a trained layer low-rank in practice (it removes the
    directions the data never uses); without it a few epochs leave the random
    initialization's flat spectrum, which no SVD cut at 95% energy can halve.
    """
    import keras

    from mobilec.sources.data import digits_split

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1), name="image"),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(512, activation="relu", kernel_regularizer=keras.regularizers.l2(1e-3),
                           name="fc"),
        keras.layers.Dense(10, activation="softmax", name="probs"),
    ], name="digits_fc")
    train, ev = digits_split()
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(train.x, train.y, epochs=6, batch_size=32, verbose=0)
    model.save(path)
    return float(model.evaluate(ev.x, ev.y, verbose=0)[1])


@pytest.mark.slow
def test_energy_095_halves_a_large_dense_model_within_a_point(tmp_path: Path) -> None:
    from mobilec.recipe.schema import FactorizeConfig
    from mobilec.stages import get_stage
    from mobilec.util.tfenv import configure_environment

    configure_environment()
    build_large_dense(tmp_path / "fc.keras")
    state = loaded_state(tmp_path, tmp_path / "fc.keras")
    m = get_stage("factorize")(state, FactorizeConfig(energy=0.95, epochs=1))

    assert m["params_before"] >= 2 * m["params_after"], m
    assert m["flops_after"] < m["flops_before"]
    dense = next(d for d in m["layers_factorized"] if d["name"] == "fc")
    assert dense["energy"] >= 0.95 and dense["rank"] < dense["full_rank"] // 2
    assert m["accuracy_before"] == pytest.approx(state.reference_accuracy)
    assert m["accuracy_after"] >= m["accuracy_before"] - POINT, m
    assert m["accuracy_before"] >= 0.97
    # the live model is the factorized one, and it is what later stages see
    assert state.keras_model.count_params() == m["params_after"]
    print(f"\nfactorize energy 0.95: {m['params_before']} -> {m['params_after']} params, "
          f"{m['flops_before']} -> {m['flops_after']} MACs, fc rank {dense['rank']}/"
          f"{dense['full_rank']}, accuracy {m['accuracy_before']} -> {m['accuracy_factorized']} "
          f"(SVD) -> {m['accuracy_after']} (1 epoch)")
    assert "fc_lowrank" in [layer.name for layer in state.keras_model.layers]


# -- which layers, and rank: auto ------------------------------------------------------

def test_default_candidates_leave_the_first_layer_and_the_head_alone() -> None:
    from mobilec.errors import RecipeError
    from mobilec.recipe.schema import FactorizeConfig
    from mobilec.stages.factorize import candidates, factorize_model

    model = small_functional()
    allowed, reasons = candidates(model, FactorizeConfig(rank=0.25))
    assert allowed == {"c1", "d3", "c1d", "wide"}
    assert "first layer" in reasons["c3"] and "output" in reasons["probs"]
    without, reasons = candidates(model, FactorizeConfig(rank=0.25, skip=["wide"]))
    assert "wide" not in without and reasons["wide"] == "listed in skip"
    assert candidates(model, FactorizeConfig(rank=0.25, skip_edges=False))[0] == {
        "c3", "c1", "d3", "c1d", "wide", "probs"}
    with pytest.raises(RecipeError, match="not Dense/Conv layers"):
        candidates(model, FactorizeConfig(rank=0.25, skip=["nope"]))
    # min_share as a parameter floor: only `wide` (800x64) saves more than 20k at rank 0.25
    _, done, skipped = factorize_model(model, rank=0.25, energy=None, only=allowed,
                                       min_params=20_000)
    assert [d["name"] for d in done] == ["wide"] and sorted(skipped) == ["c1", "c1d", "d3"]


def test_greedy_spends_the_allowance_where_it_saves_most_per_unit_of_sensitivity() -> None:
    from mobilec.stages.factorize_auto import greedy as _greedy

    def opt(rank: int, saved: int, sens: float, noise: float = 0.0) -> dict[str, Any]:
        return {"rank": rank, "params_saved": saved, "sensitivity": sens, "noise": noise}

    options = {
        "big": [opt(8, 900, 0.02), opt(16, 800, 0.004), opt(32, 500, 0.0, 1e-4)],
        "small": [opt(8, 250, 0.0, 1e-3), opt(16, 200, 0.0, 1e-5)],
    }
    # 0.01 allows big at rank 16 (0.004) but not at rank 8 (0.02); small costs nothing.
    assert _greedy(options, 0.01)["ranks"] == {"big": 16, "small": 8}
    assert _greedy(options, 0.0)["ranks"] == {"big": 32, "small": 8}
    assert _greedy(options, 1.0)["ranks"] == {"big": 8, "small": 8}


@pytest.fixture(scope="module")
def wide_cnn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """make_demo_model.build(width=4): the issue's 1.35M-parameter digits CNN, trained."""
    import make_demo_model

    from mobilec.util.tfenv import configure_environment

    configure_environment()
    model = make_demo_model.build(width=4)
    assert model.count_params() == 1_347_850
    assert make_demo_model.train(model, epochs=8) >= 0.97
    path = tmp_path_factory.mktemp("wide") / "digits4.keras"
    model.save(path)
    return path


def factorize_report(tmp: Path, model: Path, factorize: dict[str, Any]) -> tuple[dict[str, Any],
                                                                                   dict[str, Any]]:
    from conftest import artifact, compress

    report = compress(write_recipe(tmp, model, name="wide", stages=[
        {"factorize": factorize}, {"convert": {"formats": ["tflite"]}}],
        budget={"max_accuracy_drop": POINT}))
    stage = next(s for s in report["stages"] if s["name"] == "factorize")
    assert stage["status"] == "ok", stage
    return stage["metrics"], artifact(report, "tflite", "float32", target=None)


@pytest.mark.slow
def test_rank_auto_halves_the_wide_cnn_within_a_point(tmp_path: Path, wide_cnn: Path) -> None:
    m, tfl = factorize_report(tmp_path, wide_cnn, {"rank": "auto", "epochs": 1})
    assert m["params_before"] >= 2 * m["params_after"], m
    # only the middle conv and the hidden Dense (Keras numbers layer names per session)
    assert {d["kind"] for d in m["layers_factorized"]} <= {"Conv2D", "Dense"}
    assert "probs" in m["skip_reasons"] and len(m["skip_reasons"]) == 2
    assert not {d["name"] for d in m["layers_factorized"]} & set(m["skip_reasons"])
    search = m["rank_search"]
    assert search["metric"] == "accuracy drop" and search["allowance"] == POINT
    assert search["measured_drop"] is not None and search["measured_drop"] <= POINT
    for layer in search["layers"]:  # each layer: its measurements, the chosen rank, the saving
        assert [o["rank"] for o in layer["measured"]] == sorted(o["rank"] for o in layer["measured"])
        if layer["chosen_rank"] is not None:
            assert layer["params_saved"] > 0 and layer["sensitivity"] is not None
    assert m["accuracy_before"] >= 0.97
    assert m["accuracy_drop"] <= POINT and m["accuracy_after"] is not None, m
    # the artifact, measured on its own runtime, stays within the budget too
    assert tfl["accuracy_drop"] <= POINT, tfl
    print(f"\nrank auto: {m['params_before']} -> {m['params_after']} params "
          f"({m['params_before'] / m['params_after']:.1f}x), ranks "
          f"{[(x['name'], x['chosen_rank'], x['full_rank']) for x in search['layers']]}, accuracy "
          f"{m['accuracy_before']} -> {m['accuracy_factorized']} (SVD) -> {m['accuracy_after']}")


@pytest.mark.slow
def test_fixed_rank_leaves_first_layer_and_head_and_reports_its_drop(tmp_path: Path,
                                                                     wide_cnn: Path) -> None:
    m, _ = factorize_report(tmp_path, wide_cnn, {"rank": 0.25, "epochs": 1})
    assert sorted(d["kind"] for d in m["layers_factorized"]) == ["Conv2D", "Dense"]
    assert "output" in m["skip_reasons"].pop("probs")
    ((first, why),) = m["skip_reasons"].items()
    assert first.startswith("conv2d") and "first layer" in why
    assert first not in {d["name"] for d in m["layers_factorized"]}
    assert m["accuracy_drop"] == pytest.approx(m["accuracy_before"] - m["accuracy_after"], abs=1e-6)
    assert m["accuracy_drop_factorized"] == pytest.approx(
        m["accuracy_before"] - m["accuracy_factorized"], abs=1e-6)
    assert m["params_after"] < m["params_before"] / 2
    print(f"\nrank 0.25: {m['params_before']} -> {m['params_after']} params, accuracy "
          f"{m['accuracy_before']} -> {m['accuracy_factorized']} (SVD) -> {m['accuracy_after']}")
