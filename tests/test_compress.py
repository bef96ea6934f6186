"""A first verified compress: Keras (.keras, .h5, SavedModel) -> .tflite + .onnx, measured."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import artifact, compress, read_report, run_cli, write_recipe

from mobilec.util.fs import sha256_path

pytestmark = pytest.mark.slow

REPORT_KEYS = {"mobilec_version", "recipe", "recipe_sha256", "model", "stages", "artifacts", "budget"}
ARTIFACT_KEYS = {"path", "format", "target", "quantization", "delegate", "fallback", "size_bytes",
                 "gzip_bytes", "size_ratio", "accuracy", "accuracy_drop", "fidelity", "latency_ms",
                 "op_compat", "status", "error"}


@pytest.fixture(scope="module")
def demo_reports(demo_keras: Path, demo_h5: Path, demo_savedmodel: Path,
                 tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict, Path, str, str]]:
    out = {}
    for kind, model in (("keras", demo_keras), ("h5", demo_h5), ("savedmodel", demo_savedmodel)):
        d = tmp_path_factory.mktemp(kind)
        before = sha256_path(model)
        report = compress(write_recipe(d, model, name=f"digits-{kind}"))
        out[kind] = (report, d / "out", before, sha256_path(model))
    return out


@pytest.mark.parametrize("kind", ["keras", "h5", "savedmodel"])
def test_float_artifacts_match_the_source_model(demo_reports: dict, kind: str) -> None:
    report, out_dir, _, _ = demo_reports[kind]
    assert report["exit_code"] == 0
    assert report["model"]["format"] == kind
    source_acc = report["model"]["accuracy"]
    assert source_acc > 0.95
    for fmt in ("tflite", "onnx"):
        a = artifact(report, fmt, "float32")
        assert a["status"] == "ok", a
        assert (out_dir / a["path"]).exists()
        assert abs(a["accuracy"] - source_acc) <= 0.005
        assert a["fidelity"]["top1_agreement"] >= 0.99
        assert a["fidelity"]["snr_db"] > 40
        assert a["size_bytes"] > 4 * 85_000  # float32 weights of an 85k-parameter model
        assert a["latency_ms"]["median"] > 0 and a["latency_ms"]["p90"] >= a["latency_ms"]["median"]


@pytest.mark.parametrize("kind", ["keras", "h5", "savedmodel"])
def test_input_files_are_unchanged(demo_reports: dict, kind: str) -> None:
    _, _, before, after = demo_reports[kind]
    assert before == after


def test_report_has_the_contract_fields(demo_reports: dict) -> None:
    report, out_dir, _, _ = demo_reports["keras"]
    assert REPORT_KEYS <= set(report)
    on_disk = read_report(out_dir)
    assert on_disk["artifacts"] == report["artifacts"]
    for a in report["artifacts"]:
        assert ARTIFACT_KEYS <= set(a)
    assert {"params", "size_bytes", "sha256", "accuracy", "format", "path"} <= set(report["model"])
    assert report["model"]["params"] == 85066
    assert [s["name"] for s in report["stages"]] == ["load", "convert", "evaluate"]
    assert report["budget"] == {"passed": True, "violations": [], "limits": {},
                                "not_measured": []}
    md = (out_dir / "report.md").read_text()
    assert "digits-keras-float32.tflite" in md


def test_no_temp_files_are_left(demo_reports: dict) -> None:
    _, out_dir, _, _ = demo_reports["keras"]
    leftovers = [p for p in out_dir.rglob("*") if ".mobilec-tmp" in p.name]
    assert leftovers == []


def test_cli_json_prints_only_the_report(demo_keras: Path, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, demo_keras, name="j",
                          stages=[{"quantize": {"mode": "dynamic"}}])
    res = run_cli("compress", str(recipe), "--json")
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(res.stdout)
    dyn = artifact(report, "tflite", "dynamic")
    assert dyn["size_ratio"] > 3.0
    assert report == read_report(tmp_path / "out")  # exactly report.json, nothing more
    assert " via " not in res.stderr and "started" not in res.stderr  # --json: no progress


def test_rerun_replaces_artifacts_atomically(demo_keras: Path, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, demo_keras, name="again")
    first = compress(recipe, evaluate=False)
    second = compress(recipe, evaluate=False)
    assert [a["path"] for a in first["artifacts"]] == [a["path"] for a in second["artifacts"]]
    # --no-eval: sizes yes, accuracy and latency no
    a = artifact(second, "tflite", "float32")
    assert a["size_bytes"] > 0 and a["accuracy"] is None and a["latency_ms"] is None


def test_bench_measures_an_artifact(demo_reports: dict) -> None:
    report, out_dir, _, _ = demo_reports["keras"]
    path = out_dir / artifact(report, "tflite", "int8")["path"]
    res = run_cli("bench", str(path), "--json", "--runs", "20")
    assert res.returncode == 0, res.stderr[-1000:]
    result = json.loads(res.stdout)
    assert result["format"] == "tflite" and result["input"]["shape"] == [1, 8, 8, 1]
    assert 0 < result["latency_ms"]["median"] <= result["latency_ms"]["p90"]
