"""The explore search space and the order it is walked in.

A point is (prune sparsity or none, factorize off/auto, quantization mode); each is
built once and measured in every format that can apply its mode. The walk is a
hill climb over the points' partial order of aggressiveness (more sparsity, factorize
on, a smaller mode): it starts at the unpruned model with int8 (falling back to the
safer modes when int8 misses the budget), then repeatedly tries the neighbours of
the best point within budget that are more aggressive in one dimension, the one
predicted smallest first, and moves to the first that keeps the budget. A point at
least as aggressive as one that missed the budget in every dimension is not tried:
more compression on top of a failure does not win accuracy back. When the climb
ends with candidates and minutes to spare, the rest fills the frontier: each time the
untried point furthest (in predicted size) from every point measured so far.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# Rough size of a mode's artifact against float32 (the digits CNN: int8 ~3.6x,
# int4 ~6.9x smaller); only orders candidates, never reported.
MODE_FACTOR = {"float16": 0.5, "dynamic": 0.27, "int16x8": 0.28, "int8": 0.26, "int8-io": 0.26,
               "qat": 0.26, "int4": 0.15, "palettize": 0.15}
FACTORIZE_FACTOR = 0.6  # rank auto on a CNN with a large Dense layer
START_MODE = "int8"


@dataclass(frozen=True)
class Point:
    sparsity: float | None
    factorize: str  # off | auto
    mode: str

    @property
    def label(self) -> str:
        parts = [f"prune{self.sparsity:g}"] if self.sparsity else []
        parts += ["factorize"] if self.factorize == "auto" else []
        return "+".join([*parts, self.mode])

    @property
    def transform(self) -> tuple[float | None, str]:
        """What the model is before quantization: points sharing it share one built model."""
        return self.sparsity, self.factorize


@dataclass
class Space:
    sparsities: list[float | None]  # None (no pruning) first, then ascending
    factorize: list[str]  # "off" first
    modes: list[str]  # smallest (most aggressive) first, as quantize auto lists them
    formats: list[str]
    notes: list[str] = field(default_factory=list)  # dimensions left out, and why

    def points(self) -> list[Point]:
        return [Point(s, f, m) for s in self.sparsities for f in self.factorize for m in self.modes]

    def rank(self, p: Point) -> tuple[int, int, int]:
        """Aggressiveness in each dimension (higher = more compression)."""
        return (self.sparsities.index(p.sparsity), self.factorize.index(p.factorize),
                len(self.modes) - 1 - self.modes.index(p.mode))

    def predicted(self, p: Point) -> float:
        """Predicted gzip size as a fraction of float32: the order neighbours are tried in."""
        pruned = 1.0 - 0.9 * (p.sparsity or 0.0)  # pruned zeros gzip to almost nothing
        return MODE_FACTOR.get(p.mode, 0.5) * pruned * (FACTORIZE_FACTOR if p.factorize == "auto"
                                                       else 1.0)

    def as_dict(self) -> dict[str, object]:
        return {"sparsities": [s for s in self.sparsities if s], "factorize": self.factorize,
                "modes": self.modes, "formats": self.formats, "points": len(self.points()),
                "notes": self.notes}


class Climb:
    """The walk: `next()` gives the point to build, `record(point, passed)` what it gave."""

    def __init__(self, space: Space) -> None:
        self.space = space
        self.passed: dict[Point, bool] = {}
        self.current: Point | None = None
        self.filling = False  # the climb is over: filling the frontier with what budget is left
        base = [Point(space.sparsities[0], space.factorize[0], m) for m in space.modes]
        start = next((p for p in base if p.mode == START_MODE), base[len(base) // 2])
        # int8 first; when it misses the budget, the safer modes, least compression first of them
        safer = [p for p in base if space.rank(p)[2] < space.rank(start)[2]]
        self.openers = [start, *sorted(safer, key=lambda p: -space.rank(p)[2])]

    def implied_fail(self, p: Point) -> bool:
        r = self.space.rank(p)
        return any(all(a >= b for a, b in zip(r, self.space.rank(f), strict=True))
                   for f, ok in self.passed.items() if not ok)

    def next(self) -> Point | None:
        step = None if self.filling else self._climb()
        if step is not None:
            return step
        self.filling = True
        return self._fill()

    def _climb(self) -> Point | None:
        if self.current is None:
            return next((p for p in self.openers if p not in self.passed), None)
        r = self.space.rank(self.current)
        nbrs = [p for p in self.space.points()
                if p not in self.passed and not self.implied_fail(p)
                and sum(a != b for a, b in zip(self.space.rank(p), r, strict=True)) == 1
                and all(a >= b for a, b in zip(self.space.rank(p), r, strict=True))]
        return min(nbrs, key=self.space.predicted, default=None)

    def _fill(self) -> Point | None:
        """After the climb: the untried point that fills the widest gap along the (predicted)
        size axis, so the frontier shows the whole trade-off, not only its end."""
        rest = [p for p in self.space.points() if p not in self.passed and not self.implied_fail(p)]
        if not rest or not self.passed:
            return None
        known = [math.log(self.space.predicted(q)) for q in self.passed]
        return max(rest, key=lambda p: (min(abs(math.log(self.space.predicted(p)) - k)
                                            for k in known), -self.space.predicted(p)))

    def record(self, p: Point, passed: bool) -> None:
        self.passed[p] = passed
        if passed and (self.current is None or
                       self.space.predicted(p) < self.space.predicted(self.current)):
            self.current = p
