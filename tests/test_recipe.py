"""Recipe handling: schema, line-numbered errors, did-you-mean, --set, paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from mobilec.errors import RecipeError
from mobilec.recipe.loader import apply_overrides, json_schema, load_recipe, load_recipe_text

GOOD = """\
version: 1
name: digits-int8
model:
  path: models/digits.keras
data:
  source: npz
  train: data/train.npz
  eval: data/eval.npz
stages:
  - prune: {sparsity: 0.5, schedule: constant, epochs: 2}
  - quantize: {mode: int8}
targets: [android-nnapi, cpu]
budget: {max_accuracy_drop: 0.01}
"""


def load(text: str, tmp_path: Path, **kw) -> object:
    return load_recipe_text(text, base_dir=tmp_path, filename="recipe.yaml", **kw)


def error_of(text: str, tmp_path: Path, **kw) -> str:
    with pytest.raises(RecipeError) as exc:
        load(text, tmp_path, **kw)
    return str(exc.value)


def test_valid_recipe_resolves_paths_against_the_recipe_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    f = tmp_path / "sub" / "r.yaml"
    f.write_text(GOOD)
    r = load_recipe(f)
    assert r.name == "digits-int8"
    assert r.model.path == (tmp_path / "sub" / "models" / "digits.keras").resolve()
    assert r.data.train == (tmp_path / "sub" / "data" / "train.npz").resolve()
    assert [e.name for e in r.stages] == ["prune", "quantize"]
    assert r.stage("prune").sparsity == 0.5
    assert r.verify.min_top1_agreement == 0.99 and r.verify.min_snr_db == 20


def test_name_defaults_to_file_stem(tmp_path: Path) -> None:
    f = tmp_path / "my model.yaml"
    f.write_text("version: 1\nmodel: {path: m.keras}\n")
    assert load_recipe(f).name == "my-model"


def test_bad_enum_names_line_key_path_and_choices(tmp_path: Path) -> None:
    msg = error_of(GOOD.replace("mode: int8", "mode: int3"), tmp_path)
    assert "recipe.yaml:11: stages[1].quantize.mode: 'int3' is not one of dynamic, float16, int8" in msg


def test_unknown_key_suggests_the_right_one(tmp_path: Path) -> None:
    msg = error_of(GOOD.replace("sparsity: 0.5", "sparsty: 0.5"), tmp_path)
    assert "recipe.yaml:10: stages[0].prune.sparsty: unknown key 'sparsty'; did you mean 'sparsity'?" in msg
    msg = error_of(GOOD.replace("targets:", "target:"), tmp_path)
    assert "unknown key 'target'; did you mean 'targets'?" in msg
    assert "recipe.yaml:12" in msg


def test_unknown_stage_suggests(tmp_path: Path) -> None:
    msg = error_of(GOOD.replace("- prune:", "- prunning:"), tmp_path)
    assert "recipe.yaml:10" in msg and "did you mean 'prune'" in msg


def test_wrong_type_names_value(tmp_path: Path) -> None:
    msg = error_of(GOOD.replace("sparsity: 0.5", "sparsity: lots"), tmp_path)
    assert "recipe.yaml:10: stages[0].prune.sparsity" in msg and "'lots'" in msg


def test_malformed_yaml_names_line(tmp_path: Path) -> None:
    msg = error_of("version: 1\nmodel:\n  path: [unclosed\n", tmp_path)
    assert msg.startswith("recipe.yaml:") and "malformed YAML" in msg


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    msg = error_of("version: 1\nmodel: {path: a.keras}\nmodel: {path: b.keras}\n", tmp_path)
    assert "recipe.yaml:3" in msg and "duplicate key 'model'" in msg


def test_stage_order_and_repeats(tmp_path: Path) -> None:
    msg = error_of("version: 1\nmodel: {path: m.keras}\nstages:\n  - quantize: {}\n  - prune: {}\n",
                   tmp_path)
    assert "'prune' must come before 'quantize'" in msg
    msg = error_of("version: 1\nmodel: {path: m.keras}\nstages:\n  - prune: {}\n  - prune: {}\n",
                   tmp_path)
    assert "appears twice" in msg


def test_empty_and_non_mapping(tmp_path: Path) -> None:
    assert "empty" in error_of("", tmp_path)
    assert "expected a mapping" in error_of("- a\n- b\n", tmp_path)


def test_missing_required_key(tmp_path: Path) -> None:
    msg = error_of("version: 1\n", tmp_path)
    assert "model: required key is missing" in msg


def test_set_overrides_with_type_coercion(tmp_path: Path) -> None:
    r = load(GOOD, tmp_path, overrides=["stages.1.quantize.mode=float16",
                                        "stages.0.prune.sparsity=0.8", "targets=[cpu]",
                                        "budget.max_size_bytes=1000"])
    assert r.stage("quantize").mode == "float16"
    assert r.stage("prune").sparsity == 0.8
    assert r.targets == ["cpu"] and r.budget.max_size_bytes == 1000


def test_set_stage_shorthand_adds_missing_stage_in_order() -> None:
    raw = {"version": 1, "model": {"path": "m"}, "stages": [{"quantize": {"mode": "int8"}}]}
    out = apply_overrides(raw, ["prune.sparsity=0.3", "quantize.mode=dynamic"])
    assert out["stages"] == [{"prune": {"sparsity": 0.3}}, {"quantize": {"mode": "dynamic"}}]
    assert raw["stages"] == [{"quantize": {"mode": "int8"}}]  # input untouched


def test_set_errors_are_recipe_errors(tmp_path: Path) -> None:
    assert "KEY=VALUE" in error_of(GOOD, tmp_path, overrides=["nonsense"])
    assert "not an index" in error_of(GOOD, tmp_path, overrides=["stages.7.quantize.mode=int8"])
    assert "'int3' is not one of" in error_of(GOOD, tmp_path, overrides=["quantize.mode=int3"])


def test_alias_bomb_is_bounded(tmp_path: Path) -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n"
    prev = "a"
    for i in range(8):
        bomb += f"b{i}: &b{i} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
        prev = f"b{i}"
    assert "alias bomb" in error_of(bomb, tmp_path)


def test_json_schema_covers_the_contract() -> None:
    schema = json_schema()
    props = schema["properties"]
    for key in ("version", "name", "model", "data", "stages", "targets", "verify", "budget", "output"):
        assert key in props
    text = str(schema)
    for mode in ("dynamic", "float16", "int8", "int8-io", "int16x8", "int4", "palettize", "qat", "auto"):
        assert mode in text
