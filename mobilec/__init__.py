"""mobilec: make trained models fit on phones, verified and measured.

The library lives in `mobilec.api`; `mobilec.compress` is the one call most users need.
"""

from mobilec._version import __version__


def compress(recipe_path, **kwargs):
    """Run a recipe end to end and return the report dict (same as report.json)."""
    from mobilec.api import compress as run_compress

    return run_compress(recipe_path, **kwargs)


__all__ = ["__version__", "compress"]
