"""quantize `equalize: auto` and channel-aware diagnose, through mobilec.api, on the issue's
outlier model (the digits CNN with one hidden Dense unit scaled by 1e4 and its outgoing
weights divided by 1e4: the float model is unchanged, full int8 collapses).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import artifact, compress, write_recipe
from test_equalize import POINT, digits_cnn, keras_accuracy, outlier_model  # noqa: F401

from mobilec.recipe.schema import QuantizeConfig
from mobilec.stages.quantize_equalize import apply_equalize

MAX_SIZE_RATIO = 0.30


@pytest.fixture(scope="module")
def outlier_files(digits_cnn: tuple[Any, Any, Any],  # noqa: F811
                  tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import tf2onnx

    from mobilec.util.tfenv import import_tf

    tf = import_tf()
    model, train, ev = digits_cnn
    bad, unit = outlier_model(model, train.x)
    d = tmp_path_factory.mktemp("outlier")
    bad.save(str(d / "outlier.h5"), save_format="h5")
    spec = (tf.TensorSpec((None, 8, 8, 1), tf.float32, name="image"),)
    tf2onnx.convert.from_keras(bad, input_signature=spec, opset=17,
                               output_path=str(d / "outlier.onnx"))
    return {"h5": d / "outlier.h5", "onnx": d / "outlier.onnx", "unit": unit,
            "float_acc": keras_accuracy(bad, ev)}


def _stage(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in report["stages"] if s["name"] == name)


def _recipe(tmp: Path, model: Path, quantize: dict[str, Any], **kw: Any) -> Path:
    return write_recipe(tmp, model, name="eq", stages=[{"quantize": quantize}, *kw.pop(
        "extra", [])], budget={"max_accuracy_drop": POINT}, **kw)


def test_equalize_is_skipped_with_a_reason_where_it_cannot_help() -> None:
    assert apply_equalize(None, QuantizeConfig(mode="int8")) == {}  # type: ignore[arg-type]
    out = apply_equalize(None, QuantizeConfig(mode="float16", equalize="auto"))  # type: ignore[arg-type]
    assert out["equalize"]["applied"] is False and "float activations" in out["equalize"]["reason"]


def test_blame_moves_an_unbalanced_producer_only_ahead_of_readers_it_damages() -> None:
    from mobilec.diagnose.common import OpError, blame

    def op(name: str, snr: float, ratio: float) -> OpError:
        return OpError(name=name, tensor=name, op="FULLY_CONNECTED", rmse_scale=0.3,
                       max_abs_error=0.1, snr_db=snr, range_ratio=ratio)

    rows = [op("probs", 0.0, 1.4), op("conv", 40.0, 2.0), op("hidden", 53.0, 9000.0)]
    out = blame(rows, {"hidden": ["probs"], "conv": ["hidden"]})
    assert [r.name for r in out] == ["hidden", "probs", "conv"] and "probs" in out[0].cause
    # a reader that int8 serves well: the imbalance is harmless, nothing moves, no cause
    rows = [op("conv", 30.0, 2.0), op("probs", 35.0, 1.4), op("hidden", 53.0, 9000.0)]
    out = blame(rows, {"hidden": ["probs"]})
    assert [r.name for r in out] == ["conv", "probs", "hidden"] and out[2].cause is None


@pytest.mark.slow
def test_equalize_auto_rescues_full_int8_tflite_and_onnx(outlier_files: dict[str, Any],
                                                         tmp_path: Path) -> None:
    report = compress(_recipe(tmp_path, outlier_files["h5"], {"mode": "int8", "equalize": "auto"}))
    eq = _stage(report, "quantize")["metrics"]["equalize"]
    assert eq["applied"] and eq["unbalanced"][0]["layer"] == "hidden"
    assert eq["unbalanced"][0]["widest_channel"] == outlier_files["unit"]
    assert eq["int8_accuracy_before"] <= 0.3 < eq["int8_accuracy_after"]
    assert eq["max_rel_diff"] <= 1e-5
    for fmt in ("tflite", "onnx"):
        q, f = artifact(report, fmt, "int8"), artifact(report, fmt, "float32", target=None)
        assert q["accuracy"] >= f["accuracy"] - POINT, (fmt, q["accuracy"], f["accuracy"])
        assert q["size_bytes"] <= MAX_SIZE_RATIO * f["size_bytes"], (fmt, q["size_bytes"])
    assert report["exit_code"] == 0
    print(f"\nequalize auto (keras): int8 {eq['int8_accuracy_before']} -> "
          f"{eq['int8_accuracy_after']}; tflite {artifact(report, 'tflite', 'int8')['size_ratio']}x")


@pytest.mark.slow
def test_equalize_auto_on_an_onnx_source_rewrites_the_graph(outlier_files: dict[str, Any],
                                                            tmp_path: Path) -> None:
    report = compress(_recipe(tmp_path, outlier_files["onnx"],
                              {"mode": "int8", "equalize": "auto"},
                              extra=[{"convert": {"formats": ["onnx"]}}]))
    eq = _stage(report, "quantize")["metrics"]["equalize"]
    assert eq["applied"] and eq["model"] == "onnx" and "hidden" in eq["unbalanced"][0]["layer"]
    q, f = artifact(report, "onnx", "int8"), artifact(report, "onnx", "float32", target=None)
    assert q["accuracy"] >= f["accuracy"] - POINT and f["accuracy_drop"] == 0
    assert q["size_bytes"] <= MAX_SIZE_RATIO * f["size_bytes"]


@pytest.mark.slow
def test_diagnose_ranks_the_rescaled_dense_first(outlier_files: dict[str, Any],
                                                 tmp_path: Path) -> None:
    from mobilec import api

    recipe = _recipe(tmp_path, outlier_files["h5"], {"mode": "int8"})
    for backend in ("tflite", "onnx"):
        diag = api.diagnose(recipe, backend=backend)
        first = diag["rows"][0]
        assert first["name"] == "hidden", (backend, diag["rows"][:3])
        assert first["range_ratio"] > 1000 and first["widest_channel"] == outlier_files["unit"]
        assert "probs" in first["cause"] and "equalize" in first["cause"]
        assert first["worst_channel_snr_db"] < 10  # the crushed channels
        assert diag["blamed"] == ["hidden"] and "moved ahead" in diag["ranked_by"]
        # only the rescaled Dense's ops (its MatMul, on ONNX) are unbalanced; one is blamed
        assert all(r["range_ratio"] is None or r["range_ratio"] < 100 for r in diag["rows"]
                   if r["name"] != "hidden")
        assert sum(1 for r in diag["rows"] if r["cause"]) == 1
    html = (Path(diag["path"]).with_name("diagnose.html")).read_text()
    assert "channel range ratio" in html and "<b>cause</b>" in html


@pytest.mark.slow
def test_equalize_auto_leaves_the_demo_model_alone(demo_keras: Path, tmp_path: Path) -> None:
    report = compress(_recipe(tmp_path, demo_keras, {"mode": "int8", "equalize": "auto"},
                              extra=[{"convert": {"formats": ["tflite"]}}]))
    eq = _stage(report, "quantize")["metrics"]["equalize"]
    assert eq["applied"] is False and "no layer" in eq["reason"], eq
    assert artifact(report, "tflite", "int8")["accuracy_drop"] <= POINT
    assert report["exit_code"] == 0
