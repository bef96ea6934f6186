"""Benchmark `mobilec batch`: wall time of the same zoo with 1 worker and with 2, in one run.

The zoo is the demo digits CNN copied N times (each copy its own model and folder),
alternating dynamic and float16 quantization, converted to .tflite and .onnx
and evaluated on a small eval set. Every run starts cold (a fresh output folder,
nothing cached) and includes worker start-up (one TensorFlow import per worker,
not per model). The two configurations alternate, --repeat times, and the best
wall time of each is compared: on a shared host the load drifts between runs.
"workers busy" (worker CPU seconds / wall) shows whether the host gave the
workers the cores: ~1.0 and ~2.0 mean it did. Also prints a cached re-run.

    .venv/bin/python scripts/bench_batch.py [--models 12] [--repeat 2] [--no-eval]
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


def timed(zoo: Path, out: Path, workers: int, evaluate: bool) -> tuple[float, float, dict]:
    """Wall time, and CPU seconds the workers used (they are reaped when the batch ends)."""
    import resource

    from mobilec.batch.run import run_batch

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    report = run_batch(zoo, out=out, workers=workers, evaluate=evaluate, quiet=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", type=int, default=12, help="zoo size (default 12)")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each configuration (best kept)")
    ap.add_argument("--no-eval", action="store_true", help="convert only (no accuracy/latency)")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="mobilec-bench-batch-") as tmp:
        work = Path(tmp)
        zoo = make_zoo(work, demo_model(work), args.models)
        print(f"zoo: {args.models} copies of the demo CNN (dynamic/float16, tflite+onnx, "
              f"{'no eval' if args.no_eval else 'evaluated'}); {cores} cores on this host")
        best: dict[int, float] = {}
        # Interleaved and repeated: on a shared host the load drifts between runs; the best
        # run of each configuration is the least disturbed one.
        for rep in range(args.repeat):
            for workers in (1, 2):
                load = os.getloadavg()[0]
                out = work / f"out-{workers}-{rep}"
                wall, cpu, report = timed(zoo, out, workers, not args.no_eval)
                t = report["totals"]
                assert t["ok"] == args.models, f"expected every model ok: {t}"
                best[workers] = min(best.get(workers, wall), wall)
                # busy = worker CPU seconds / wall: ~1.0 and ~2.0 mean the workers were never
                # starved; lower means other processes on this host took the CPU
                print(f"run {rep + 1}, {workers} worker{'s' if workers > 1 else ' '}: {wall:6.1f} s "
                      f"wall, {wall / args.models:.2f} s/model, workers busy {cpu / wall:.2f} cores "
                      f"(load average before: {load:.1f})", flush=True)
        results = best
        print(f"best of {args.repeat}: 1 worker {best[1]:.1f} s, 2 workers {best[2]:.1f} s")
        print(f"speed-up with 2 workers: {results[1] / results[2]:.2f}x (goal >= 1.5x on 2 cores)")
        cached, _, report = timed(zoo, work / "out-2-0", 2, not args.no_eval)
        assert report["totals"]["cached"] == args.models
        print(f"cached re-run: {cached:.2f} s ({cached / results[2] * 100:.1f}% of the 2-worker run)")


if __name__ == "__main__":
    main()
