"""Issue 27, items 7-16: data checked before it is trusted, and failures that always show.

Most need no conversion: `validate`, tiny npz files, `--no-eval`, plain functions.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import run_cli, write_recipe

DIGITS = {"source": "npz", "train": "train.npz", "eval": "eval.npz"}


def _digits_npz(directory: Path, **changes: np.ndarray) -> None:
    """train.npz and eval.npz of the demo's digits (8x8x1 float, labels 0-9)."""
    rng = np.random.default_rng(0)
    x = rng.random((60, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, 60)
    np.savez(directory / "train.npz", x=x[:40], y=y[:40])
    np.savez(directory / "eval.npz", **{"x": x[40:], "y": y[40:], **changes})


def _clean_exit_2(res, *needles: str) -> None:
    assert res.returncode == 2, (res.returncode, res.stdout[-1000:], res.stderr[-2000:])
    assert "Traceback" not in res.stderr and "internal error" not in res.stderr, res.stderr
    for n in needles:
        assert n in res.stderr, (n, res.stderr)


# ----------------------------------------------------------------------------- 7, 8: compress

@pytest.mark.parametrize("case", ["nan", "inf_train", "shape"])
def test_bad_data_is_refused_naming_its_own_file_before_conversion(
        case: str, demo_keras: Path, tmp_path: Path) -> None:
    x = np.random.default_rng(1).random((20, 8, 8, 1)).astype("float32")
    if case == "nan":
        x[3, 2, 2, 0] = np.nan
        _digits_npz(tmp_path, x=x)
        needles = ("eval.npz", "data.eval array 'x'", "1 NaN")
    elif case == "inf_train":
        _digits_npz(tmp_path)
        xt = np.random.default_rng(2).random((40, 8, 8, 1)).astype("float32")
        xt[0, 0, 0, 0] = np.inf
        np.savez(tmp_path / "train.npz", x=xt, y=np.zeros(40, "int64"))
        needles = ("train.npz", "data.train array 'x'", "1 Inf")
    else:
        _digits_npz(tmp_path, x=x[:, :7, :7])
        needles = ("eval.npz", "(7, 7, 1)")
    recipe = write_recipe(tmp_path, demo_keras, data=DIGITS,
                          stages=[{"quantize": {"mode": "int8"}}])
    res = run_cli("compress", str(recipe), "--no-eval")
    _clean_exit_2(res, *needles)
    if case == "shape":
        assert "train.npz" not in res.stderr  # the file that is right is not blamed
    assert "convert: started" not in res.stderr
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- 9: validate

@pytest.mark.parametrize("case,needles", [
    ("nan", ("eval.npz", "non-finite", "'x'")),
    ("names", ("eval.npz", "no array 'x'",)),
    ("count", ("eval.npz", "'x' has 20 samples but 'y' has 19")),
    ("shape", ("eval.npz", "(7, 7, 1)", "(8, 8, 1)")),
    ("labels", ("eval.npz, array 'y'", "labels range over 100..109", "10 classes")),
    ("fraction", ("eval.npz", "fractional")),
])
def test_validate_checks_the_data_contents(case: str, needles: tuple[str, ...],
                                            demo_keras: Path, tmp_path: Path) -> None:
    x = np.random.default_rng(1).random((20, 8, 8, 1)).astype("float32")
    y = np.arange(20) % 10
    arrays = {"nan": {"x": np.where(np.arange(20)[:, None, None, None] == 5, np.nan, x)},
              "names": {"x": None, "images": x},
              "count": {"y": y[:19]},
              "shape": {"x": x[:, :7, :7]},
              "labels": {"y": y + 100},
              "fraction": {"y": y + 0.5}}[case]
    _digits_npz(tmp_path)
    base = dict(np.load(tmp_path / "eval.npz"))
    base.update({k: v for k, v in arrays.items() if v is not None})
    for k in [k for k, v in arrays.items() if v is None]:
        base.pop(k)
    np.savez(tmp_path / "eval.npz", **base)
    recipe = write_recipe(tmp_path, demo_keras, data=DIGITS)
    _clean_exit_2(run_cli("validate", str(recipe)), *needles)


def test_validate_reports_what_it_checked_and_what_it_could_not(demo_keras: Path,
                                                                demo_savedmodel: Path,
                                                                tmp_path: Path) -> None:
    _digits_npz(tmp_path)
    ok = run_cli("validate", str(write_recipe(tmp_path, demo_keras, data=DIGITS)), "--json")
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["data"]["splits"]["eval"]["samples"] == 20
    assert doc["data"]["splits"]["train"]["arrays"] == {"x": [40, 8, 8, 1], "y": [40]}
    assert any("sample shapes against the model's inputs" in c for c in doc["data"]["checked"])
    assert doc["needs_trust_code"] == []
    sm = run_cli("validate", str(write_recipe(tmp_path, demo_savedmodel, name="sm",
                                              data=DIGITS)))
    assert sm.returncode == 0, sm.stderr
    assert "not checked: data shapes against the model's inputs" in sm.stdout
    hook = write_recipe(tmp_path, demo_keras, name="hook",
                        data={"source": "digits", "python": "loader.py:load"})
    res = run_cli("validate", str(hook))
    assert res.returncode == 0, res.stderr
    assert "needs --trust-code: data.python" in res.stdout


def test_batch_refuses_a_zoo_that_needs_trust_code_before_any_worker(demo_keras: Path,
                                                                     tmp_path: Path) -> None:
    (tmp_path / "loader.py").write_text("raise SystemExit('user code ran')\n")
    zoo = tmp_path / "zoo.yaml"
    zoo.write_text(yaml.safe_dump({
        "recipe": {"version": 1, "model": {"path": "x"}, "targets": ["cpu"],
                   "data": {"source": "digits", "python": "loader.py:load"}},
        "models": [str(demo_keras), {"path": str(demo_keras), "name": "again"}]}))
    res = run_cli("batch", str(zoo), "--out", str(tmp_path / "out"))
    _clean_exit_2(res, "data.python", "--trust-code", "zoo.yaml")
    assert "user code ran" not in res.stderr
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- 10, 12: -q, budgets

def test_budgets_judge_the_asked_for_artifacts_not_the_float32_baselines() -> None:
    from mobilec.policy.targets import plan_artifacts
    from mobilec.recipe.schema import BudgetConfig
    from mobilec.report.budget import check_budget

    specs = plan_artifacts(["cpu"], "int8")
    roles = {(s.format, s.quantization): s.role for s in specs}
    assert roles == {("tflite", "float32"): "baseline", ("tflite", "int8"): "artifact",
                     ("onnx", "float32"): "baseline", ("onnx", "int8"): "artifact"}
    assert {s.role for s in plan_artifacts(["cpu"], "float32")} == {"artifact"}

    def row(path: str, role: str, size: int, drop: float | None) -> dict:
        return {"path": path, "role": role, "status": "ok", "size_bytes": size,
                "accuracy_drop": drop, "latency_ms": None}

    rows = [row("cpu/d-float32.tflite", "baseline", 343_780, 0.0),
            row("cpu/d-int8.tflite", "artifact", 94_000, 0.003)]
    readme = BudgetConfig(max_accuracy_drop=0.01, max_size_bytes=120000)  # README's example
    assert check_budget(rows, readme)["passed"]
    unmeasured = check_budget([{**r, "accuracy_drop": None} for r in rows], readme,
                              evaluated=False)
    assert unmeasured["passed"] and unmeasured["not_measured"] == [
        "cpu/d-int8.tflite: max_accuracy_drop not measured (--no-eval)"]


@pytest.mark.slow
def test_quiet_prints_the_verdict_and_no_eval_does_not_pass_an_accuracy_budget(
        demo_keras: Path, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, demo_keras, stages=[{"quantize": {"mode": "int8"}},
                                                        {"convert": {"formats": ["tflite"]}}],
                          budget={"max_accuracy_drop": 0.01, "max_size_bytes": 1000})
    res = run_cli("compress", str(recipe), "--no-eval", "-q")
    assert res.returncode == 1, res.stderr[-2000:]
    assert "budget violated: cpu/t-int8.tflite: size" in res.stdout
    assert "started" not in res.stderr  # -q drops progress only
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["budget"]["not_measured"] == [
        "cpu/t-int8.tflite: max_accuracy_drop not measured (--no-eval)"]
    assert not any("float32" in v for v in report["budget"]["violations"])


@pytest.mark.slow
def test_the_readme_example_budget_passes_on_the_demo(demo_keras: Path, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, demo_keras, stages=[{"quantize": {"mode": "int8"}}],
                          budget={"max_accuracy_drop": 0.01, "max_size_bytes": 120000})
    res = run_cli("compress", str(recipe), "-q")
    assert res.returncode == 0, res.stdout + res.stderr[-2000:]
    assert "t: ok: 4 artifacts verified (exit 0)" in res.stdout


def test_verdict_names_a_failure_in_one_line() -> None:
    from mobilec.report.console import verdict

    report = {"name": "d", "exit_code": 3, "output_dir": "/o", "budget": {"violations": []},
              "stages": [{"name": "convert", "status": "ok"}],
              "artifacts": [{"path": "cpu/d-int8.onnx", "status": "failed", "error": "boom"}]}
    assert verdict(report) == ("d: failed: 1 of 1 artifacts failed (cpu/d-int8.onnx: boom) "
                               "(exit 3); outputs: /o")


# ----------------------------------------------------------------------------- 11: bench

@pytest.mark.parametrize("args,needle", [(["--runs", "0"], "--runs"), (["--runs", "-1"], "--runs"),
                                         (["--threads", "0"], "--threads")])
def test_bench_rejects_bad_counts_as_usage_errors(args: list[str], needle: str,
                                                  tmp_path: Path) -> None:
    model = _pooling_onnx(tmp_path / "m.onnx", [1, 3, 8, 8])
    _clean_exit_2(run_cli("bench", str(model), *args), needle)
    from mobilec.api import bench
    from mobilec.errors import MobilecError

    with pytest.raises(MobilecError):
        bench(model, runs=0)


def test_bench_refuses_a_huge_declared_input_like_compress(tmp_path: Path) -> None:
    model = _pooling_onnx(tmp_path / "huge.onnx", [1, 3, 200000, 100000])  # 224 GiB float32
    _clean_exit_2(run_cli("bench", str(model)), "60,000,000,000 elements per sample", "huge.onnx")


def _pooling_onnx(path: Path, shape: list[int]) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["y"])], "pool",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [shape[0], shape[1], 1, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


# ----------------------------------------------------------------------------- 13: diagnose names

def test_diagnose_table_never_cuts_a_layer_name() -> None:
    from mobilec.diagnose.view import print_table

    name = "sequential_1/dense_1/MatMul;sequential_1/dense_1/BiasAdd;FULLY_CONNECTED_with_a_long_tail"
    diag = {"backend": "tflite", "samples": 8, "ops": 1, "ranked_by": "snr_db",
            "rows": [{"rank": 1, "name": name, "op": "FULLY_CONNECTED", "rmse_scale": 0.3,
                      "max_abs_error": 0.1, "snr_db": 12.0}]}
    out = io.StringIO()
    print_table(diag, file=out, width=80)
    text = out.getvalue()
    assert f"keep_float: ['{name}']" in text  # whole, on one line, ready to paste
    cells = [line.split("│") for line in text.splitlines() if line.startswith("│")]
    assert "".join(c[2].strip() for c in cells) == name  # the layer column, folded, not cut
    assert "".join(c[3].strip() for c in cells) == "FULLY_CONNECTED"


# ----------------------------------------------------------------------------- 14: explore-best

def test_explore_best_recipe_is_relative_to_itself_and_has_an_output(tmp_path: Path) -> None:
    from mobilec.explore.outputs import best_recipe_text
    from mobilec.recipe.loader import load_recipe

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.keras").write_bytes(b"")
    _digits_npz(tmp_path)
    src = tmp_path / "r.yaml"
    src.write_text(yaml.safe_dump({"version": 1, "name": "r", "model": {"path": "models/m.keras"},
                                   "data": DIGITS, "targets": ["cpu"]}))
    row = {"id": "int8/tflite", "gzip_bytes": 60000, "accuracy": 0.99, "accuracy_drop": 0.0,
           "overrides": {"stages": [{"quantize": {"mode": "int8"}}]}}
    out_dir = tmp_path / "mobilec-out" / "r" / "explore"
    out_dir.mkdir(parents=True)
    best = out_dir / "explore-best.yaml"
    best.write_text(best_recipe_text(load_recipe(src), row, out_dir))
    doc = yaml.safe_load(best.read_text())
    assert doc["model"]["path"] == "../../../models/m.keras"
    assert doc["data"]["eval"] == "../../../eval.npz"
    assert doc["output"]["dir"] == "best"
    assert str(tmp_path) not in best.read_text()  # committable: no absolute path
    again = load_recipe(best)
    assert again.model.path == tmp_path / "models" / "m.keras"
    assert again.output.dir == out_dir / "best"


# ----------------------------------------------------------------------------- 15

def test_locked_with_set_says_the_file_is_unchanged(tmp_path: Path) -> None:
    from mobilec.ci.lockfile import build_lock, differences

    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\n")
    locked = build_lock(recipe, "aa" * 32, {}, {"numpy": 0})
    now = build_lock(recipe, "bb" * 32, {}, {"numpy": 0}, overrides=["quantize.mode=float16"])
    diffs = differences(locked, now)
    assert len(diffs) == 1 and " changed" not in diffs[0], diffs
    assert "is unchanged, but --set gives other settings: no --set in the lock, " \
           "--set quantize.mode=float16 now" in diffs[0]
    recipe.write_text("version: 1\nname: other\n")
    assert "changed" in differences(locked, build_lock(recipe, "bb" * 32, {}, {"numpy": 0}))[0]


@pytest.mark.parametrize("key", ["stages.0.quantize.mode", "quantize.mode"])
def test_a_bad_set_key_is_located_on_the_command_line(key: str, tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("version: 1\nmodel: {path: m.keras}\nstages:\n  - quantize: {mode: int8}\n")
    res = run_cli("validate", str(recipe), "--set", f"{key}=int3")
    assert res.returncode == 2
    assert f"--set {key}: stages[0].quantize.mode: 'int3' is not one of" in res.stderr, res.stderr
    assert "recipe.yaml:" not in res.stderr


def test_diagnose_without_data_is_a_usage_error(demo_keras: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"version: 1\nmodel: {{path: '{demo_keras}'}}\n"
                      f"output: {{dir: '{tmp_path / 'out'}'}}\n")
    _clean_exit_2(run_cli("diagnose", str(recipe)), "no data", "r.yaml")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- 16: --json errors

def test_json_errors_are_a_json_object_on_stdout(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("version: 1\nmodel: {path: m.keras}\nstages:\n  - quantize: {mode: int3}\n")
    res = run_cli("validate", str(recipe), "--json")
    assert res.returncode == 2
    err = json.loads(res.stdout)["error"]
    assert err["code"] == 2 and "'int3' is not one of" in err["message"]
    assert set(err) == {"code", "message", "where", "hint"} and err["hint"]
    missing = run_cli("compress", str(tmp_path / "nope.yaml"), "--json")
    assert missing.returncode == 2
    err = json.loads(missing.stdout)["error"]
    assert err["where"] and "nope.yaml" in err["where"] + err["message"]
    usage = run_cli("bench", str(tmp_path / "m.onnx"), "--runs", "0", "--json")  # click's own
    assert usage.returncode == 2
    assert json.loads(usage.stdout)["error"]["where"] == "--runs"
