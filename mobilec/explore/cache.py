"""explore's content cache: transformed models and candidate runs, keyed by what made them.

A transformed model (pruned, factorized) is keyed by the sha256 of the source model's
bytes, the recipe with only the transform stages (data, budget, ...), the data files'
bytes and the tool versions (mobilec.batch.cache.key_parts); a candidate run by the
same with the transformed model's bytes and its quantize/convert stages. Where a
file lives (model.path, output.dir, explore settings) is not part of a key: moving
the cache or widening the search reuses everything. Entries are written after their
outputs are complete, so an entry never describes half a result.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mobilec.batch.cache import ENTRY_FILE, cache_key, key_parts, lookup, make_entry
from mobilec.recipe.loader import apply_overrides
from mobilec.recipe.schema import Recipe
from mobilec.util.fs import atomic_write_text, sha256_path

TRANSFORM_ENTRY = "transform.json"
KEY_CHARS = 24  # folder names; the full key is in the entry


def derive(base: Recipe, changes: dict[str, Any]) -> Recipe:
    """`base` with `changes` applied as recipe overrides (paths in base are absolute)."""
    data = apply_overrides(base.model_dump(mode="json"), changes)
    recipe = Recipe.model_validate(data)
    recipe._source = base.source
    recipe._sha256 = cache_key(data)
    return recipe


def parts_for(recipe: Recipe, model: Path, kind: str) -> dict[str, Any]:
    parts = key_parts(recipe, sha256_path(model), {"kind": kind})
    parts["recipe"]["model"].pop("path", None)
    parts["recipe"].pop("output", None)
    parts["recipe"].pop("explore", None)
    return parts


class Cache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0

    def as_dict(self) -> dict[str, Any]:
        return {"dir": str(self.root), "hits": self.hits, "misses": self.misses}

    # -- transformed models ------------------------------------------------------------
    def transform_dir(self, key: str) -> Path:
        return self.root / "models" / key[:KEY_CHARS]

    def get_transform(self, key: str) -> dict[str, Any] | None:
        try:
            entry = json.loads((self.transform_dir(key) / TRANSFORM_ENTRY).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(entry, dict) or entry.get("key") != key:
            return None
        path = entry.get("path")
        if entry.get("error") is None and (not path or not Path(path).exists()):
            return None  # the model file went away: build it again
        self.hits += 1
        return entry

    def put_transform(self, key: str, parts: dict[str, Any], entry: dict[str, Any]) -> None:
        self.misses += 1
        folder = self.transform_dir(key)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / TRANSFORM_ENTRY, json.dumps(
            {**entry, "key": key, "key_parts": parts}, indent=1, default=str))

    # -- candidate runs ----------------------------------------------------------------
    def run_dir(self, key: str) -> Path:
        return self.root / "runs" / key[:KEY_CHARS]

    def get_run(self, key: str) -> dict[str, Any] | None:
        entry = lookup(self.run_dir(key), key)
        if entry is not None:
            self.hits += 1
        return entry

    def put_run(self, key: str, parts: dict[str, Any], status: str, report: dict[str, Any],
                seconds: float) -> None:
        self.misses += 1
        folder = self.run_dir(key)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / ENTRY_FILE,
                          json.dumps(make_entry(key, parts, status, report, seconds), default=str))
