"""Benchmark mobilec's overhead over a hand-written conversion (goal <= 1.3x wall time).

Same job both ways, on the demo digits CNN: float32 + int8 .tflite from the .keras file,
int8 calibrated on the same 200 digits samples.
  plain:   scripts/plain_convert.py (TFLiteConverter twice, write two files; nothing else)
  mobilec: `mobilec compress --no-eval` with formats [tflite] (also verifies both artifacts
           against the Keras model, writes delegate manifests and report.json/md/html)
Both are fresh processes (TensorFlow import included), interleaved, ROUNDS rounds.

    .venv/bin/python scripts/bench_overhead.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from benchlib import BIN, ROOT, check, ensure_demo_model, header, median, run_measured

GOAL = 1.3

RECIPE = """\
version: 1
name: digits
model: {{path: {model}}}
data: {{source: digits, calibration_samples: 200, eval_samples: 360}}
stages:
  - quantize: {{mode: int8}}
  - convert: {{formats: [tflite]}}
targets: [cpu]
output: {{report: [json, md, html]}}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    header("overhead: mobilec compress --no-eval vs a plain TFLite converter script")
    model = ensure_demo_model()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        recipe = work / "overhead.yaml"
        recipe.write_text(RECIPE.format(model=model))
        wall: dict[str, list[float]] = {"plain": [], "mobilec": []}
        cpu: dict[str, list[float]] = {"plain": [], "mobilec": []}
        stages: list[dict[str, float]] = []
        for i in range(args.rounds):
            order = ["plain", "mobilec"] if i % 2 == 0 else ["mobilec", "plain"]
            for who in order:
                out = work / f"{who}-{i}"
                cmd = ([sys.executable, str(ROOT / "scripts" / "plain_convert.py"), str(model), str(out)]
                       if who == "plain" else
                       [str(BIN / "mobilec"), "compress", str(recipe), "--no-eval", "--out", str(out)])
                m = check(run_measured(cmd), who)
                wall[who].append(m.wall_s)
                cpu[who].append(m.cpu_s)
                if who == "mobilec":
                    report = json.loads((out / "report.json").read_text())
                    stages.append({s["name"]: s["seconds"] for s in report["stages"]})
                    assert {a["status"] for a in report["artifacts"]} == {"ok"}, report["artifacts"]
        print(f"rounds: {args.rounds}, interleaved; median of each (fresh process, TF import included)")
        for who in ("plain", "mobilec"):
            print(f"  {who:<8} wall {median(wall[who]):6.2f} s   cpu {median(cpu[who]):6.2f} s")
        names = list(stages[0])
        print("  mobilec stages (median s): " + ", ".join(
            f"{n} {median([s.get(n, 0.0) for s in stages]):.2f}" for n in names))
        ratio = median(wall["mobilec"]) / median(wall["plain"])
        cpu_ratio = median(cpu["mobilec"]) / median(cpu["plain"])
        verdict = "meets" if ratio <= GOAL else "MISSES"
        print(f"ratio mobilec / plain: wall {ratio:.2f}x ({verdict} the goal <= {GOAL}x), "
              f"cpu {cpu_ratio:.2f}x")


if __name__ == "__main__":
    main()
