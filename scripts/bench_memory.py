"""Benchmark peak memory: `mobilec compress --no-eval` vs the plain converter script
(goal <= 1.3x peak RSS), on the demo digits CNN and on MobileNetV2 (alpha 0.35, 96x96,
random weights). Float32 + int8 .tflite both ways, int8 calibrated on the same 200 samples.
Peak RSS is the process's own high-water mark (wait4 ru_maxrss), fresh process each run,
interleaved, ROUNDS rounds, median.

    .venv/bin/python scripts/bench_memory.py [--rounds 2]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchlib import (
    build_mobilenet,
    ensure_demo_model,
    header,
    median,
    plain_vs_mobilec,
)

GOAL = 1.3


def measure(name: str, model: Path, calib: Path | None, data: str, work: Path, rounds: int
            ) -> tuple[float, float]:
    rss: dict[str, list[float]] = {"plain": [], "mobilec": []}
    for who, _, m in plain_vs_mobilec(name, model, calib, data, work, rounds):
        rss[who].append(m.peak_rss_mb)
    return median(rss["plain"]), median(rss["mobilec"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    header("memory: peak RSS of mobilec compress --no-eval vs a plain TFLite converter script")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        mobilenet, mobilenet_data = build_mobilenet(work)
        cases = [
            ("digits", ensure_demo_model(), None,
             "{source: digits, calibration_samples: 200, eval_samples: 360}"),
            ("mobilenetv2", mobilenet, mobilenet_data,
             f"{{source: npz, train: {mobilenet_data}, calibration_samples: 200}}"),
        ]
        print(f"rounds: {args.rounds}, interleaved; median peak RSS")
        worst = 0.0
        for name, model, calib, data in cases:
            plain, mobilec = measure(name, model, calib, data, work, args.rounds)
            ratio = mobilec / plain
            worst = max(worst, ratio)
            print(f"  {name:<12} plain {plain:7.0f} MB   mobilec {mobilec:7.0f} MB   ratio {ratio:.2f}x")
        verdict = "meets" if worst <= GOAL else "MISSES"
        print(f"worst ratio mobilec / plain: {worst:.2f}x ({verdict} the goal <= {GOAL}x)")


if __name__ == "__main__":
    main()
