"""mobilec: make trained models fit on phones, verified and measured."""

__version__ = "0.1.0"


def compress(recipe_path, **kwargs):
    """Run a recipe end to end and return the report dict (same as report.json)."""
    from mobilec.api import compress as _compress

    return _compress(recipe_path, **kwargs)


__all__ = ["__version__", "compress"]
