"""`mobilec explore RECIPE`: a bounded search for the smallest artifact within the budget.

Each point of the space (mobilec.explore.space) is built with the normal pipeline
through mobilec.api: its transform (distill / factorize / prune) once per distinct
transform with `api.transform`, saved into the content cache; then `api.compress`
from that saved model with only its quantize and convert stages, every format at
once. Both steps are cached by content (mobilec.explore.cache), so candidates that
share a pruned model never prune twice, and a second run with a warm cache only
reads entries. The search stops at explore.max_candidates artifacts or
explore.max_minutes (no new run starts after it), and writes explore.json,
explore.html and explore-best.yaml (mobilec.explore.outputs).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mobilec import api
from mobilec.batch.cache import cache_key
from mobilec.ci.lockfile import run_inputs
from mobilec.errors import (
    Interrupted,
    MobilecError,
    RecipeError,
    UnsupportedError,
    stop_if_interrupted,
)
from mobilec.explore.cache import Cache, derive, parts_for
from mobilec.explore.frontier import best_of, candidate_rows, mark_frontiers, point_passes
from mobilec.explore.outputs import BEST_NAME, HTML_NAME, JSON_NAME, describe, write_outputs
from mobilec.explore.space import Climb, Point, Space
from mobilec.policy.modes import mode_for_format
from mobilec.policy.targets import TARGETS
from mobilec.recipe.loader import load_recipe
from mobilec.recipe.schema import ExploreConfig, FactorizeConfig, PruneConfig, Recipe
from mobilec.sources.detect import model_format
from mobilec.stages.quantize_auto import DEFAULT_CANDIDATES
from mobilec.util.outguard import check_no_overlap, check_out_dir
from mobilec.util.progress import Progress
from mobilec.util.publish import check_report_files

# prune and factorize fine-tune Keras and PyTorch models (a .pt2's graph is factorized
# once its ops are lifted into layers: training/torch_graph.py).
TRAINABLE = ("keras", "h5", "savedmodel", "pt2", "torch-module")
# What the save step writes a transformed model as (Keras and SavedModel sources: .h5).
SAVED_AS = {"onnx": "model.onnx", "pt2": "model.pt2"}
# The prune stage's own defaults (constant, 2 epochs, lr 1e-4) suit a gentle 0.5; explore
# goes to 0.8-0.9, where the demo CNN needs a ramp and more epochs (measured, int8 .tflite:
# 0.9 constant 2 epochs lr 1e-4 loses 35 points, polynomial 4 epochs lr 1e-3 loses 5,
# polynomial 8 epochs lr 1e-3 loses 0.3).
PRUNE_DEFAULTS = {"schedule": "polynomial", "epochs": 8, "learning_rate": 1e-3}


def build_space(recipe: Recipe, cfg: ExploreConfig, model_format: str) -> Space:
    quant = recipe.stage("quantize")
    modes = list(cfg.modes or (quant.candidates if quant is not None and quant.mode == "auto"
                               and quant.candidates else DEFAULT_CANDIDATES))
    convert = recipe.stage("convert")
    formats = list(cfg.formats or (convert.formats if convert and convert.formats else
                                   dict.fromkeys(f for t in recipe.targets
                                                 for f in TARGETS[t].formats)))
    space = Space([None, *cfg.sparsities], list(dict.fromkeys(["off", *cfg.factorize])),
                  modes, formats)
    if model_format not in TRAINABLE:
        space.sparsities, space.factorize = [None], ["off"]
        space.notes.append(f"prune and factorize fine-tune Keras or PyTorch models; a "
                           f"{model_format} model explores quantization modes and formats only")
    return space


def explore(recipe: str | Path, *, overrides: list[str] | None = None,
            out: str | Path | None = None, quiet: bool = True, progress: Progress | None = None,
            unsafe_deserialization: bool = False, trust_code: bool = False,
            verbose: bool = False) -> dict[str, Any]:
    """Run the search; returns explore.json's content (also written, with explore.html and,
    when an artifact keeps the budget, explore-best.yaml) plus its `path`."""
    started = time.monotonic()
    base = load_recipe(recipe, overrides)
    cfg = base.explore or ExploreConfig()
    budget = base.budget.max_accuracy_drop if base.budget else None
    if budget is None:
        raise RecipeError("explore looks for the smallest artifact within "
                          "budget.max_accuracy_drop, and the recipe sets none",
                          where=base.source, hint="add budget: {max_accuracy_drop: 0.01}")
    if getattr(base.model, "path", None) is None:
        raise UnsupportedError("explore keys its cache by the model file's bytes and this recipe "
                               "names no model.path", where=base.source,
                               hint="export the model to a file (.keras, .onnx, .pt2) first")
    space = build_space(base, cfg, model_format(base.model))
    out_dir = Path(out).resolve() if out else _default_out(base)
    check_out_dir(out_dir)
    check_no_overlap({"explore output": [out_dir / n for n in (JSON_NAME, HTML_NAME, BEST_NAME)],
                      "explore cache": [_cache_dir(base, cfg, out_dir)]}, run_inputs(base),
                     where=base.source, write_into={"explore output dir": out_dir})
    check_report_files(out_dir, (JSON_NAME, HTML_NAME, BEST_NAME), ("candidates", "space"))
    cache = Cache(_cache_dir(base, cfg, out_dir))
    prog = progress or Progress(quiet=quiet)
    opts = {"unsafe_deserialization": unsafe_deserialization, "trust_code": trust_code,
            "verbose": verbose}
    rows: list[dict[str, Any]] = []
    ref: dict[str, Any] = {"accuracy": None, "float32_tflite_bytes": None}
    prog.info(f"explore {base.name}: {len(space.points())} points x {', '.join(space.formats)}; "
              f"at most {cfg.max_candidates} candidates, {cfg.max_minutes:g} min; cache "
              f"{cache.root}")
    try:
        stopped = _search(base, cfg, space, cache, rows, ref, budget, opts, prog, started)
    except (Interrupted, KeyboardInterrupt):
        # Keep what finished: explore.json and the page show it, then the signal goes on.
        stopped = ("interrupted", f"interrupted after {len(rows)} rows; rerun to resume from "
                                  "the cache")
        _finish(base, space, cfg, cache, rows, ref, stopped, started, out_dir, prog)
        raise
    return _finish(base, space, cfg, cache, rows, ref, stopped, started, out_dir, prog)


def _finish(base: Recipe, space: Space, cfg: ExploreConfig, cache: Cache,
            rows: list[dict[str, Any]], ref: dict[str, Any], stopped: tuple[str, str],
            started: float, out_dir: Path, prog: Progress) -> dict[str, Any]:
    mark_frontiers(rows)
    doc = {"recipe": base.source, "name": base.name,
           "budget": base.budget.model_dump(mode="json") if base.budget else {},
           "reference_accuracy": ref["accuracy"],
           "float32_tflite_bytes": ref["float32_tflite_bytes"], "space": space.as_dict(),
           "limits": {"max_candidates": cfg.max_candidates, "max_minutes": cfg.max_minutes},
           "stopped": {"reason": stopped[0], "detail": stopped[1]},
           "seconds": round(time.monotonic() - started, 2), "cache": cache.as_dict(),
           "candidates": rows}
    result = write_outputs(doc, base, out_dir)
    best = best_of(rows)
    prog.info(f"explore: stopped ({stopped[0]}: {stopped[1]}) after "
              f"{result['seconds']:.0f} s; best: {describe(best, ref) if best else 'none'}; "
              f"wrote {result['path']}")
    return result


def _search(base: Recipe, cfg: ExploreConfig, space: Space, cache: Cache,
            rows: list[dict[str, Any]], ref: dict[str, Any], budget: float,
            opts: dict[str, Any], prog: Progress, started: float) -> tuple[str, str]:
    """The walk, until a limit or the space ends it; fills `rows`. Returns why it stopped."""
    climb = Climb(space)
    built, filling = 0, False
    stopped: tuple[str, str] | None = None
    while True:
        point = climb.next()
        elapsed = time.monotonic() - started
        if point is None:
            stopped = ("space exhausted", "every point was built or is more aggressive than "
                                          "one that missed the budget")
        elif built >= cfg.max_candidates:
            stopped = ("max_candidates", f"{built} candidates built (explore.max_candidates)")
        elif elapsed >= cfg.max_minutes * 60:
            stopped = ("max_minutes", f"{elapsed / 60:.1f} min spent (explore.max_minutes "
                                      f"{cfg.max_minutes:g})")
        if stopped is not None:
            return stopped
        if climb.filling and not filling:
            filling = True
            best = best_of(rows)
            prog.info(f"explore: climb done (best {best['id'] if best else 'none'}); "
                      "filling the frontier with the candidates left")
        formats = [f for f in space.formats if mode_for_format(point.mode, f)]
        formats = formats[:cfg.max_candidates - built]
        if not formats:
            climb.record(point, False)
            continue
        new = _run_point(base, point, formats, cache, ref, budget, opts)
        stop_if_interrupted()
        ids = {r["id"] for r in rows}
        new = [r for r in new if r["id"] not in ids]  # each float32 baseline once
        rows.extend(new)
        built += sum(1 for r in new if r["status"] != "baseline")
        climb.record(point, point_passes(new))
        best = best_of(rows)
        prog.info(f"explore [{built}/{cfg.max_candidates}] {point.label}: "
                  + "; ".join(describe(r) for r in new if r["status"] != "baseline")
                  + f" | best: {describe(best, ref) if best else 'none within budget yet'}")


def _default_out(recipe: Recipe) -> Path:
    root = recipe.output.dir or (Path.cwd() / "mobilec-out" / str(recipe.name))
    return Path(root).resolve() / "explore"


def _cache_dir(recipe: Recipe, cfg: ExploreConfig, out_dir: Path) -> Path:
    if cfg.cache_dir is None:
        return out_dir / "cache"
    p = Path(cfg.cache_dir).expanduser()
    return p if p.is_absolute() else (Path(recipe.source).resolve().parent / p).resolve()


def transform_stages(base: Recipe, point: Point) -> list[dict[str, Any]]:
    """The stages that change the model before quantization, for this point."""
    stages: list[dict[str, Any]] = []
    distill = base.stage("distill")
    if distill is not None:
        stages.append({"distill": distill.model_dump(mode="json")})
    if point.factorize == "auto":
        own = base.stage("factorize")
        cfg = (own.model_dump(mode="json", exclude={"energy"}) if own is not None
               else {"epochs": 1})
        stages.append({"factorize": {**FactorizeConfig(**{**cfg, "rank": "auto"}).model_dump(
            mode="json", exclude={"energy"})}})
    if point.sparsity:
        cfg = (base.explore.prune if base.explore and base.explore.prune else None) or \
            base.stage("prune") or PruneConfig(**PRUNE_DEFAULTS)
        # explore searches magnitude sparsity: a channels recipe's training keys carry over
        stages.append({"prune": {**cfg.model_dump(mode="json"), "structure": "unstructured",
                                 "ratio": None, "sparsity": point.sparsity}})
    return stages


def point_overrides(base: Recipe, point: Point, formats: list[str]) -> dict[str, Any]:
    """What to change in the recipe to build this point with `mobilec compress`."""
    quant = {"mode": point.mode}
    own = base.stage("quantize")
    if own is not None and own.equalize is not False and point.mode != "auto":
        quant["equalize"] = own.equalize
    return {"stages": [*transform_stages(base, point), {"quantize": quant},
                       {"convert": {"formats": formats}}]}


def _run_point(base: Recipe, point: Point, formats: list[str], cache: Cache,
               ref: dict[str, Any], budget: float, opts: dict[str, Any]) -> list[dict[str, Any]]:
    overrides = point_overrides(base, point, formats)
    stages = transform_stages(base, point)
    model, error = Path(base.model.path), None
    if stages:
        model, error, source_acc = _transformed(base, stages, cache, opts)
        if ref["accuracy"] is None:  # the unpruned run failed: the transform measured it too
            ref["accuracy"] = source_acc
    report: dict[str, Any] = {"artifacts": []}
    cached, seconds, run_dir = False, 0.0, None
    if error is None:
        run_recipe = derive(base, {"stages": overrides["stages"][len(stages):],
                                   "model.path": str(model), "explore": None})
        parts = parts_for(run_recipe, model, "run")
        key = cache_key(parts)
        run_dir = cache.run_dir(key)
        entry = cache.get_run(key)
        if entry is not None:
            report, cached = entry["report"], True
            error = report.get("error")
        else:
            t0 = time.monotonic()
            try:
                report = api.compress(derive(run_recipe, {"output.dir": str(run_dir),
                                                          "output.report": ["json"]}), **opts)
            except MobilecError as exc:
                error = exc.message
                report = {"artifacts": [], "error": error}
            seconds = time.monotonic() - t0
            cache.put_run(key, parts, "failed" if error else "ok", report, seconds)
    if not stages and error is None:
        ref["accuracy"] = (report.get("model") or {}).get("accuracy")
        if ref["accuracy"] is None:
            raise UnsupportedError("explore ranks candidates by accuracy and the recipe's eval "
                                   "data has no labels", where=base.source,
                                   hint="give data.eval labels (npz y), or use the digits source")
    return candidate_rows(point, overrides, formats, report, run_dir, ref, budget, error=error,
                          cached=cached, seconds=seconds, baseline=not stages)


def _transformed(base: Recipe, stages: list[dict[str, Any]], cache: Cache,
                 opts: dict[str, Any]) -> tuple[Path, str | None, float | None]:
    """The saved model for these transform stages (from the cache, or built once now), the
    error that stopped it, and the source model's accuracy as the transform measured it."""
    recipe = derive(base, {"stages": stages, "explore": None})
    parts = parts_for(recipe, Path(base.model.path), "transform")
    key = cache_key(parts)
    entry = cache.get_transform(key)
    if entry is None:
        fmt = model_format(base.model)
        dest = cache.transform_dir(key) / SAVED_AS.get(fmt, "model.h5")
        try:
            done = api.transform(recipe, dest, **opts)
            entry = {"path": done["path"], "error": None, "stages": done["stages"],
                     "save": done["save"]}
        except MobilecError as exc:
            entry = {"path": None, "error": f"transform failed: {exc.message}"}
        cache.put_transform(key, parts, entry)
    source_acc = (entry.get("save") or {}).get("reference_accuracy")
    return Path(entry["path"] or "."), entry["error"], source_acc
