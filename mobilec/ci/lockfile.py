"""`mobilec.lock.json`: what produced a run's artifacts, and `--locked` to insist on it.

Not a lock in the concurrency sense (that one is the output dir's run lock): this file
pins the toolchain and inputs, so "the same recipe gives a different model this week" has
an answer. It records the mobilec version, the version of every converter and runtime
installed (read from package metadata: nothing heavy is imported), the recipe's sha256,
the sha256 of every input model and data file, the seeds and the host. `--locked FILE`
refuses a run (exit 2) whose toolchain, recipe, inputs or seeds differ, naming each
difference. The host is recorded but not compared: CI runners change under every job.
"""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from mobilec._version import __version__
from mobilec.errors import MobilecError, UnsupportedError
from mobilec.util.fs import atomic_write_text, sha256_path
from mobilec.util.publish import LISTING_FILE

LOCK_NAME = LISTING_FILE  # its `outputs` lists the files the run wrote (util.publish)
LOCK_VERSION = 1

# Distributions whose version can change an artifact: converters, runtimes, the frameworks
# the models come from, and numpy (calibration and metrics).
KNOWN_TOOLS: tuple[str, ...] = (
    "tensorflow", "tf_keras", "tensorflow-model-optimization", "onnx", "onnxruntime", "tf2onnx",
    "onnx2tf", "coremltools", "ai-edge-litert", "ai-edge-quantizer", "torch", "executorch",
    "litert-torch", "numpy",
)


def tool_versions(tools: list[str] | tuple[str, ...] = KNOWN_TOOLS) -> dict[str, str]:
    """{distribution: version} of those installed; the others are left out."""
    found: dict[str, str] = {}
    for name in tools:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _label(key: str) -> str:
    """'data.eval' -> 'data file', 'model' -> 'model file': the words a difference uses."""
    kind = key.split(".", 1)[0]
    return {"model": "model file", "data": "data file"}.get(kind, f"{kind} file")


def _shown(path: Path, base: Path | None) -> str:
    if base is not None:
        try:
            return path.resolve().relative_to(base.resolve()).as_posix()
        except (ValueError, OSError):
            pass
    return str(path)


def build_lock(recipe_path: str | Path, recipe_sha256: str, input_files: dict[str, Path],
               seeds: dict[str, Any], tools: list[str] | tuple[str, ...] = KNOWN_TOOLS,
               overrides: list[str] | None = None) -> dict[str, Any]:
    """The lock of a run. `input_files` maps a role ("model", "data.train", "data.eval") to a
    file or directory (a directory is hashed over its sorted files, names and bytes); paths
    are stored relative to the recipe's folder when inside it. `recipe_sha256` is the
    effective recipe's (after `overrides`, the --set keys); the file's own hash is kept
    beside it, so a difference can say which of the two changed."""
    recipe_path = Path(recipe_path)
    file_sha = sha256_path(recipe_path) if recipe_path.is_file() else None
    base = recipe_path.parent
    inputs: dict[str, dict[str, Any]] = {}
    for key, path in sorted(input_files.items()):
        path = Path(path)
        if not path.exists():
            raise MobilecError(f"cannot pin {_label(key)} {path}: it does not exist",
                               where=str(recipe_path), hint="check the recipe's paths")
        inputs[key] = {"path": _shown(path, base), "sha256": sha256_path(path),
                       "kind": "dir" if path.is_dir() else "file"}
    return {
        "lock_version": LOCK_VERSION,
        "mobilec": __version__,
        "tools": tool_versions(tools),
        "recipe": {"path": _shown(recipe_path, Path.cwd()), "sha256": recipe_sha256,
                   "file_sha256": file_sha, "overrides": list(overrides or [])},
        "inputs": inputs,
        "seeds": dict(seeds),
        "host": {"platform": platform.platform(), "python": platform.python_version(),
                 "machine": platform.machine()},
    }


def recipe_inputs(recipe: Any) -> dict[str, Path]:
    """The files a validated Recipe reads, for build_lock: model, data files, a student model."""
    files: dict[str, Path] = {}
    if recipe.model.path is not None:
        files["model"] = Path(recipe.model.path)
    elif recipe.model.module and recipe.model.module.split(":")[0].endswith(".py"):
        # a PyTorch factory in a file: that file is the model's code
        files["model"] = (Path(recipe.source).resolve().parent /
                          recipe.model.module.split(":")[0]).resolve()
    data = recipe.data
    if data is not None:
        for key in ("train", "eval"):
            value = getattr(data, key, None)
            if value is not None:
                files[f"data.{key}"] = Path(value)
        hook = getattr(data, "python", None)  # "loader.py:fn": the file's code shapes the data
        if hook and ":" in hook and hook.rsplit(":", 1)[0].endswith(".py"):
            files["data.python"] = (Path(recipe.source).resolve().parent / hook.rsplit(":", 1)[0]).resolve()
    distill = recipe.stage("distill") if hasattr(recipe, "stage") else None
    student = getattr(distill, "student", None)
    if isinstance(student, Path):
        files["distill.student"] = student
    return files


def run_inputs(recipe: Any) -> dict[str, Path]:
    """Every file a run reads: recipe_inputs and the recipe file itself (what no output may
    overwrite, util.outguard)."""
    inputs = dict(recipe_inputs(recipe))
    source = getattr(recipe, "source", None)
    if source and Path(source).is_file():
        inputs["recipe"] = Path(source)
    return inputs


def write_lock(out_dir: str | Path, lock: dict[str, Any]) -> Path:
    """Write OUT/mobilec.lock.json in one rename."""
    path = Path(out_dir) / LOCK_NAME
    atomic_write_text(path, json.dumps(lock, indent=2, sort_keys=False) + "\n")
    return path


def read_lock(lock_path: str | Path) -> dict[str, Any]:
    lock_path = Path(lock_path)
    if not lock_path.is_file():
        raise UnsupportedError("lock file not found", where=str(lock_path),
                               hint=f"a compress run writes {LOCK_NAME} beside report.json; "
                                    "commit that file and pass its path to --locked")
    try:
        lock = json.loads(lock_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UnsupportedError(f"cannot read the lock file: {exc}", where=str(lock_path)) from None
    if not isinstance(lock, dict) or "tools" not in lock or "inputs" not in lock:
        raise UnsupportedError(f"not a {LOCK_NAME} (no 'tools' or 'inputs')", where=str(lock_path))
    return lock


def _overrides(recipe: dict[str, Any]) -> str:
    sets = recipe.get("overrides") or []
    return " ".join(f"--set {o}" for o in sets) if sets else "no --set"


def _short(digest: Any) -> str:
    text = str(digest)
    return text[:12] + "…" if len(text) > 12 else text


def differences(locked: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Every way `current` differs from `locked`, one sentence each (empty: they agree)."""
    out: list[str] = []
    if locked.get("mobilec") != current.get("mobilec"):
        out.append(f"mobilec {locked.get('mobilec')} in the lock, {current.get('mobilec')} now")
    lt, ct = locked.get("tools") or {}, current.get("tools") or {}
    for name in sorted(set(lt) | set(ct)):
        a, b = lt.get(name), ct.get(name)
        if a == b:
            continue
        if a is None:
            out.append(f"{name} {b} is installed now but was not when the lock was written")
        elif b is None:
            out.append(f"{name} {a} in the lock, not installed now")
        else:
            out.append(f"{name} {a} in the lock, {b} now")
    lr, cr = locked.get("recipe") or {}, current.get("recipe") or {}
    if lr.get("sha256") != cr.get("sha256"):
        name = cr.get("path") or lr.get("path")
        if lr.get("file_sha256") and lr.get("file_sha256") == cr.get("file_sha256"):
            # The file is the same: the --set keys made the difference.
            out.append(f"recipe {name} is unchanged, but --set gives other settings: "
                       f"{_overrides(lr)} in the lock, {_overrides(cr)} now")
        else:
            out.append(f"recipe {name} changed: sha256 {_short(lr.get('sha256'))} in the "
                       f"lock, {_short(cr.get('sha256'))} now")
    li, ci = locked.get("inputs") or {}, current.get("inputs") or {}
    for key in sorted(set(li) | set(ci)):
        a, b = li.get(key), ci.get(key)
        label = _label(key)
        if a is None:
            out.append(f"{label} {b['path']} ({key}) is new: not in the lock")
        elif b is None:
            out.append(f"{label} {a['path']} ({key}) is in the lock but the recipe no longer reads it")
        elif a.get("sha256") != b.get("sha256"):
            moved = "" if a.get("path") == b.get("path") else f" (now {b.get('path')})"
            out.append(f"{label} {a.get('path')}{moved} changed: sha256 {_short(a.get('sha256'))} "
                       f"in the lock, {_short(b.get('sha256'))} now")
    ls, cs = locked.get("seeds") or {}, current.get("seeds") or {}
    for key in sorted(set(ls) | set(cs)):
        if ls.get(key) != cs.get(key):
            out.append(f"seed {key}: {ls.get(key)} in the lock, {cs.get(key)} now")
    return out


def check_locked(lock_path: str | Path, current: dict[str, Any]) -> None:
    """Refuse (UnsupportedError, exit 2) when `current` (a build_lock of this run) differs from
    the lock at `lock_path`; the message names every difference."""
    locked = read_lock(lock_path)
    diffs = differences(locked, current)
    if not diffs:
        return
    pins = [f"{n}=={v}" for n, v in sorted((locked.get("tools") or {}).items())
            if (current.get("tools") or {}).get(n) != v]
    hint = ("install the locked versions: pip install " + " ".join(pins) + "; " if pins else "")
    hint += ("or, if the change is intended, run without --locked and commit the new "
             f"{LOCK_NAME}")
    raise UnsupportedError(f"this run differs from the lock in {len(diffs)} way(s):\n  - "
                           + "\n  - ".join(diffs), where=str(lock_path), hint=hint)
