"""PyTorch sources: a `torch.export` program (`.pt2`) or a factory in user code.

`.pt2` files load without running code from the file: `torch.export.load` on its
own unpickles weights with `weights_only=False`, hands symbolic-shape strings to
`sympy.sympify` (an `eval`) and resolves graph targets by attribute lookups on
`torch`, so `load_pt2` checks the archive first, forces weights-only unpickling,
and refuses graphs that call anything but operators. A factory
(`model.module: "pkg.mod:factory"`) is user code: it is imported only with
`--trust-code`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mobilec.errors import ModelLoadError, first_line
from mobilec.sources.batch import Inputs, as_list, batched
from mobilec.state import TensorSpec
from mobilec.util.usercode import load_callable

# Symbolic-shape expressions in a .pt2 (`expr_str`) are parsed by sympy.sympify, which
# evaluates Python. Only these names (and symbol names like s0, u12) may appear in them.
_SYMPY_NAMES = frozenset({
    "Symbol", "Integer", "Rational", "Float", "Max", "Min", "Mod", "Abs", "Eq", "Ne", "Lt",
    "Le", "Gt", "Ge", "And", "Or", "Not", "True", "False", "oo", "floor", "ceiling",
    "Piecewise", "sqrt", "Pow", "Mul", "Add",
    # torch.utils._sympy.functions, as the deserializer names them
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt",
    "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv",
    "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt",
    "RoundDecimal", "ToFloat", "OpaqueUnaryFn_sqrt", "BitwiseFn_bitwise_and",
    "BitwiseFn_bitwise_or", "Identity",
    # assumptions passed to Symbol(...)
    "positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite",
})
_SYMBOL = re.compile(r"[a-z]{1,4}\d+")
_TOKEN = re.compile(r"\s+|'[a-z]{1,4}\d+'|[A-Za-z_][A-Za-z_0-9]*|\d+(?:\.\d+)?(?:e-?\d+)?"
                    r"|\*\*|//|[-+*/%(),<>=!&|~^]")
# Python callables (not operators) a serialized graph may legitimately call.
_SAFE_PY_CALLS = ("operator.", "math.", "builtins.getattr", "torch.sym_", "torch._sym_",
                  "torch._assert", "torch.SymInt", "torch.SymFloat", "torch.SymBool")


def load_pt2(path: Path) -> Any:
    """Load a `torch.export.save`d ExportedProgram without running code from the file.

    Refuses (ModelLoadError) an archive holding pickled Python objects, a symbolic
    shape that is not a plain arithmetic expression, or a graph that calls anything
    other than torch operators.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError("model file not found", where=str(path))
    data = path.read_bytes()  # read once: the checked bytes are the loaded bytes
    _check_archive(data, path)
    import torch

    try:
        with _weights_only_unpickling():
            ep = torch.export.load(io.BytesIO(data))
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad archive
        if "Weights only load failed" in str(exc):
            raise ModelLoadError(
                "the archive holds a pickle that is not plain tensors; mobilec does not "
                "unpickle objects from model files", where=str(path),
                hint="save the program again with torch.export.save (tensors only)") from exc
        raise ModelLoadError(
            f"not a loadable torch.export program: {first_line(exc, 400)}", where=str(path),
            hint="save it with torch.export.save(torch.export.export(model, args), path) "
                 f"using torch {torch.__version__.split('+')[0]}") from exc
    _check_graph_targets(ep, path)
    return ep


def _check_archive(data: bytes, path: Path) -> None:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise ModelLoadError("not a .pt2 archive (not a zip file)", where=str(path),
                             hint="save the model with torch.export.save") from exc
    names = zf.namelist()
    if not any(n.endswith("archive_format") for n in names):
        raise ModelLoadError(
            "a .pt2 in the pre-2.7 layout (or not a torch.export archive)", where=str(path),
            hint="load it with the torch that wrote it and save it again with torch.export.save")
    for name in names:
        base = name.rsplit("/", 1)[-1]
        # Custom (torchbind) and opaque objects are plain pickles: never loaded here.
        if "/constants/" in name and base.startswith(("custom_obj", "opaque_obj")):
            raise ModelLoadError(
                f"the program holds a pickled Python object ({base}); mobilec does not unpickle "
                "objects from model files", where=str(path),
                hint="export a program whose constants are tensors only")
        if name.endswith(".json"):
            try:
                tree = json.loads(zf.read(name))
            except (ValueError, UnicodeDecodeError) as exc:
                raise ModelLoadError(f"corrupt entry {name}", where=str(path)) from exc
            for expr in _expr_strings(tree):
                _check_sym_expr(expr, path)


def _expr_strings(tree: Any) -> Iterator[str]:
    if isinstance(tree, dict):
        for key, value in tree.items():
            if key == "expr_str" and isinstance(value, str):
                yield value
            else:
                yield from _expr_strings(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _expr_strings(value)


def _check_sym_expr(expr: str, path: Path) -> None:
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            break
        tok = m.group(0)
        if (tok[0].isalpha() or tok[0] == "_") and tok not in _SYMPY_NAMES \
                and not _SYMBOL.fullmatch(tok):
            break
        pos = m.end()
    if pos < len(expr):
        raise ModelLoadError(
            f"refusing a symbolic shape that is not plain arithmetic: {expr[:80]!r}",
            where=str(path), hint="torch.export.load would evaluate it as Python; re-export "
                                  "the model with torch.export and save it again")


@contextlib.contextmanager
def _weights_only_unpickling() -> Iterator[None]:
    # torch.export.load calls torch.load(weights_only=False) for pickled tensors; this
    # documented switch makes every torch.load in the call weights-only.
    old = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = old


def _check_graph_targets(ep: Any, path: Path) -> None:
    """Graph targets resolve by getattr on torch (torch.os.system is reachable): allow ops only."""
    import torch

    for gm in ep.graph_module.modules():
        graph = getattr(gm, "graph", None)
        if graph is None:
            continue
        for node in graph.nodes:
            if node.op != "call_function":
                continue
            t = node.target
            if isinstance(t, (torch._ops.OpOverload, torch._ops.OpOverloadPacket,
                              torch._ops.HigherOrderOperator)):
                continue
            qual = f"{getattr(t, '__module__', '') or ''}.{getattr(t, '__name__', t)}"
            qual = qual.replace("_operator.", "operator.")
            if isinstance(t, str) or not qual.startswith(_SAFE_PY_CALLS):
                raise ModelLoadError(
                    f"the program calls {qual!r}, which is not a torch operator", where=str(path),
                    hint="mobilec loads .pt2 programs made of torch operators only")


def load_factory(spec: str, trust_code: bool, base_dir: Path) -> tuple[Any, tuple[Any, ...] | None]:
    """Import `pkg.mod:factory` (or `file.py:factory`) and call it: user code, opt-in only.

    Returns (module, example_inputs or None). The factory returns an nn.Module or a
    (module, example_inputs) pair. `base_dir` (the recipe's folder) is importable
    while the module loads.
    """
    where = f"model.module {spec!r}"
    factory = load_callable(spec, key="model.module", trust_code=trust_code, base_dir=base_dir,
                            error=ModelLoadError)
    try:
        result = factory()
    except Exception as exc:  # noqa: BLE001 - user code can raise anything
        raise ModelLoadError(f"the factory failed: {type(exc).__name__}: {first_line(exc, 400)}",
                             where=where) from exc
    return _factory_result(result, where)


def _factory_result(result: Any, where: str) -> tuple[Any, tuple[Any, ...] | None]:
    import torch

    example = None
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], torch.nn.Module):
        result, example = result
        example = tuple(example) if isinstance(example, (tuple, list)) else (example,)
    if not isinstance(result, torch.nn.Module):
        raise ModelLoadError(f"the factory returned {type(result).__name__}, not a torch.nn.Module",
                             where=where, hint="return a module, or (module, example_inputs)")
    return eval_mode(result), example


def to_tensor(x: Any, dtype: str | None = None) -> Any:
    """A fresh, densely strided tensor from an array.

    numpy's `x[:, None]` has a 0 stride; torch.from_numpy keeps it and ExecuTorch's
    memory planner then fails ("0 in strides is not supported"), so always copy.
    """
    import torch

    if isinstance(x, torch.Tensor):
        return x.detach().clone(memory_format=torch.contiguous_format)
    arr = np.array(x, dtype=dtype or None, copy=True, order="C")
    if arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    return torch.from_numpy(arr)


def export_program(module: Any, example_inputs: tuple[Any, ...],
                   dynamic_batch: bool | list[int | None] = False) -> Any:
    """torch.export.export in eval mode; the batch dim of every input is dynamic when asked
    (`dynamic_batch`: True for the first dim, or each input's batch dim, None for a rank-0
    input, which stays as it is)."""
    import torch

    args = tuple(to_tensor(a) for a in example_inputs)
    dynamic_shapes = None
    axes = list(dynamic_batch) if isinstance(dynamic_batch, (list, tuple)) else [0] * len(args)
    if dynamic_batch and len(axes) == len(args) and \
            all(k is None or a.dim() > k for a, k in zip(args, axes, strict=True)):
        # torch.export specializes a size-1 dim to the constant 1: trace with batch 2.
        args = tuple(a if k is None or a.shape[k] > 1 else torch.cat([a, a], dim=k)
                     for a, k in zip(args, axes, strict=True))
        batch = torch.export.Dim("batch", min=1, max=4096)
        dynamic_shapes = tuple(None if k is None else {k: batch} for k in axes)
    return _export(module, args, dynamic_shapes)


def reexport(ep: Any) -> Any:
    """`ep.module()` exported again, with the program's own example shapes and dynamism.

    A program from torch.export.load lowered straight to XNNPACK fails at run time
    ("Propagating input shapes failed"); a fresh export of its module does not.
    """
    import torch

    specs = describe_io(ep)[0]
    args = tuple(torch.zeros([_concrete(d) for d in s.shape], dtype=getattr(torch, s.dtype))
                 for s in specs)
    # The loaded program carries its own bounds (and guards such as batch >= 2): let
    # export infer them (Dim.AUTO) instead of restating a range that may violate them.
    dynamic_shapes = tuple({0: torch.export.Dim.AUTO} if s.shape and s.shape[0] is None else None
                           for s in specs)
    return _export(ep.module(), args, dynamic_shapes if any(dynamic_shapes) else None)


def _export(module: Any, args: tuple[Any, ...], dynamic_shapes: Any) -> Any:
    import torch

    try:
        with torch.no_grad():
            return torch.export.export(eval_mode(module), args, dynamic_shapes=dynamic_shapes)
    except Exception as exc:  # noqa: BLE001 - export raises many types
        raise ModelLoadError(f"torch.export could not trace the model: {first_line(exc, 400)}",
                             hint="make forward() traceable (no data-dependent Python control "
                                  "flow), or set model.input_shape to fix the input size") from exc


def _concrete(d: int | None) -> int:
    return 2 if d is None else int(d)


def eager_runner(module: Any, batch_size: int = 256) -> Callable[[Inputs], list[np.ndarray]]:
    """A runner on the eager module: inputs (one array, or a list in input order) ->
    every output as float32, in output order. Integer inputs are fed as they are."""
    import torch
    from torch.utils import _pytree as pytree

    module = eval_mode(module)

    def run(x: Inputs) -> list[np.ndarray]:
        with torch.no_grad():
            out = module(*[to_tensor(a) for a in as_list(x)])
        leaves = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        return [t.detach().float().numpy() for t in leaves]

    return lambda x: batched(run, x, size=batch_size)


def describe_io(ep: Any) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of an ExportedProgram (user inputs only, not weights)."""
    sig = ep.graph_signature
    nodes = {n.name: n for n in ep.graph.nodes}

    def spec(name: str, node: Any) -> TensorSpec:
        val = node.meta.get("val") if node is not None else None
        shape = [int(d) if isinstance(d, int) else None for d in getattr(val, "shape", [])]
        dtype = str(getattr(val, "dtype", "torch.float32")).replace("torch.", "")
        return TensorSpec(name=name, shape=shape, dtype=dtype)

    inputs = [spec(n, nodes.get(n)) for n in sig.user_inputs]
    output_node = next(n for n in ep.graph.nodes if n.op == "output")
    out_nodes = {getattr(a, "name", None): a for a in output_node.args[0]}
    outputs = [spec(str(n), out_nodes.get(n)) for n in sig.user_outputs]
    return inputs, outputs


def eval_mode(module: Any) -> Any:
    """module.eval(), except on `ep.module()`, which refuses eval() (it is already inference)."""
    try:
        return module.eval()
    except (NotImplementedError, AttributeError):
        return module


def count_params(module: Any) -> int:
    return int(sum(p.numel() for p in module.parameters()))
