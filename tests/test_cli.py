"""The command line: fast commands stay free of TensorFlow; bad input exits 2 cleanly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_cli, write_recipe


def _modules_after(args: list[str]) -> set[str]:
    code = ("import sys\nfrom mobilec.cli import main\n"
            f"try:\n    main({args!r}, standalone_mode=False)\nexcept SystemExit:\n    pass\n"
            "print('\\n'.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    return set(out.stdout.split())


@pytest.mark.parametrize("args", [["--help"], ["schema"], ["targets"], ["recipes", "list"],
                                  ["validate", "mobilec/recipes/demo.yaml"]])
def test_fast_commands_do_not_import_tensorflow(args: list[str]) -> None:
    mods = _modules_after(args)
    assert "mobilec.cli" in mods
    heavy = {"tensorflow", "tf_keras", "keras", "coremltools", "onnxruntime", "onnx2tf", "tf2onnx"}
    assert not heavy & mods, heavy & mods


def test_schema_is_json() -> None:
    res = run_cli("schema")
    assert res.returncode == 0
    assert "properties" in json.loads(res.stdout)


def test_recipes_list_and_show() -> None:
    res = run_cli("recipes", "list")
    assert res.returncode == 0
    for name in ("demo", "mobile-int8", "fp16-gpu"):
        assert name in res.stdout
    assert "version: 1" in run_cli("recipes", "show", "demo").stdout
    bad = run_cli("recipes", "show", "dmeo")
    assert bad.returncode == 2 and "did you mean 'demo'" in bad.stderr


def test_init_writes_a_valid_starter_and_refuses_to_overwrite(tmp_path: Path) -> None:
    res = run_cli("init", "r.yaml", cwd=tmp_path)
    assert res.returncode == 0 and (tmp_path / "r.yaml").exists()
    before = (tmp_path / "r.yaml").read_text()
    again = run_cli("init", "r.yaml", cwd=tmp_path)
    assert again.returncode == 2 and "never overwrites" in again.stderr
    assert (tmp_path / "r.yaml").read_text() == before
    from mobilec.recipe.loader import load_recipe

    assert load_recipe(tmp_path / "r.yaml").stage("quantize").mode == "int8"


def _assert_clean_failure(res: subprocess.CompletedProcess, *needles: str) -> None:
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr
    assert "\nerror: " in "\n" + res.stderr  # one paragraph after any progress lines
    for n in needles:
        assert n in res.stderr, res.stderr


def test_validate_reports_recipe_errors_with_location(tmp_path: Path) -> None:
    f = tmp_path / "r.yaml"
    f.write_text("version: 1\nmodel: {path: m.keras}\nstages:\n  - quantize: {mode: int3}\n")
    _assert_clean_failure(run_cli("validate", str(f)), "r.yaml:4: stages[0].quantize.mode: 'int3'")


BAD_INPUTS = ["missing_model", "text_as_keras", "truncated_h5", "malformed_yaml", "unknown_key",
              "wrong_type"]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_exits_2_without_traceback_and_writes_nothing(case: str, tmp_path: Path,
                                                                demo_h5: Path) -> None:
    model = tmp_path / "model.keras"
    extra: dict = {}
    needle = ""
    if case == "missing_model":
        needle = "model not found"
    elif case == "text_as_keras":
        model.write_text("this is not a model\n")
        needle = "not a Keras 3 .keras archive"
    elif case == "truncated_h5":
        model = tmp_path / "model.h5"
        model.write_bytes(demo_h5.read_bytes()[:5000])
        needle = "model.h5"
    elif case == "unknown_key":
        extra = {"verfy": {}}
        needle = "did you mean 'verify'"
    elif case == "wrong_type":
        extra = {"targets": "cpu"}
        needle = "targets"
    recipe = write_recipe(tmp_path, model, **extra)
    if case == "malformed_yaml":
        recipe.write_text("version: 1\nmodel:\n  path: [x\n")
        needle = "malformed YAML"
    res = run_cli("compress", str(recipe))
    _assert_clean_failure(res, needle)
    assert not (tmp_path / "out").exists()


def test_npz_without_x_and_with_wrong_shape(tmp_path: Path, demo_h5: Path) -> None:
    np.savez(tmp_path / "nox.npz", inputs=np.zeros((4, 8, 8, 1), "float32"))
    np.savez(tmp_path / "shape.npz", x=np.zeros((4, 28, 28, 1), "float32"), y=np.zeros(4))
    r1 = write_recipe(tmp_path, demo_h5, name="nox", data={"source": "npz", "eval": "nox.npz"})
    res = run_cli("compress", str(r1))
    _assert_clean_failure(res, "npz has no array 'x'", "inputs")
    r2 = write_recipe(tmp_path, demo_h5, name="shape", data={"source": "npz", "eval": "shape.npz"})
    res = run_cli("compress", str(r2))
    _assert_clean_failure(res, "(28, 28, 1)", "(8, 8, 1)")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_the_wheel_ships_the_bundled_recipes(tmp_path: Path) -> None:
    """`pip install .` then `mobilec recipes list` from another folder: the recipes must be
    package data, not files of the source checkout."""
    import zipfile

    root = Path(__file__).resolve().parent.parent
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "dist"), str(root)], check=True, timeout=300,
                   capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("mobilec-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        assert "mobilec/recipes/demo.yaml" in zf.namelist()
        zf.extractall(tmp_path / "site")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = "import mobilec, sys; print(mobilec.__file__, file=sys.stderr); " \
           "from mobilec.cli import main; main()"
    res = subprocess.run([sys.executable, "-c", code, "recipes", "list"], cwd=elsewhere,
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(tmp_path / "site")})
    assert res.returncode == 0, res.stderr
    assert str(tmp_path / "site") in res.stderr  # the installed copy, not the checkout
    assert {"demo", "mobile-int8", "fp16-gpu"} <= {ln.split()[0] for ln in res.stdout.splitlines()}
