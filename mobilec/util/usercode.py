"""Code a recipe names (`model.module`, `data.python`): 'file.py:function' (relative to the
recipe's folder) or 'package.module:function'. Imported only when the run trusts the recipe
(--trust-code), so a shared recipe or zoo file never runs code on its own."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mobilec.errors import MobilecError, UnsupportedError


def load_callable(spec: str, *, key: str, trust_code: bool, base_dir: Path,
                  error: type[MobilecError]) -> Callable[..., Any]:
    """The function `spec` names; `key` (e.g. "model.module") names it in messages, and
    `error` is the MobilecError kind for a spec that does not resolve."""
    where = f"{key} {spec!r}"
    if not trust_code:
        raise UnsupportedError(f"{key} runs Python code named in the recipe, and this run "
                               "does not trust it", where=where,
                               hint="review the code, then pass --trust-code "
                                    "(api: trust_code=True) to run it")
    module_ref, sep, func_name = spec.rpartition(":")
    if not sep or not module_ref or not func_name:
        raise error("expected 'file.py:function' or 'package.module:function'", where=where)
    base = str(Path(base_dir).resolve())
    added = base not in sys.path
    if added:  # the recipe's folder is importable while its code loads
        sys.path.insert(0, base)
    try:
        if module_ref.endswith(".py"):
            file = (Path(base_dir) / module_ref).resolve()
            if not file.is_file():
                raise error(f"{key} file not found", where=str(file))
            mod_spec = importlib.util.spec_from_file_location(f"mobilec_user_{file.stem}", file)
            module = importlib.util.module_from_spec(mod_spec)  # type: ignore[arg-type]
            mod_spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            module = importlib.import_module(module_ref)
    finally:
        if added and base in sys.path:
            sys.path.remove(base)
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise error(f"{module_ref} has no function '{func_name}'", where=where)
    return fn
