"""factorize `rank: auto`: per-layer ranks from measured sensitivity, within the allowance.

Each candidate layer is factorized alone at 1/8, 1/4 and 1/2 of its full rank and
the trial model is measured on the eval data (accuracy drop; top-1 disagreement or
output noise without labels). Ranks are then lowered greedily, most parameters
saved per unit of sensitivity first, while the summed sensitivity stays within the
allowance (`max_drop`, else budget.max_accuracy_drop). Sensitivities add up only
roughly, so the combination is measured and backed off move by move until it fits.

The factorization itself stays in mobilec.stages.factorize: the search gets the
candidate layers' kernel shapes and a `build(ranks) -> model` callable.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from mobilec.errors import UnsupportedError
from mobilec.formats.runtime import batched
from mobilec.recipe.schema import FactorizeConfig
from mobilec.sources.pytorch import eager_runner
from mobilec.state import ModelState
from mobilec.util.metrics import accuracy, snr_db

# Below this saving an extra op (one more kernel launch on device, one more
# tensor in memory) is not worth the few parameters. factorize applies it too.
MIN_SAVING = 0.10
# rank: auto tries these fractions of each layer's full rank.
AUTO_FRACTIONS = (0.125, 0.25, 0.5)
# Output noise (relative energy) weighs this much against one unit of accuracy drop when
# ordering moves: it only separates moves whose accuracy cost is not measurable.
NOISE_WEIGHT = 0.01
DEFAULT_MAX_DROP = 0.01

Build = Callable[[dict[str, int]], Any]


def auto_ranks(state: ModelState, model: Any, layers: list[tuple[str, tuple[int, ...]]],
               build: Build, config: FactorizeConfig,
               total_params: int) -> tuple[dict[str, int], dict[str, Any]]:
    """Per-layer ranks for `rank: auto`, and what the search measured."""
    probe = _Probe(state, model)
    allowance = probe.allowance(config)
    floor = int(config.min_share * total_params)
    options: dict[str, list[dict[str, Any]]] = {}
    full: dict[str, int] = {}
    for name, shape in layers:
        fan_in, out = int(np.prod(shape[:-1])), int(shape[-1])
        full[name] = min(fan_in, out)
        for frac in AUTO_FRACTIONS:
            r = max(1, int(round(frac * full[name])))
            saved = fan_in * out - r * (fan_in + out)
            if saved < max(floor, MIN_SAVING * fan_in * out):
                continue
            options.setdefault(name, []).append({"rank": r, "params_saved": saved,
                                                 **probe.measure(build({name: r}))})
    chosen = greedy(options, allowance)
    # Sensitivities add up only roughly: measure the combination, back off until it fits.
    measured = None
    while chosen["moves"]:
        measured = probe.measure(build(dict(chosen["ranks"])))["sensitivity"]
        if measured <= allowance:
            break
        name, previous = chosen["moves"].pop()
        chosen["ranks"].pop(name)
        chosen["ranks"].update({} if previous is None else {name: previous})
        measured = None
    ranks = chosen["ranks"]
    rows = []
    for name, opts in options.items():
        pick = next((o for o in opts if o["rank"] == ranks.get(name)), None)
        rows.append({"name": name, "full_rank": full[name], "chosen_rank": ranks.get(name),
                       "sensitivity": pick["sensitivity"] if pick else None,
                       "params_saved": pick["params_saved"] if pick else 0, "measured": opts})
    search = {"metric": probe.metric, "data": probe.data_note, "allowance": allowance,
              "estimated_drop": round(sum(x["sensitivity"] or 0.0 for x in rows), 6),
              "measured_drop": measured, "layers": rows,
              "not_measured": sorted({n for n, _ in layers} - set(options))}
    return ranks, search


def greedy(options: dict[str, list[dict[str, Any]]], allowance: float) -> dict[str, Any]:
    """Lower ranks one move at a time: the most parameters saved per unit of sensitivity
    first (output noise breaks ties between moves that cost no measurable accuracy)."""
    current: dict[str, dict[str, Any]] = {}
    ranks: dict[str, int] = {}
    moves: list[tuple[str, int | None]] = []
    zero = {"params_saved": 0, "sensitivity": 0.0, "noise": 0.0}
    while True:
        spent = sum(o["sensitivity"] for o in current.values())
        best, best_key = None, 0.0
        for name, opts in options.items():
            cur = current.get(name, zero)
            for o in opts:
                gain = o["params_saved"] - cur["params_saved"]
                if gain <= 0 or spent - cur["sensitivity"] + o["sensitivity"] > allowance:
                    continue
                cost = (max(o["sensitivity"] - cur["sensitivity"], 0.0)
                        + NOISE_WEIGHT * max(o["noise"] - cur["noise"], 0.0) + 1e-9)
                if gain / cost > best_key:
                    best, best_key = (name, o), gain / cost
        if best is None:
            return {"ranks": ranks, "moves": moves}
        name, o = best
        moves.append((name, ranks.get(name)))
        current[name], ranks[name] = o, o["rank"]


class _Probe:
    """How much a trial model loses against the original, on the data the stage can use."""
    def __init__(self, state: ModelState, model: Any) -> None:
        if state.eval_x is not None:
            self.x, y = state.eval_x, state.eval_y
            self.data_note = f"eval ({len(self.x)} samples)"
        elif state.data is not None and state.data.calibration is not None:
            self.x, y = state.data.calibration.x, None
            self.data_note = f"calibration ({len(self.x)} samples)"
        else:
            raise UnsupportedError("factorize rank: auto measures each layer's sensitivity on "
                                   "data and the recipe has none", where=state.recipe.source,
                                   hint="add a data: section, or give a fixed rank (e.g. 0.5)")
        # the output the labels belong to (a detector's class scores, not its boxes)
        label = state.label_output
        self.output = label.index if label is not None and label.index is not None else 0
        self.ref = predict(model, self.x)[self.output]
        classifier = self.ref.ndim == 2 and self.ref.shape[-1] >= 2
        self.y = y if classifier and y is not None else None
        self.metric = ("accuracy drop" if self.y is not None else
                       "top-1 disagreement" if classifier else "relative output noise")
        self.base = accuracy(self.ref, self.y) if self.y is not None else None
        self.verify_snr = state.recipe.verify.min_snr_db
        self.budget = state.recipe.budget.max_accuracy_drop if state.recipe.budget else None

    def allowance(self, config: FactorizeConfig) -> float:
        if self.metric == "relative output noise":
            return 10.0 ** (-self.verify_snr / 10.0)  # verify.min_snr_db as a noise share
        for value in (config.max_drop, self.budget):
            if value is not None:
                return float(value)
        return DEFAULT_MAX_DROP

    def measure(self, trial: Any) -> dict[str, Any]:
        got = predict(trial, self.x)[self.output]
        snr = snr_db(self.ref, got)
        noise = 10.0 ** (-snr / 10.0) if math.isfinite(snr) else (0.0 if snr > 0 else 1.0)
        if self.y is not None:
            sens = max(0.0, self.base - accuracy(got, self.y))
        elif self.metric == "top-1 disagreement":
            sens = float(np.mean(got.argmax(-1) != self.ref.argmax(-1)))
        else:
            sens = noise
        return {"sensitivity": round(sens, 6), "noise": noise,
                "snr_db": round(snr, 2) if math.isfinite(snr) else None}


def predict(model: Any, x: np.ndarray) -> list[np.ndarray]:
    """Every output of a Keras model (or a PyTorch module) on x, in batches."""
    if callable(getattr(model, "named_modules", None)):  # torch.nn.Module
        return eager_runner(model)(x)

    def run(batch: np.ndarray) -> list[np.ndarray]:
        out = model(batch, training=False)
        return [np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])]

    return batched(run, x)
