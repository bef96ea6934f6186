"""distill: the width copy and logits views on small graphs, then the issue's bounds on the
4x-wider demo CNN as teacher, a student file without labels, and distill -> factorize ->
prune -> quantize int8 in one recipe.

The teacher (make_demo_model.build(width=4), 1.35M params, 6 epochs, seed 0) is trained
once per module: it is the dominant cost here (~30-45 s on 2 shared cores).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import artifact, compress, read_report, write_recipe

from mobilec.errors import UnsupportedError

POINT = 0.01
SUBSET = 400  # distillation data: a slice of the teacher's training set (see the KD test)


def tfk() -> Any:
    from mobilec.util.tfenv import import_tf_keras

    return import_tf_keras()


def loaded_state(tmp: Path, model: Path, **kw: Any) -> Any:
    """A ModelState after the real load stage (model, data, reference outputs)."""
    from mobilec.recipe.loader import load_recipe
    from mobilec.stages import get_stage
    from mobilec.state import ModelState

    tmp.mkdir(parents=True, exist_ok=True)
    recipe = load_recipe(write_recipe(tmp, model, **kw))
    state = ModelState(recipe=recipe, out_dir=tmp / "out", work_dir=tmp / "work")
    state.work_dir.mkdir(parents=True, exist_ok=True)
    get_stage("load")(state, None)
    return state


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# -- the width copy and the logits views ---------------------------------------

def residual_net() -> Any:
    k = tfk()
    x = k.Input((8, 8, 3))
    a = k.layers.Conv2D(16, 3, padding="same", activation="relu", name="stem")(x)
    b = k.layers.BatchNormalization()(k.layers.Conv2D(16, 3, padding="same", name="branch")(a))
    c = k.layers.Add()([a, b])
    d = k.layers.SeparableConv2D(32, 3, name="sep")(c)
    e = k.layers.Dense(24, activation="relu", name="fc")(k.layers.GlobalAveragePooling2D()(d))
    f = k.layers.Dense(5, name="logits")(k.layers.Dropout(0.2)(e))
    return k.Model(x, k.layers.Softmax(name="probs")(f), name="resnet")


def test_width_copy_scales_every_layer_but_the_head() -> None:
    from mobilec.stages.distill import narrower_copy

    teacher = residual_net()
    student = narrower_copy(teacher, 0.5)
    width = {layer.name: layer.get_config().get("filters") or layer.get_config().get("units")
             for layer in student.layers}
    assert width["stem"] == 8 and width["branch"] == 8 and width["sep"] == 16 and width["fc"] == 12
    assert width["logits"] == 5  # sizes the output: unchanged
    assert student.output_shape == teacher.output_shape and student.output_names == ["probs"]
    assert student.count_params() < teacher.count_params() / 3
    assert not {w.ref() for w in teacher.weights} & {w.ref() for w in student.weights}


def test_width_copy_keeps_a_sequential_sequential() -> None:
    from mobilec.stages.distill import narrower_copy

    k = tfk()
    teacher = k.Sequential([k.Input((6,)), k.layers.Dense(40, activation="relu"),
                            k.layers.Dense(3, activation="softmax")])
    student = narrower_copy(teacher, 0.25)
    assert isinstance(student, k.Sequential)
    assert [layer.units for layer in student.layers] == [10, 3]


def test_logits_views_find_the_pre_softmax_tensor() -> None:
    from mobilec.training import kd

    k = tfk()
    x = np.random.default_rng(0).standard_normal((8, 8, 8, 3)).astype("float32")

    # A Softmax layer: its input is the logits, sharing every layer.
    net = residual_net()
    head = kd.logits_head(net)
    assert head.kind == "softmax-input"
    np.testing.assert_allclose(softmax(head.model(x).numpy()), net(x).numpy(),
                               atol=1e-6)

    # A Dense with activation softmax: a linear twin whose training flows back.
    inp = k.Input((4,))
    seq = k.Model(inp, k.layers.Dense(3, activation="softmax")(k.layers.Dense(6)(inp)))
    head = kd.logits_head(seq)
    assert head.kind == "pre-softmax"
    z = np.ones((2, 4), dtype="float32")
    np.testing.assert_allclose(softmax(head.model(z).numpy()), seq(z).numpy(),
                               atol=1e-6)
    twin = head.model.layers[-1]
    twin.set_weights([w + 1.0 for w in twin.get_weights()])
    head.finish()
    np.testing.assert_allclose(softmax(head.model(z).numpy()), seq(z).numpy(),
                               atol=1e-6)

    # Probabilities from an op Keras cannot see through become log-probabilities.
    p = np.array([[0.7, 0.2, 0.1]], dtype="float32")
    np.testing.assert_allclose(softmax(kd.to_logits(p)), p, atol=1e-6)
    logits = np.array([[2.0, -1.0, 0.5]], dtype="float32")
    assert np.array_equal(kd.to_logits(logits), logits)


def test_hard_labels_accept_one_hot_and_refuse_out_of_range() -> None:
    from mobilec.errors import DataError
    from mobilec.training.kd import hard_labels

    assert hard_labels(np.eye(3)[[2, 0]], (2, 3), "d").tolist() == [2, 0]
    assert hard_labels(None, (2, 3), "d") is None
    with pytest.raises(DataError, match="3 classes"):
        hard_labels(np.array([0, 3]), (2, 3), "d")


# -- the wide teacher ------------------------------------------------------------

@pytest.fixture(scope="module")
def wide_teacher(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """make_demo_model.build(width=4) trained 6 epochs with seed 0: the issue's teacher."""
    import make_demo_model

    from mobilec.util.tfenv import configure_environment

    configure_environment()
    import keras

    start = time.perf_counter()
    keras.utils.set_random_seed(0)  # train() seeds only after build(): fix the initial weights too
    model = make_demo_model.build(width=4)
    acc = make_demo_model.train(model, epochs=6)
    path = tmp_path_factory.mktemp("wide") / "wide.keras"
    model.save(path)
    return {"path": path, "params": model.count_params(), "accuracy": acc,
            "seconds": time.perf_counter() - start}


@pytest.fixture(scope="module")
def subset_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """npz files: the first SUBSET samples of the digits train split (with and without
    labels) and the whole eval split."""
    from mobilec.sources.data import digits_split

    train, ev = digits_split()
    d = tmp_path_factory.mktemp("kd-data")
    np.savez(d / "train.npz", x=train.x[:SUBSET], y=train.y[:SUBSET])
    np.savez(d / "train_x.npz", x=train.x[:SUBSET])
    np.savez(d / "eval.npz", x=ev.x, y=ev.y)
    return {"labelled": {"source": "npz", "train": str(d / "train.npz"), "eval": str(d / "eval.npz"),
                         "eval_samples": 360},
            "unlabelled": {"source": "npz", "train": str(d / "train_x.npz"),
                           "eval": str(d / "eval.npz"), "eval_samples": 360}}


def kl_to_teacher(state: Any) -> float:
    """Mean KL(teacher || student) over eval: what the soft loss trains the student towards."""
    from mobilec.formats.runtime import source_runner

    student = source_runner(state)(state.eval_x)[0].astype("float64")
    teacher = state.reference[0].astype("float64")
    eps = 1e-7
    return float(np.mean(np.sum(teacher * (np.log(teacher + eps) - np.log(student + eps)), axis=-1)))


def distill(state: Any, **kw: Any) -> dict[str, Any]:
    from mobilec.recipe.schema import DistillConfig
    from mobilec.stages import get_stage

    return get_stage("distill")(state, DistillConfig(**kw))


@pytest.mark.slow
def test_quarter_width_student_learns_more_from_the_teacher_than_from_labels(
        wide_teacher: dict[str, Any], subset_data: dict[str, Any], tmp_path: Path) -> None:
    """The issue's bound. Same seed, initial weights, batches and epochs; only alpha differs.

    The student distills on 400 of the teacher's 1437 training images. On the full set
    distillation wins too, but by 1-3 images of 360 (scripts/bench_distill.py, 3 seeds):
    the 85k-param student nearly reaches the teacher from labels alone, so that margin is
    too thin to assert. On 400 images it is 4-6 images on every seed."""
    assert wide_teacher["accuracy"] >= 0.98
    schedule = {"student": {"width": 0.25}, "epochs": 15, "temperature": 4.0,
                "learning_rate": 2e-3}
    state = loaded_state(tmp_path / "kd", wide_teacher["path"], data=subset_data["labelled"])
    kd = distill(state, alpha=0.9, **schedule)
    hard_state = loaded_state(tmp_path / "hard", wide_teacher["path"], data=subset_data["labelled"])
    hard = distill(hard_state, alpha=0.0, **schedule)

    assert kd["params_after"] <= 0.10 * kd["params_before"], kd
    assert kd["flops_after"] < 0.10 * kd["flops_before"]
    assert kd["teacher_accuracy"] == pytest.approx(state.reference_accuracy)
    assert kd["student_accuracy"] >= kd["teacher_accuracy"] - 2 * POINT, (kd, hard)
    # Accuracy moves in steps of 1/360: a tie happens on some runs, so accuracy may only not be
    # worse; what distillation must strictly win is closeness to the teacher's distribution.
    assert kd["student_accuracy"] >= hard["student_accuracy"], (kd, hard)
    kl_kd, kl_hard = kl_to_teacher(state), kl_to_teacher(hard_state)
    assert kl_kd < kl_hard, (kl_kd, kl_hard)
    assert kd["labels"] and hard["params_after"] == kd["params_after"]
    print(f"\nteacher {wide_teacher['params']} params, {kd['teacher_accuracy']:.4f}, trained in "
          f"{wide_teacher['seconds']:.1f}s; student {kd['params_after']} params: distilled "
          f"{kd['student_accuracy']:.4f} (KL {kl_kd:.4f}), hard labels {hard['student_accuracy']:.4f} "
          f"(KL {kl_hard:.4f})")
    # the student is now the model every later stage works on
    assert state.keras_model.count_params() == kd["params_after"]


@pytest.mark.slow
def test_student_file_learns_from_the_teacher_alone_without_labels(
        wide_teacher: dict[str, Any], subset_data: dict[str, Any], tmp_path: Path) -> None:
    import make_demo_model

    student = tmp_path / "student.keras"
    make_demo_model.build(width=1).save(student)  # an untrained Keras 3 file
    state = loaded_state(tmp_path, wide_teacher["path"], data=subset_data["unlabelled"])
    m = distill(state, student=student, epochs=6, learning_rate=2e-3)
    assert m["labels"] is False and m["alpha"] == 1.0
    assert m["params_after"] == 85066 and m["student"] == str(student)
    assert m["student_accuracy"] >= 0.9, m
    assert any("no labels" in n for n in state.notes)


@pytest.mark.slow
def test_student_that_does_not_fit_the_teacher_is_refused(
        wide_teacher: dict[str, Any], tmp_path: Path) -> None:
    import keras

    student = tmp_path / "five.keras"
    keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                      keras.layers.Dense(5, activation="softmax")]).save(student)
    state = loaded_state(tmp_path, wide_teacher["path"])
    with pytest.raises(UnsupportedError, match=r"gives \(5\), the teacher .* gives \(10\)"):
        distill(state, student=student, epochs=1)


@pytest.mark.slow
def test_distill_factorize_prune_quantize_in_one_recipe(
        wide_teacher: dict[str, Any], tmp_path: Path) -> None:
    stages = [{"distill": {"student": {"width": 0.25}, "epochs": 4, "learning_rate": 2e-3}},
              {"factorize": {"energy": 0.8, "epochs": 1, "learning_rate": 1e-3}},
              {"prune": {"sparsity": 0.5, "epochs": 1}},
              {"quantize": {"mode": "int8"}}]
    report = compress(write_recipe(tmp_path, wide_teacher["path"], name="chain", stages=stages))
    assert read_report(tmp_path / "out")["stages"] == report["stages"]
    by = {s["name"]: s for s in report["stages"]}
    assert [s["name"] for s in report["stages"]][:5] == ["load", "distill", "factorize", "prune",
                                                         "quantize"]
    assert all(s["status"] == "ok" for s in report["stages"]), report["stages"]
    d, f, p = by["distill"]["metrics"], by["factorize"]["metrics"], by["prune"]["metrics"]
    assert d["params_before"] == wide_teacher["params"] and d["params_after"] < 0.1 * d[
        "params_before"]
    assert f["params_before"] == d["params_after"] and f["params_after"] < 0.7 * f["params_before"]
    assert f["flops_after"] < f["flops_before"] == d["flops_after"]
    assert f["accuracy_after"] >= d["student_accuracy"] - 2 * POINT
    assert p["sparsity"] == pytest.approx(0.5, abs=0.02)
    int8 = artifact(report, "tflite", "int8")
    assert int8["status"] == "ok" and int8["accuracy"] >= 0.9, int8
    md = (tmp_path / "out" / "report.md").read_text()
    for name in ("distill", "factorize", "prune"):
        assert f"| {name} | ok |" in md
