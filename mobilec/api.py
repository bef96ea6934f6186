"""The Python API behind the CLI: `mobilec.compress("recipe.yaml")` returns the report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mobilec.recipe.loader import load_recipe
from mobilec.recipe.schema import Recipe
from mobilec.util.progress import Progress


def compress(recipe: str | Path | Recipe, *, overrides: list[str] | None = None,
             out: str | Path | None = None, evaluate: bool = True, quiet: bool = True,
             unsafe_deserialization: bool = False, verbose: bool = False) -> dict[str, Any]:
    from mobilec import pipeline

    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe, overrides)
    progress = Progress(quiet=quiet)
    try:
        return pipeline.run(recipe, out=out, evaluate=evaluate, progress=progress,
                            unsafe_deserialization=unsafe_deserialization, verbose=verbose)
    finally:
        progress.close()
