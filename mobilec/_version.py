"""The package version, importable without importing anything else of mobilec."""

__version__ = "0.1.0"
