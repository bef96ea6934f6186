"""What `mobilec explore` writes: explore.json (checked against its schema), explore.html
and explore-best.yaml, the recipe of the smallest artifact within the budget.

explore-best.yaml is the explored recipe with the best candidate's stages (and its one
format), its paths relative to itself, an output dir of its own and the explore section
dropped: `mobilec compress
explore-best.yaml` rebuilds that artifact, so CI can commit it and run it plainly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from mobilec._version import __version__
from mobilec.explore.cache import derive
from mobilec.explore.frontier import best_of
from mobilec.explore.page import explore_html
from mobilec.recipe.schema import Recipe
from mobilec.report.explore_schema import validated
from mobilec.report.table import fmt_bytes
from mobilec.util.fs import atomic_write_text

JSON_NAME, HTML_NAME, BEST_NAME = "explore.json", "explore.html", "explore-best.yaml"


def describe(row: dict[str, Any], ref: dict[str, Any] | None = None) -> str:
    """One candidate in a progress line: id, gzip size (and x smaller), accuracy, status."""
    if row["status"] == "failed":
        return f"{row['id']} failed ({(row.get('error') or '?')[:80]})"
    gz = row.get("gzip_bytes")
    base = (ref or {}).get("float32_tflite_bytes")
    times = f", {base / gz:.1f}x smaller than float32 .tflite" if base and gz else ""
    acc, drop = row.get("accuracy"), row.get("accuracy_drop")
    acc_text = "-" if acc is None else f"{acc * 100:.2f}%"
    drop_text = "" if drop is None else f" (drop {drop * 100:+.2f} pt)"
    return (f"{row['id']} {fmt_bytes(gz)} gzip{times}, {acc_text}{drop_text} "
            f"{row['status']}{' (cached)' if row.get('cached') else ''}")


BEST_OUTPUT = "best"  # explore-best.yaml's output dir, beside it


def best_recipe_text(base: Recipe, row: dict[str, Any], out_dir: Path) -> str:
    """The best candidate's recipe, to be written in `out_dir`: its paths relative to that
    folder (a recipe's relative paths resolve against its own folder), and an output dir
    of its own, so the file can be committed and run from any checkout."""
    recipe = derive(base, {**row["overrides"], "explore": None})
    data = recipe.model_dump(mode="json", exclude_none=True, exclude_defaults=True)
    data = {"version": 1, **data, "stages": row["overrides"]["stages"]}  # stages as explored
    data.pop("explore", None)
    _relative_paths(data, out_dir)
    data["output"] = {**data.get("output", {}), "dir": BEST_OUTPUT}
    source = os.path.relpath(base.source, out_dir) if os.path.isabs(base.source) else base.source
    head = (f"# Written by `mobilec explore` from {source}: the smallest artifact within "
            f"budget.max_accuracy_drop\n# ({row['id']}: {row['gzip_bytes']} bytes gzip, "
            f"accuracy {row['accuracy']}, drop {row['accuracy_drop']}).\n"
            "# Paths are relative to this file. Rebuild it with: "
            "mobilec compress explore-best.yaml\n")
    return head + yaml.safe_dump(data, sort_keys=False)


def _relative_paths(data: dict[str, Any], folder: Path) -> None:
    """Every file the recipe names (model, data, a distill student), relative to `folder`."""
    def rel(value: Any) -> Any:
        if isinstance(value, str) and os.path.isabs(value):
            return os.path.relpath(value, folder)
        return value

    for section, keys in (("model", ("path",)), ("data", ("train", "eval"))):
        part = data.get(section)
        if isinstance(part, dict):
            for key in keys:
                if key in part:
                    part[key] = rel(part[key])
    for entry in data.get("stages") or []:
        distill = entry.get("distill") if isinstance(entry, dict) else None
        if isinstance(distill, dict) and isinstance(distill.get("student"), str):
            distill["student"] = rel(distill["student"])


def write_outputs(doc: dict[str, Any], base: Recipe, out_dir: Path) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    best = best_of(doc["candidates"])
    best_path = out_dir / BEST_NAME
    if best is not None:
        atomic_write_text(best_path, best_recipe_text(base, best, out_dir))
    elif best_path.exists():
        best_path.unlink()  # a stale best from an earlier search would mislead CI
    full = validated({"mobilec_version": __version__, **doc,
                      "best": best["id"] if best else None,
                      "best_recipe": str(best_path) if best else None})
    path = out_dir / JSON_NAME
    atomic_write_text(path, json.dumps(full, indent=2) + "\n")
    atomic_write_text(out_dir / HTML_NAME, explore_html(full))
    return {**full, "path": str(path)}
