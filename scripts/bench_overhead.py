"""Benchmark mobilec's overhead over a hand-written conversion (goal <= 1.3x wall time).

Same job both ways: float32 + int8 .tflite from a .keras file, int8 calibrated on the
same 200 samples.
  plain:   scripts/plain_convert.py (TFLiteConverter twice, write two files; nothing else)
  mobilec: `mobilec compress --no-eval` with formats [tflite] (also verifies both artifacts
           against the Keras model, writes delegate manifests and report.json/md/html)
On the demo digits CNN (the goal) and on MobileNetV2 (alpha 0.35, 96x96, random weights),
where conversion itself dominates. Fresh processes (TensorFlow import included),
interleaved, medians.

    .venv/bin/python scripts/bench_overhead.py [--rounds 5] [--big-rounds 3]
"""

from __future__ import annotations

import argparse
import json
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
            ) -> float:
    wall: dict[str, list[float]] = {"plain": [], "mobilec": []}
    cpu: dict[str, list[float]] = {"plain": [], "mobilec": []}
    stages: list[dict[str, float]] = []
    for who, out, m in plain_vs_mobilec(name, model, calib, data, work, rounds):
        wall[who].append(m.wall_s)
        cpu[who].append(m.cpu_s)
        if who == "mobilec":
            report = json.loads((out / "report.json").read_text())
            stages.append({s["name"]: s["seconds"] for s in report["stages"]})
            assert {a["status"] for a in report["artifacts"]} == {"ok"}, report["artifacts"]
    ratio = median(wall["mobilec"]) / median(wall["plain"])
    print(f"## {name}: {rounds} rounds, interleaved; median (fresh process, TF import included)")
    for who in ("plain", "mobilec"):
        print(f"  {who:<8} wall {median(wall[who]):6.2f} s   cpu {median(cpu[who]):6.2f} s")
    print("  mobilec stages (median s): " + ", ".join(
        f"{n} {median([s.get(n, 0.0) for s in stages]):.2f}" for n in stages[0]))
    print(f"  ratio mobilec / plain: wall {ratio:.2f}x, "
          f"cpu {median(cpu['mobilec']) / median(cpu['plain']):.2f}x")
    return ratio


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=5, help="rounds on the digits CNN")
    ap.add_argument("--big-rounds", type=int, default=3, help="rounds on MobileNetV2 (0: skip)")
    args = ap.parse_args()
    header("overhead: mobilec compress --no-eval vs a plain TFLite converter script")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ratio = measure("digits", ensure_demo_model(), None,
                        "{source: digits, calibration_samples: 200, eval_samples: 360}",
                        work, args.rounds)
        if args.big_rounds:
            mobilenet, data = build_mobilenet(work)
            big = measure("mobilenetv2", mobilenet, data,
                          f"{{source: npz, train: {data}, calibration_samples: 200}}",
                          work, args.big_rounds)
            print(f"mobilenetv2 ratio: {big:.2f}x")
        verdict = "meets" if ratio <= GOAL else "MISSES"
        print(f"goal (digits CNN) mobilec / plain wall: {ratio:.2f}x ({verdict} the goal <= {GOAL}x)")


if __name__ == "__main__":
    main()
