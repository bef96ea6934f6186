"""Plain-text pieces of `mobilec compare`'s output: values with units, changes, aligned
columns and wrapped prose that never breaks a number."""

from __future__ import annotations

import textwrap


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def value(kind: str, v: float | None) -> str:
    if v is None:
        return "-"
    if kind == "bytes":
        return _bytes(v)
    if kind == "fraction":
        return f"{v * 100:.2f}%"
    if kind == "points":
        return f"{v * 100:+.2f} pt"
    if kind == "db":
        return f"{v:.1f} dB"
    return f"{v:.3f} ms"


def _delta(base: float | None, new: float | None) -> tuple[float | None, float | None]:
    if base is None or new is None:
        return None, None
    return new - base, ((new - base) / abs(base) if base else None)


def change(kind: str, base: float | None, new: float | None) -> str:
    """The change from base to new, in the unit that reads best for the metric."""
    d, rel = _delta(base, new)
    if d is None:
        return "-" if base == new else "n/a"
    if kind == "bytes":
        pct = "" if rel is None else f" ({rel * 100:+.1f}%)"
        return f"{d:+,.0f} B{pct}"
    if kind in ("fraction", "points"):
        return f"{d * 100:+.2f} pt"
    if kind == "db":
        return f"{d:+.1f} dB"
    return f"{d:+.3f} ms" + ("" if rel is None else f" ({rel * 100:+.0f}%)")


def short_change(kind: str, base: float | None, new: float | None) -> str:
    """The change in the fewest characters: a % for sizes and latency, points or dB else."""
    d, rel = _delta(base, new)
    if d is None:
        return "-" if base == new else "n/a"
    if kind in ("bytes", "ms"):
        return "±0%" if d == 0 else ("n/a" if rel is None else f"{rel * 100:+.1f}%")
    return change(kind, base, new)


def grid(rows: list[list[str]], indent: str = "") -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return [(indent + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True))).rstrip()
            for r in rows]


def fit_names(rows: list[list[str]], width: int, min_name: int = 16) -> list[list[str]] | None:
    """Shorten the artifact column (never a number) from its left until the table fits."""
    over = max(len(x) for x in grid(rows)) - width
    name_w = max(len(r[0]) for r in rows)
    if over <= 0:
        return rows
    if name_w - over < min_name:
        return None
    keep = name_w - over
    return [[r[0] if len(r[0]) <= keep else "…" + r[0][-(keep - 1):]] + r[1:] for r in rows]


def wrap(text: str, width: int, indent: str = "") -> list[str]:
    # break_long_words=False: a path or a number longer than the line stays whole
    return textwrap.wrap(text, width=max(20, width), initial_indent=indent,
                         subsequent_indent=indent + "  ", break_long_words=False,
                         break_on_hyphens=False) or [indent]
