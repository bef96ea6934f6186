"""Benchmark `mobilec batch`: wall time of the same zoo with 1 worker and with 2, in one run.

The zoo is the demo digits CNN copied N times (each copy its own model and folder),
alternating dynamic and float16 quantization, converted to .tflite and .onnx
and evaluated on a small eval set. Both runs start cold (fresh output folders,
so nothing is cached) and include worker start-up (one TensorFlow import per
worker, not per model). Prints the two wall times, the speed-up, and a cached
re-run for scale.

    .venv/bin/python scripts/bench_batch.py [--models 8] [--no-eval]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BASE = """\
version: 1
data: {source: digits, eval_samples: 120, calibration_samples: 50}
stages:
  - quantize: {mode: dynamic}
targets: [cpu]
output: {report: [json]}
"""


def demo_model(work: Path) -> Path:
    existing = ROOT / "models" / "demo" / "digits.keras"
    if existing.exists():
        return existing
    import subprocess

    out = work / "digits.keras"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_demo_model.py"), "--out", str(out)],
                   check=True)
    return out


def make_zoo(work: Path, model: Path, n: int) -> Path:
    (work / "models").mkdir()
    lines = ["recipe: base.yaml", "models:"]
    for i in range(n):
        dest = work / "models" / f"m{i:02d}.keras"
        shutil.copyfile(model, dest)
        mode = "dynamic" if i % 2 == 0 else "float16"
        lines.append(f"  - {{path: models/{dest.name}, set: {{quantize.mode: {mode}}}}}")
    (work / "base.yaml").write_text(BASE)
    (work / "zoo.yaml").write_text("\n".join(lines) + "\n")
    return work / "zoo.yaml"


def timed(zoo: Path, out: Path, workers: int, evaluate: bool) -> tuple[float, dict]:
    from mobilec.batch import run_batch

    start = time.perf_counter()
    report = run_batch(zoo, out=out, workers=workers, evaluate=evaluate, quiet=True)
    return time.perf_counter() - start, report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", type=int, default=8, help="zoo size (default 8)")
    ap.add_argument("--no-eval", action="store_true", help="convert only (no accuracy/latency)")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="mobilec-bench-batch-") as tmp:
        work = Path(tmp)
        zoo = make_zoo(work, demo_model(work), args.models)
        print(f"zoo: {args.models} copies of the demo CNN (dynamic/float16, tflite+onnx, "
              f"{'no eval' if args.no_eval else 'evaluated'}); {cores} cores on this host")
        results = {}
        for workers in (1, 2):
            wall, report = timed(zoo, work / f"out-{workers}", workers, not args.no_eval)
            t = report["totals"]
            assert t["ok"] == args.models, f"expected every model ok: {t}"
            results[workers] = wall
            print(f"{workers} worker{'s' if workers > 1 else ' '}: {wall:6.1f} s wall "
                  f"({t['model_seconds']:.1f} s of model time, {wall / args.models:.2f} s/model)")
        print(f"speed-up with 2 workers: {results[1] / results[2]:.2f}x (goal >= 1.5x on 2 cores)")
        cached, report = timed(zoo, work / "out-2", 2, not args.no_eval)
        assert report["totals"]["cached"] == args.models
        print(f"cached re-run: {cached:.2f} s ({cached / results[2] * 100:.1f}% of the 2-worker run)")


if __name__ == "__main__":
    main()
