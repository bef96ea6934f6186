"""The cost-versus-accuracy scatter every HTML page draws: the run report's size chart, the
zoo report's, and explore's two frontiers. One plot area (cost on a log x axis, accuracy on
y, grid lines at round ticks, axis titles, the budget floor, legend rows); each page draws
its own points on it. Plain SVG strings: no script, no external file.
"""

from __future__ import annotations

import html
import math
from collections.abc import Callable, Iterable

FLOOR_COLOR = "#b3261e"
GRID_COLOR = "#e6e6e6"
LEGEND_STEP = 18  # px between legend rows
MAX_TICKS = 8  # x tick labels across a 520 px plot area


class AccuracyPlot:
    """Scales and frame for points (cost, accuracy); `x`/`y` map them to SVG coordinates.

    The x range is the costs' with 30% room on either side (log scale); the y range is the
    accuracies' padded by 15% (at least half a point), inside [0, 1], never under one point
    tall, so a set of equal accuracies shows as a row of points, not a flat line.
    """

    def __init__(self, costs: Iterable[float], accuracies: Iterable[float], *, width: int = 760,
                 height: int = 380, left: int = 70, right: int = 170, top: int = 20,
                 bottom: int = 50):
        costs, accs = list(costs), list(accuracies)
        self.width, self.height, self.left, self.top = width, height, left, top
        self.pw, self.ph = width - left - right, height - top - bottom
        self.x_lo, self.x_hi = math.log10(min(costs) / 1.3), math.log10(max(costs) * 1.3)
        pad = max((max(accs) - min(accs)) * 0.15, 0.005)
        self.y_lo, self.y_hi = max(0.0, min(accs) - pad), min(1.0, max(accs) + pad)
        if self.y_hi - self.y_lo < 0.01:
            self.y_lo = max(0.0, self.y_hi - 0.01)
            self.y_hi = self.y_lo + 0.01
        # Where a page's legend starts: right of the plot area.
        self.legend_x, self.legend_y = left + self.pw + 16, top + 10

    def x(self, cost: float) -> float:
        return self.left + (math.log10(cost) - self.x_lo) / (self.x_hi - self.x_lo) * self.pw

    def y(self, accuracy: float) -> float:
        return self.top + (self.y_hi - accuracy) / (self.y_hi - self.y_lo) * self.ph

    def cost_ticks(self, sizes: bool = False) -> list[float]:
        """Round ticks inside the x range: 1-2-5 per decade; for `sizes`, 1-2-5 per decade of
        B, KB, MB and GB (1024-based), so every label is a round number of its unit. Past
        MAX_TICKS only the decades stay (then every other one), so labels never collide."""
        lo, hi = 10 ** self.x_lo, 10 ** self.x_hi
        if sizes:
            steps = [(m, m * 10 ** e * 1024 ** u) for u in range(5) for e in range(3)
                     for m in (1, 2, 5)]
        else:
            steps = [(m, m * 10 ** e) for e in range(math.floor(math.log10(lo)),
                                                     math.ceil(math.log10(hi)) + 1)
                     for m in (1, 2, 5)]
        ticks = sorted((t, m) for m, t in steps if lo <= t <= hi)
        if len(ticks) > MAX_TICKS:
            ticks = [(t, m) for t, m in ticks if m == 1]
        while len(ticks) > MAX_TICKS:
            ticks = ticks[::2]
        return [t for t, _ in ticks] if len(ticks) >= 2 else [lo, hi]

    def frame(self, *, x_title: str, x_ticks: list[float], x_label: Callable[[float], str],
              aria: str) -> list[str]:
        """The opening <svg> tag, the plot area, grid lines with tick labels, axis titles."""
        left, top, pw, ph = self.left, self.top, self.pw, self.ph
        out = [f'<svg width="{self.width}" height="{self.height}" '
               f'viewBox="0 0 {self.width} {self.height}" role="img" aria-label="{_e(aria)}">',
               f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fafafa" '
               'stroke="#bbb"/>']
        for t in nice_ticks(self.y_lo, self.y_hi):
            y = self.y(t)
            out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" '
                       f'stroke="{GRID_COLOR}"/><text x="{left - 6}" y="{y + 4:.1f}" '
                       f'font-size="11" text-anchor="end">{t * 100:.1f}%</text>')
        for t in x_ticks:
            x = self.x(t)
            out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + ph}" '
                       f'stroke="{GRID_COLOR}"/><text x="{x:.1f}" y="{top + ph + 16}" '
                       f'font-size="11" text-anchor="middle">{_e(x_label(t))}</text>')
        out.append(f'<text x="{left + pw / 2}" y="{self.height - 8}" font-size="12" '
                   f'text-anchor="middle">{_e(x_title)} (log scale)</text>'
                   f'<text x="16" y="{top + ph / 2}" font-size="12" text-anchor="middle" '
                   f'transform="rotate(-90 16 {top + ph / 2})">accuracy</text>')
        return out

    def hline(self, accuracy: float, color: str, dash: str) -> str:
        y = self.y(accuracy)
        return (f'<line x1="{self.left}" x2="{self.left + self.pw}" y1="{y:.1f}" y2="{y:.1f}" '
                f'stroke="{color}" stroke-dasharray="{dash}"/>')

    def floor(self, floor: float | None) -> list[str]:
        """The budget floor (original accuracy minus the allowed drop), when it is in view."""
        if floor is None or not self.y_lo <= floor <= self.y_hi:
            return []
        return [self.hline(floor, FLOOR_COLOR, "2 3")
                + f'<text x="{self.left + 4}" y="{self.y(floor) + 13:.1f}" font-size="11" '
                  f'fill="{FLOOR_COLOR}">budget floor</text>']

    def legend_dot(self, row: int, color: str, text: str, stroke: str = "") -> str:
        x, y = self.legend_x, self.legend_y + row * LEGEND_STEP
        return (f'<circle cx="{x + 6}" cy="{y}" r="6" fill="{color}"{stroke}/>'
                f'<text x="{x + 18}" y="{y + 4}" font-size="12">{_e(text)}</text>')

    def legend_line(self, row: int, color: str, dash: str, text: str) -> str:
        x, y = self.legend_x, self.legend_y + row * LEGEND_STEP
        return (f'<line x1="{x}" x2="{x + 14}" y1="{y}" y2="{y}" stroke="{color}" '
                f'stroke-dasharray="{dash}"/><text x="{x + 18}" y="{y + 4}" '
                f'font-size="12">{_e(text)}</text>')


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About `count` ticks at 1, 2, 2.5 or 5 times a power of ten inside [lo, hi]."""
    span = hi - lo
    if span <= 0:
        return [lo]
    raw = span / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def size_label(size: float) -> str:
    """A size tick's label: 500 B, 20 KB, 2 MB, 1 GB (1024-based, as the tick steps are)."""
    for unit, name in ((1024 ** 3, "GB"), (1024 ** 2, "MB"), (1024, "KB")):
        if size >= unit:
            return f"{size / unit:.3g} {name}"
    return f"{size:.3g} B"


def _e(value: object) -> str:
    return html.escape(str(value))
