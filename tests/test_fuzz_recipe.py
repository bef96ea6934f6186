"""Fuzzing the recipe loader: whatever text arrives, the answer is a valid Recipe or a
MobilecError that names where the problem is; never a traceback (CLI: exit 2)."""

from __future__ import annotations

import copy
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mobilec.errors import MobilecError
from mobilec.policy.plancheck import check_plan
from mobilec.recipe.loader import apply_overrides, load_recipe_text
from mobilec.recipe.schema import Recipe

FILENAME = "fuzz.yaml"
# MOBILEC_FUZZ_EXAMPLES=5000 for a deeper run than CI can afford.
FUZZ = settings(max_examples=int(os.environ.get("MOBILEC_FUZZ_EXAMPLES", "300")), deadline=None, suppress_health_check=list(HealthCheck))

VALID: dict[str, Any] = {
    "version": 1,
    "name": "fuzzed",
    "model": {"path": "model.keras", "format": "auto", "input_shape": [1, 8, 8, 1]},
    "data": {"source": "npz", "train": "train.npz", "eval": "eval.npz",
             "calibration_samples": 50, "eval_samples": 100},
    "stages": [{"prune": {"sparsity": 0.5, "schedule": "constant", "epochs": 1}},
               {"quantize": {"mode": "int8"}},
               {"convert": {"formats": ["tflite", "onnx"], "opset": 17}}],
    "targets": ["cpu", "android-nnapi"],
    "verify": {"min_top1_agreement": 0.99, "min_snr_db": 20},
    "budget": {"max_accuracy_drop": 0.01, "max_size_bytes": 120000},
    "output": {"dir": "out", "report": ["json", "md"]},
}

# Pieces of YAML syntax and recipe vocabulary, so random text often gets deep into the loader.
TOKENS = [
    "version", "model", "path", "format", "input_shape", "data", "source", "train", "eval",
    "stages", "quantize", "mode", "prune", "sparsity", "convert", "formats", "targets", "cpu",
    "budget", "output", "dir", "int8", "npz", "digits", ": ", ":", "- ", "-", "\n", "\n  ",
    "\n    ", "  ", "\t", "[", "]", "{", "}", ", ", "&a ", "*a", "&b ", "*b", "<<: ", "? ", "'",
    '"', "|\n", ">\n", "#", "---\n", "...\n", "%YAML 1.1\n", "!!int ", "!!float ", "!!str ",
    "!!binary ", "!!timestamp ", "!!python/object/apply:os.system ", "!!set ", "!!omap ",
    "!custom ", "~", "null", "true", "no", ".nan", ".inf", "-.inf", "1e999", "0x1F", "0o17",
    "2001-13-45", "2001-01-01", "1", "0", "-1", "99999999999999999999999", "0.5", "\x00",
    "\x7f", "\ufeff", "é", "\\", "/", "~nouser/x", "../../etc/passwd", "\u2028",
]

yaml_like = st.lists(st.sampled_from(TOKENS), max_size=40).map("".join)
any_text = st.text(max_size=300)

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
    st.sampled_from(["int8", "float16", "auto", "cpu", "ios-coreml", "tflite", "digits", "npz",
                     "keras", "onnx", "constant", "json", "~/x", "a\x00b", "x" * 5000]),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=12)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path in a recipe tree (dict keys and list indexes)."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, prefix + (i,))
    return out


@st.composite
def mutated_recipes(draw: st.DrawFn) -> dict[str, Any]:
    """The valid recipe with 1-3 structural mutations: delete, replace, rename, add, swap."""
    data = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 3))):
        paths = _paths(data)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = data
        for part in path[:-1]:
            parent = parent[part]
        last = path[-1]
        action = draw(st.sampled_from(["delete", "replace", "rename", "add", "swap"]))
        if action == "delete":
            del parent[last]
        elif action == "replace":
            parent[last] = draw(values)
        elif action == "rename" and isinstance(parent, dict):
            parent[draw(st.text(max_size=12) | st.sampled_from(TOKENS))] = parent.pop(last)
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=12))] = draw(values)
        elif action == "swap" and isinstance(parent, list) and len(parent) > 1:
            parent.reverse()
    return data


def check(text: str, overrides: list[str] | None = None) -> Recipe | None:
    """The property: a Recipe, or a MobilecError that says where."""
    try:
        recipe = load_recipe_text(text, base_dir=Path("/nonexistent-base"), filename=FILENAME,
                                  overrides=overrides)
    except MobilecError as exc:
        rendered = exc.render()
        assert rendered.strip(), "empty error message"
        assert FILENAME in rendered or rendered.startswith("--set"), \
            f"error without a location: {rendered!r}"
        assert exc.exit_code == 2
        return None
    # A recipe that validates must also survive what `validate` and the report do with it.
    json.loads(recipe.effective_json())
    for fmt in ("keras", "onnx"):
        try:
            check_plan(recipe, fmt)
        except MobilecError as exc:
            assert exc.exit_code == 2 and exc.render().strip()
    return recipe


@FUZZ
@given(any_text)
def test_random_text_never_crashes(text: str) -> None:
    check(text)


@FUZZ
@given(yaml_like)
def test_random_yaml_tokens_never_crash(text: str) -> None:
    check(text)


@FUZZ
@given(mutated_recipes())
def test_mutated_recipes_never_crash(data: dict[str, Any]) -> None:
    check(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


@FUZZ
@given(st.data())
def test_text_mutations_of_a_valid_recipe_never_crash(data: st.DataObject) -> None:
    """Edits to the text itself: cut a slice, or splice in a token or random characters."""
    text = yaml.safe_dump(VALID, sort_keys=False)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(text)))
        j = data.draw(st.integers(i, min(len(text), i + 30)))
        insert = data.draw(st.sampled_from(TOKENS) | st.text(max_size=5))
        text = text[:i] + insert + text[j:]
    check(text)


override_keys = st.sampled_from([
    "name", "model.path", "model.input_shape", "quantize.mode", "stages.0.prune.sparsity",
    "stages.9.x", "stages.-1", "stages", "targets.0", "targets", "data", "data.source",
    "budget.max_size_bytes", "output.dir", "convert.formats", "", ".", "..", "a.b.c", "0",
]) | st.text(max_size=15)


@FUZZ
@given(st.lists(st.tuples(override_keys, yaml_like | st.text(max_size=15)).map(
    lambda kv: f"{kv[0]}={kv[1]}") | st.text(max_size=20), min_size=1, max_size=3))
def test_random_overrides_never_crash(overrides: list[str]) -> None:
    check(yaml.safe_dump(VALID, sort_keys=False), overrides)


def test_known_crashers_are_located_errors() -> None:
    """Inputs that once escaped as raw exceptions (found by the fuzzers above)."""
    crashers = [
        "a: \x00",                                        # reader: unprintable character
        "!!python/name:os.system : 1",                    # unknown tag on a key
        "<<: 5",                                          # merge of a scalar
        "version: 1\nmodel: {path: m}\nx: 2001-13-45",    # timestamp that is no date
        "x: !!int 1.5", "x: !!float abc",                 # constructor ValueErrors
        "&a [*a]",                                        # recursive alias
        "[" * 5000 + "]" * 5000,                          # nesting deeper than Python's stack
        'version: 1\nmodel: {path: "m\\0.keras"}',        # NUL byte in a path
        "version: 1\nmodel: {path: ~nosuchuser-xyz/m}",   # unknown home directory
    ]
    for text in crashers:
        assert check(text) is None, text


def test_alias_bomb_is_bounded() -> None:
    """A billion-laughs document is refused after MAX_NODES, quickly and without the memory."""
    import time

    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    start = time.perf_counter()
    with pytest.raises(MobilecError, match="alias bomb"):
        load_recipe_text("\n".join(lines), base_dir=Path("/"), filename=FILENAME)
    assert time.perf_counter() - start < 5


def test_overrides_of_every_kind_keep_the_input_unchanged() -> None:
    before = copy.deepcopy(VALID)
    apply_overrides(VALID, ["quantize.mode=float16", "stages.0.prune.epochs=3", "new.key=1"])
    assert VALID == before


def _fake_keras(path: Path) -> Path:
    """A file `validate` detects as .keras (it never loads the model, so no weights needed)."""
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("config.json", "{}")
        zf.writestr("metadata.json", "{}")
    return path


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(mutated_recipes() | yaml_like.map(lambda t: {"__text__": t}))
def test_validate_cli_exit_2_never_traceback(tmp_path_factory: pytest.TempPathFactory,
                                            data: dict[str, Any]) -> None:
    """The real `mobilec validate` in a subprocess: exit 0 or 2, no traceback, a location."""
    d = tmp_path_factory.mktemp("fuzzcli")
    _fake_keras(d / "model.keras")
    for name in ("train.npz", "eval.npz"):
        (d / name).write_bytes(b"")
    text = data["__text__"] if "__text__" in data else yaml.safe_dump(data, allow_unicode=True)
    recipe = d / FILENAME
    recipe.write_text(text, encoding="utf-8", errors="surrogatepass")
    proc = run_cli("validate", str(recipe), timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "internal error" not in proc.stderr, proc.stderr
    assert proc.returncode in (0, 2), (proc.returncode, proc.stderr)
    if proc.returncode == 2:
        assert proc.stderr.startswith("error: "), proc.stderr
        assert FILENAME in proc.stderr or str(d) in proc.stderr, proc.stderr


@pytest.mark.parametrize("text", ["a: \x00", "&a [*a]", "<<: 5", "version: 1\nmodel: {path: ~nobody-xyz/m}"])
def test_validate_cli_known_crashers(tmp_path: Path, text: str) -> None:
    recipe = tmp_path / FILENAME
    recipe.write_text(text)
    proc = run_cli("validate", str(recipe), timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and FILENAME in proc.stderr, proc.stderr
