"""mobilec explore: the search order, the frontiers, and a reduced search end to end with the
content cache (a second run reuses every transformed model and every candidate run)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import run_cli, write_recipe

from mobilec.explore.frontier import best_of, mark_frontiers
from mobilec.explore.page import explore_html
from mobilec.explore.space import Climb, Point, Space
from mobilec.report.explore_schema import ExploreReport


def space() -> Space:
    return Space([None, 0.5, 0.8, 0.9], ["off", "auto"], ["int4", "int8", "int16x8", "float16"],
                 ["tflite", "onnx"])


def walk(sp: Space, passes: Any, limit: int = 40, fill: bool = False) -> list[Point]:
    climb, seen = Climb(sp), []
    while (p := climb.next()) is not None and len(seen) < limit and (fill or not climb.filling):
        seen.append(p)
        climb.record(p, passes(p))
    return seen


def test_the_climb_starts_at_int8_and_never_builds_on_a_failure() -> None:
    sp = space()
    # a model that keeps accuracy up to sparsity 0.8, without factorization, at int8 or safer
    ok = {0.9: False, 0.8: True, 0.5: True, None: True}

    def passes(p: Point) -> bool:
        return ok[p.sparsity] and p.factorize == "off" and p.mode != "int4"

    seen = walk(sp, passes)
    assert seen[0] == Point(None, "off", "int8")
    assert seen[1] == Point(0.9, "off", "int8")  # the biggest predicted saving first
    assert Point(0.8, "off", "int8") in seen
    failed = [p for p in seen if not passes(p)]
    for p in seen:  # nothing more aggressive than a failure in every dimension was tried
        assert not any(f != p and all(a >= b for a, b in zip(sp.rank(p), sp.rank(f), strict=True))
                       for f in failed if seen.index(f) < seen.index(p))
    assert len(seen) < len(sp.points()) / 2
    # then the frontier is filled, never with a point implied to fail, until nothing is left
    filled = walk(sp, passes, fill=True)
    assert filled[:len(seen)] == seen and len(filled) > len(seen)
    assert len(set(filled)) == len(filled) and Point(0.9, "auto", "int4") not in filled


def test_when_int8_misses_the_budget_the_safer_modes_come_next() -> None:
    seen = walk(space(), lambda p: p.mode == "float16" and p.sparsity is None
                and p.factorize == "off")
    assert [p.mode for p in seen[:3]] == ["int8", "int16x8", "float16"]


def row(cid: str, gz: int | None, acc: float | None, lat: float | None, status: str = "ok"
        ) -> dict[str, Any]:
    return {"id": cid, "overrides": {"stages": []}, "sparsity": None, "factorize": "off",
            "format": "tflite", "quantization": "int8", "size_bytes": gz, "gzip_bytes": gz,
            "accuracy": acc, "accuracy_drop": None, "latency_ms": lat, "status": status,
            "path": None, "cached": False, "seconds": 0.0, "error": None}


def test_pareto_flags_and_the_best_within_budget() -> None:
    rows = [row("a", 100, 0.99, 1.0, "baseline"), row("b", 50, 0.99, 2.0),
            row("c", 60, 0.98, 0.5), row("d", 10, 0.5, 3.0, "over-budget"),
            row("e", None, None, None, "failed")]
    mark_frontiers(rows)
    assert [r["id"] for r in rows if r["pareto_size"]] == ["b", "d"]  # a and c: b beats them
    assert [r["id"] for r in rows if r["pareto_latency"]] == ["a", "c"]
    assert best_of(rows)["id"] == "b"
    doc = {"name": "t", "candidates": rows, "best": "b", "budget": {"max_accuracy_drop": 0.01},
           "reference_accuracy": 0.99, "float32_tflite_bytes": 400, "best_recipe": "x.yaml",
           "stopped": {"reason": "space exhausted", "detail": "-"}, "seconds": 1.0,
           "cache": {"hits": 0, "misses": 1}}
    page = explore_html(doc)
    assert page.count("<svg") == 2 and "<script" not in page and "http" not in page.replace(
        'xmlns="http://www.w3.org/2000/svg"', "")
    assert "8.0x smaller" in page and "#c4c4c4" in page  # 400 / 50; dominated points grey


@pytest.mark.slow
def test_explore_end_to_end_with_a_warm_cache(demo_keras: Path, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, demo_keras, name="ex", budget={"max_accuracy_drop": 0.01},
                          explore={"max_candidates": 4, "sparsities": [0.8],
                                   "factorize": ["off"], "modes": ["int4", "int8", "float16"],
                                   "cache_dir": str(tmp_path / "cache")})
    from mobilec.explore.run import explore

    t0 = time.monotonic()
    first = explore(recipe, out=tmp_path / "ex")
    cold = time.monotonic() - t0
    doc = json.loads((tmp_path / "ex" / "explore.json").read_text())
    ExploreReport.model_validate(doc)
    built = [c for c in doc["candidates"] if c["status"] != "baseline"]
    assert 1 <= len(built) <= 4 and doc["stopped"]["reason"] in ("max_candidates",
                                                                 "space exhausted")
    assert {c["id"] for c in doc["candidates"] if c["status"] == "baseline"} == {
        "float32/tflite", "float32/onnx"}
    assert built[0]["id"] == "int8/tflite" and doc["float32_tflite_bytes"] > 0  # the climb's start
    for c in built:
        assert c["gzip_bytes"] and c["accuracy"] is not None and c["latency_ms"] is not None
        assert c["accuracy_drop"] == pytest.approx(doc["reference_accuracy"] - c["accuracy"],
                                                   abs=1e-6)
    best = next(c for c in doc["candidates"] if c["id"] == doc["best"])
    assert best["status"] == "ok" and best["pareto_size"]
    assert (tmp_path / "ex" / "explore.html").read_text().count("<svg") == 2
    # one pruned model for every prune0.8 candidate
    assert len(list((tmp_path / "cache" / "models").iterdir())) == 1

    t0 = time.monotonic()
    second = explore(recipe, out=tmp_path / "ex")
    warm = time.monotonic() - t0
    assert second["cache"]["misses"] == 0 and second["cache"]["hits"] >= 2
    assert all(c["cached"] for c in second["candidates"])
    strip = ("seconds", "cache", "path")
    assert [{k: v for k, v in c.items() if k not in ("cached", "seconds")}
            for c in second["candidates"]] == [{k: v for k, v in c.items() if k not in (
                "cached", "seconds")} for c in first["candidates"]]
    assert {k: v for k, v in second.items() if k not in (*strip, "candidates")} == {
        k: v for k, v in first.items() if k not in (*strip, "candidates")}
    assert warm <= 0.10 * cold, (warm, cold)

    # explore-best.yaml is a plain recipe: mobilec validate takes it
    best_yaml = tmp_path / "ex" / "explore-best.yaml"
    res = run_cli("validate", str(best_yaml), "--json")
    assert res.returncode == 0, res.stderr
    print(f"\nexplore: cold {cold:.1f}s, warm {warm:.2f}s; best {doc['best']} "
          f"{best['gzip_bytes']} B gzip, accuracy {best['accuracy']}")


def test_schema_command_prints_the_explore_schema() -> None:
    res = run_cli("schema", "--explore")
    assert res.returncode == 0
    assert "Candidate" in json.loads(res.stdout)["$defs"]
