"""The house rules, checked on the code itself (issue: one runner, policy as data, packages).

The import graph is built with `ast`, function-level imports included: a cycle hidden
inside a function is still a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from mobilec.policy.modes import MODES, RECIPE_MODES, mode_for_format
from mobilec.policy.plancheck import check_plan
from mobilec.policy.targets import TARGETS, plan_artifacts
from mobilec.recipe.loader import load_recipe_text

PKG = Path(__file__).resolve().parent.parent / "mobilec"
MAX_LINES = 400
MAX_TOP_LEVEL = 12
# Third-party libraries that cost seconds (or a GPU stack) to import: these, and only these,
# may be imported inside functions.
HEAVY = {"tensorflow", "tf_keras", "keras", "tensorflow_model_optimization", "tf2onnx",
         "onnx2tf", "onnx", "onnxruntime", "onnxsim", "coremltools", "ai_edge_litert",
         "ai_edge_quantizer", "torch", "executorch", "litert_torch", "ray", "sklearn",
         "rich", "scipy", "xmlschema"}
# mobilec modules imported inside a function, each for a stated reason.
LAZY_OK = {
    # `import mobilec` must stay cheap and must not import the library on its own.
    ("mobilec", "mobilec.api"),
    # validate, schema and targets need neither the runner nor the model tools (numpy,
    # reports, formats, loaders): `mobilec validate` stays fast.
    ("mobilec.api", "mobilec.pipeline"),
    ("mobilec.api", "mobilec.tools.bench"),
    ("mobilec.api", "mobilec.tools.inspect"),
}
# The CLI loads what the command it runs needs, so that `mobilec --help` costs click alone.
LAZY_PACKAGES = ("mobilec.cli",)


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(PKG.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, bool]]:
    """(imported mobilec module or third-party top package, inside a function?)"""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    found: list[tuple[str, bool]] = []

    def visit(node: ast.AST, in_fn: bool) -> None:
        for child in ast.iter_child_nodes(node):
            fn = in_fn or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((a.name, fn) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[:len(base) - (child.level - 1)]
                    mod = ".".join(base + ([child.module] if child.module else []))
                else:
                    mod = child.module or ""
                for a in child.names:
                    sub = f"{mod}.{a.name}"
                    found.append((sub if sub in MODULES else mod, fn))
            visit(child, fn)

    visit(tree, False)
    return found


GRAPH = {m: [(i, fn) for i, fn in _imports(m, p)] for m, p in MODULES.items()}


def _cycles() -> list[list[str]]:
    edges = {m: {i for i, _ in deps if i in MODULES and i != m} for m, deps in GRAPH.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in edges:
        if v not in index:
            strong(v)
    return out


def test_no_import_cycle_function_level_imports_included() -> None:
    assert _cycles() == []


def test_function_level_imports_are_for_heavy_libraries_only() -> None:
    lazy = sorted({(m, i) for m, deps in GRAPH.items() for i, fn in deps
                   if fn and i.split(".")[0] == "mobilec" and (m, i) not in LAZY_OK
                   and not m.startswith(LAZY_PACKAGES)})
    assert lazy == []


def test_only_the_api_imports_the_pipeline_runner() -> None:
    users = sorted(m for m, deps in GRAPH.items() if any(i == "mobilec.pipeline" for i, _ in deps))
    assert users == ["mobilec.api"]


def test_packages_not_a_flat_folder() -> None:
    top = [p.name for p in PKG.glob("*.py")]
    assert len(top) <= MAX_TOP_LEVEL, top


def test_no_module_past_400_lines() -> None:
    long = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_no_private_name_crosses_a_module() -> None:
    """`from mobilec.x import _name` (or `x._name`) makes _name a public interface in disguise."""
    found = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        imported = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                    and (n.module or "").startswith("mobilec") for a in n.names}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mobilec"):
                found += [f"{name}: {a.name}" for a in node.names if a.name.startswith("_")
                          and not a.name.startswith("__")]
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id in imported and node.attr.startswith("_") \
                    and not node.attr.startswith("__"):
                found.append(f"{name}: {node.value.id}.{node.attr}")
    assert found == []


RECIPE = """
version: 1
name: m
model: {{path: {model}}}
data: {{source: digits}}
stages:
  - quantize: {{mode: {mode}}}
targets: [{targets}]
budget: {{max_accuracy_drop: 0.01}}
"""


@pytest.mark.parametrize("mode", RECIPE_MODES)
def test_every_mode_in_the_table_passes_the_schema_and_the_plan_check(tmp_path: Path,
                                                                     mode: str) -> None:
    model = tmp_path / "m.keras"
    model.write_bytes(b"")
    formats = set(MODES[mode].formats) if mode != "auto" else {"tflite"}
    for fmt in sorted(formats):
        # .pte artifacts come from PyTorch models; every other format from this Keras file
        source = "pt2" if fmt == "executorch" else "keras"
        targets = [t for t, p in TARGETS.items() if fmt in p.formats]
        assert targets, f"no target ships {fmt}"
        recipe = load_recipe_text(RECIPE.format(model=model, mode=mode,
                                                targets=", ".join(targets)), base_dir=tmp_path)
        check_plan(recipe, source)
        if mode != "auto":
            specs = plan_artifacts(targets, mode, None)
            built = {(s.format, s.quantization) for s in specs if not s.skipped_reason}
            assert (fmt, mode_for_format(mode, fmt)) in built
