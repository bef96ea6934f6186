"""Benchmark start-up: `mobilec --help` vs `python -c "import click, rich"` (goal <= 3x).

`mobilec --help` (and validate, schema, targets) must never import TensorFlow. Each
command runs RUNS times, interleaved, in fresh processes; medians and the ratio are printed.

    .venv/bin/python scripts/bench_startup.py [--runs 21]
"""

from __future__ import annotations

import argparse
import sys

from benchlib import BIN, ROOT, check, header, median, run_measured

GOAL = 3.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--runs", type=int, default=21)
    args = ap.parse_args()
    header("startup: mobilec --help vs python -c 'import click, rich'")
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "python -c 'import click, rich'": [sys.executable, "-c", "import click, rich"],
        "mobilec --help": [str(BIN / "mobilec"), "--help"],
        "mobilec validate mobilec/recipes/demo.yaml": [str(BIN / "mobilec"), "validate",
                                               str(ROOT / "mobilec" / "recipes" / "demo.yaml")],
    }
    for cmd in commands.values():  # warm the page cache and .pyc files once
        run_measured(cmd)
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.runs):
        for name, cmd in commands.items():
            times[name].append(check(run_measured(cmd), name).wall_s)
    print(f"runs: {args.runs} each, interleaved; median wall time")
    for name, values in times.items():
        print(f"  {name:<38} {median(values) * 1000:7.1f} ms")
    ratio = median(times["mobilec --help"]) / median(times["python -c 'import click, rich'"])
    verdict = "meets" if ratio <= GOAL else "MISSES"
    print(f"ratio mobilec --help / import click, rich: {ratio:.2f}x ({verdict} the goal <= {GOAL}x)")


if __name__ == "__main__":
    main()
