"""mobilec diagnose and keep_float (mixed-precision int8), on real conversions.

The test model is a real digits classifier with one layer int8 cannot serve:
`embed` reads the flattened image, and its weights from the three pixels that
are 0 in every digits image are 1000. The float model never sees them (they
multiply zeros, and their gradient is zero, so training keeps them), but int8's
per-channel weight scale becomes 1000/127, every real weight of `embed` rounds
to 0 and full-int8 accuracy collapses to chance. `embed` is small, so keeping
it in float keeps the model well under 0.4x float32.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import artifact, run_cli, write_recipe

from mobilec.diagnose.common import layer_of
from mobilec.diagnose.keep_float import match_layers
from mobilec.diagnose.view import html_section, svg_chart
from mobilec.errors import RecipeError, UnsupportedError
from mobilec.policy.plancheck import check_plan
from mobilec.recipe.loader import load_recipe

BUDGET = 0.02




def _pipeline(recipe: Path, **options: Any) -> dict[str, Any]:
    from mobilec import api

    return api.compress(load_recipe(recipe), **options)


def _stage(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in report["stages"] if s["name"] == name)


# ---------------------------------------------------------------------------- fast


def _recipe_text(tmp_path: Path, quantize: dict[str, Any], budget: dict[str, Any] | None) -> Path:
    import yaml

    model = tmp_path / "m.h5"
    model.write_bytes(b"")
    doc = {"version": 1, "model": {"path": str(model)}, "data": {"source": "digits"},
           "stages": [{"quantize": quantize}]}
    if budget is not None:
        doc["budget"] = budget
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_keep_float_is_checked_before_anything_runs(tmp_path: Path) -> None:
    def check(quantize: dict[str, Any], budget: dict[str, Any] | None = None) -> None:
        check_plan(load_recipe(_recipe_text(tmp_path, quantize, budget)), "h5")

    with pytest.raises(UnsupportedError, match="no int8 activations"):
        check({"mode": "float16", "keep_float": ["embed"]})
    with pytest.raises(UnsupportedError, match="max_accuracy_drop"):
        check({"mode": "int8", "keep_float": "auto"})
    with pytest.raises(RecipeError, match="not a valid regular expression"):
        check({"mode": "int8", "keep_float": ["conv[("]})
    check({"mode": "int8", "keep_float": "auto"}, {"max_accuracy_drop": 0.01})
    check({"mode": "int8-io", "keep_float": ["embed", "fc.*"]})


def test_keep_float_names_match_exactly_or_as_regex() -> None:
    layers = ["embed", "probs", "fc1", "fc2", "flat"]
    assert match_layers(layers, ["fc.*"]) == ["fc1", "fc2"]
    assert match_layers(layers, ["probs", "embed", "probs"]) == ["probs", "embed"]
    with pytest.raises(UnsupportedError) as info:
        match_layers(layers, ["fc"])  # a regex must match the whole name
    assert "embed, probs, fc1" in (info.value.hint or "")


def test_fused_op_names_map_to_their_layer() -> None:
    layers = {"embed", "conv2d_1"}
    assert layer_of("model/embed/MatMul;model/embed/Relu;model/embed/BiasAdd", layers) == "embed"
    assert layer_of("m/conv2d_1/Relu;m/conv2d_1/BiasAdd/ReadVariableOp", layers) == "conv2d_1"
    assert layer_of("model/other/MatMul", set()) == "model/other"  # no Keras names: the scope


def test_chart_draws_the_worst_20_worst_first() -> None:
    rows = [{"rank": i + 1, "name": f"layer<{i}>", "op": "CONV_2D", "rmse_scale": 0.3,
             "max_abs_error": 0.1, "snr_db": 5.0 + 3 * i} for i in range(25)]
    diag = {"backend": "tflite", "samples": 10, "scope": "per-op", "ranked_by": "snr", "ops": 25,
            "rows": rows}
    svg = svg_chart(diag)
    assert svg.count("<rect") == 20
    assert svg.index("layer&lt;0&gt;") < svg.index("layer&lt;19&gt;")
    assert "layer&lt;20&gt;" not in svg and "<layer" not in svg
    assert svg.count('fill="#d9534f"') == 5  # below 20 dB: 5, 8, 11, 14, 17
    section = html_section(diag)
    assert section.startswith('<section id="diagnose">') and "worst 20 of 25" in section
    assert html_section(None) == ""


# ---------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_outlier_layer_ranks_first_and_keep_float_auto_recovers_it(
        outlier_h5: Path, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, outlier_h5, name="outlier",
                          stages=[{"quantize": {"mode": "int8", "keep_float": "auto"}}],
                          budget={"max_accuracy_drop": BUDGET},
                          output={"dir": str(tmp_path / "out"), "report": ["json", "md", "html"]})
    report = _pipeline(recipe, diagnose=True)
    out = tmp_path / "out"
    assert report["exit_code"] == 0, report["budget"]

    # diagnose: embed first, by far; the other layers show plain rounding noise.
    diag = _stage(report, "diagnose")["metrics"]
    first, rest = diag["rows"][0], diag["rows"][1:]
    assert (first["name"], first["op"]) == ("embed", "FULLY_CONNECTED")
    assert first["rmse_scale"] > 10 and first["snr_db"] < 5
    assert all(r["rmse_scale"] < 1 and r["snr_db"] > 15 for r in rest)
    on_disk = json.loads((out / "diagnose.json").read_text())
    assert on_disk["rows"][0]["name"] == "embed" and on_disk["ops"] == len(diag["rows"])
    html = (out / "report.html").read_text()
    assert '<section id="diagnose">' in html and "embed (FULLY_CONNECTED)" in html

    # keep_float auto: full int8 collapses, one step (embed in float) is within budget.
    quant = _stage(report, "quantize")["metrics"]
    steps = quant["keep_float_steps"]
    assert steps[0]["kept_float"] == [] and steps[0]["accuracy_drop"] > 0.5
    assert [s["kept_float"] for s in steps] == [[], ["embed"]] and steps[1]["chosen"]
    assert quant["keep_float"] == "embed"

    float_tfl = artifact(report, "tflite", "float32")
    tfl = artifact(report, "tflite", "int8")
    assert tfl["kept_float"] == ["embed"]
    assert tfl["accuracy_drop"] <= BUDGET
    assert tfl["size_bytes"] <= 0.4 * float_tfl["size_bytes"]
    # The artifact is the measured step (plus the target's metadata).
    assert abs(tfl["size_bytes"] - steps[1]["size_bytes"]) <= 0.01 * steps[1]["size_bytes"]
    assert _float_kernels(out / tfl["path"]) == {"embed"}
    onx = artifact(report, "onnx", "int8")
    assert onx["kept_float"] == ["embed"] and onx["accuracy_drop"] <= BUDGET
    assert onx["size_bytes"] <= 0.4 * artifact(report, "onnx", "float32")["size_bytes"]


def _float_kernels(path: Path) -> set[str]:
    """Layers whose 2-D weight matrix a .tflite stores as float32."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    names = {"embed", "fc1", "fc2", "probs"}
    return {layer_of(t["name"], names) for t in it.get_tensor_details()
            if len(t["shape"]) == 2 and t["shape"][0] > 1 and t["dtype"] == np.float32
            and layer_of(t["name"], names) in names}


@pytest.mark.slow
def test_keep_float_auto_keeps_nothing_when_int8_serves_well(demo_keras: Path,
                                                              tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, demo_keras, name="demo",
                          stages=[{"quantize": {"mode": "int8", "keep_float": "auto"}},
                                  {"convert": {"formats": ["tflite"]}}],
                          budget={"max_accuracy_drop": 0.01})
    report = _pipeline(recipe)
    assert report["exit_code"] == 0
    quant = _stage(report, "quantize")["metrics"]
    assert quant["keep_float"] == "none"
    (step,) = quant["keep_float_steps"]
    assert step["chosen"] and step["kept_float"] == [] and step["accuracy_drop"] <= 0.01
    a = artifact(report, "tflite", "int8")
    assert a["kept_float"] == [] and "float32:" not in a["precision"]
    assert abs(artifact(report, "tflite", "int8")["size_bytes"] - step["size_bytes"]) \
        <= 0.01 * step["size_bytes"]


@pytest.mark.slow
def test_keep_float_by_regex_and_onnx_diagnosis(outlier_h5: Path, tmp_path: Path) -> None:
    from mobilec import api

    recipe = write_recipe(tmp_path, outlier_h5, name="byhand",
                          stages=[{"quantize": {"mode": "int8-io", "keep_float": ["emb.*"]}}],
                          targets=["android-nnapi"])
    report = _pipeline(recipe)
    assert _stage(report, "quantize")["metrics"]["keep_float"] == "embed"
    tfl = artifact(report, "tflite", "int8-io", target="android-nnapi")
    assert tfl["kept_float"] == ["embed"] and tfl["io_quant"]["inputs"][0]["dtype"] == "int8"
    assert tfl["accuracy_drop"] <= BUDGET

    # The .onnx int8 conversion, diagnosed with onnxruntime's qdq_loss_debug: embed's MatMul
    # is where the signal is lost (errors accumulate there, so it ranks by SNR lost).
    diag = api.diagnose(load_recipe(recipe), out=tmp_path / "onnx", backend="onnx")
    rows = diag["rows"]
    assert diag["scope"] == "cumulative" and Path(diag["path"]).name == "diagnose.json"
    assert (rows[0]["name"], rows[0]["op"]) == ("embed", "MatMul")
    assert rows[0]["loss_db"] > 20 and all(r["loss_db"] < 20 for r in rows[1:]
                                           if r["name"] != "flat")

    bad = write_recipe(tmp_path, outlier_h5, name="bad",
                       stages=[{"quantize": {"mode": "int8", "keep_float": ["dense"]}}])
    with pytest.raises(UnsupportedError, match="matches no quantized layer") as info:
        _pipeline(bad)
    assert "embed" in (info.value.hint or "")


@pytest.mark.slow
def test_diagnose_command(outlier_h5: Path, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, outlier_h5, name="cli",
                          stages=[{"quantize": {"mode": "int8"}}])
    out = tmp_path / "diag"
    res = run_cli("diagnose", str(recipe), "--out", str(out), "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(res.stdout)  # stdout holds only the JSON
    assert data["rows"][0]["name"] == "embed" and data["backend"] == "tflite"
    assert (out / "diagnose.json").exists() and "<svg" in (out / "diagnose.html").read_text()
    assert not (out / "report.json").exists()  # diagnose converts nothing
