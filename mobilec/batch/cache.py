"""The batch cache: a model's result is reused when nothing that could change it changed.

The key covers the model's bytes, the effective recipe (minus where it is
written), the bytes of the recipe's data files, the run options, and the
versions of mobilec and every converter. The entry lives inside the model's
output folder and is placed together with the outputs in one rename
(see batch.commit), so an entry never describes incomplete outputs.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from mobilec._version import __version__
from mobilec.recipe.schema import Recipe
from mobilec.util.fs import sha256_path

ENTRY_FILE = ".mobilec-batch.json"
ENTRY_VERSION = 1

# Distributions whose version changes what an artifact contains or how it measures.
CONVERTERS = ("tensorflow", "tf-keras", "tensorflow-model-optimization", "onnx", "onnxruntime",
              "tf2onnx", "onnx2tf", "coremltools", "ai-edge-litert", "ai-edge-quantizer", "numpy")


@lru_cache(maxsize=1)
def tool_versions() -> dict[str, str]:
    """mobilec and converter versions, read from package metadata (importing TF would cost seconds)."""
    versions = {"mobilec": __version__}
    for dist in CONVERTERS:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "absent"
    return versions


def _data_files(recipe: Recipe) -> dict[str, Path]:
    files: dict[str, Path] = {}
    d = recipe.data
    if d is not None:
        for key in ("train", "eval"):
            p = getattr(d, key)
            if p is not None:
                files[f"data.{key}"] = Path(p)
        if d.python and ":" in d.python:
            module = d.python.rsplit(":", 1)[0]
            if module.endswith(".py"):
                files["data.python"] = (Path(recipe.source).resolve().parent / module).resolve()
    return files


def key_parts(recipe: Recipe, model_sha256: str, options: dict[str, Any]) -> dict[str, Any]:
    """Everything the key is made of, kept in the entry so a miss can say what changed."""
    effective = json.loads(recipe.effective_json())
    effective["output"].pop("dir", None)  # where results go does not change them
    data = {k: (sha256_path(p) if p.exists() else "missing") for k, p in _data_files(recipe).items()}
    return {"model_sha256": model_sha256, "recipe": effective, "data": data,
            "options": dict(sorted(options.items())), "versions": tool_versions()}


def cache_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def lookup(job_dir: Path, key: str) -> dict[str, Any] | None:
    """The stored entry when it matches `key` and its artifacts are all still there."""
    path = Path(job_dir) / ENTRY_FILE
    try:
        entry = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(entry, dict) or entry.get("version") != ENTRY_VERSION or entry.get("key") != key:
        return None
    report = entry.get("report")
    if not isinstance(report, dict):
        return None
    for a in report.get("artifacts", []):
        if a.get("status") in ("ok", "unverified") and not (Path(job_dir) / a["path"]).exists():
            return None  # someone deleted an output: redo rather than report a ghost
    return entry


def make_entry(key: str, parts: dict[str, Any], status: str, report: dict[str, Any],
               seconds: float) -> dict[str, Any]:
    return {"version": ENTRY_VERSION, "key": key, "status": status, "seconds": round(seconds, 3),
            "key_parts": parts, "report": report}


def changed(job_dir: Path, parts: dict[str, Any]) -> list[str]:
    """What differs from the stored entry (for the log: why a model re-runs)."""
    try:
        old = json.loads((Path(job_dir) / ENTRY_FILE).read_text()).get("key_parts", {})
    except (OSError, ValueError, AttributeError):
        return []
    return [k for k in parts if old.get(k) != parts[k]]
