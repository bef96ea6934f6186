"""Benchmark size and speed per quantization mode, vs float32, on two models:
the demo digits CNN (85k params) and MobileNetV2 (alpha 0.35, 96x96x3, random weights, no
download). Each mode is a real `mobilec.compress` (formats [tflite], no evaluation); then
every .tflite is timed here side by side with LiteRT (1 thread, same random input,
interleaved rounds, median per invoke). Modes that fail on this host are listed with why.

    .venv/bin/python scripts/bench_sizes.py [--modes float16,dynamic,...] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from benchlib import build_mobilenet, ensure_demo_model, header

MODES = ["float16", "dynamic", "int8", "int8-io", "int16x8", "int4", "qat"]

RECIPE = """\
version: 1
name: {name}
model: {{path: {model}}}
data: {data}
stages:
  - quantize: {{mode: {mode}, epochs: 1}}
  - convert: {{formats: [tflite]}}
targets: [cpu]
verify: {{min_top1_agreement: 0.0, min_snr_db: -100}}
output: {{dir: {out}, report: [json]}}
"""


def build_all(name: str, model: Path, data: str, modes: list[str], work: Path
              ) -> tuple[dict[str, Path], dict[str, str]]:
    """One compress per mode; returns the .tflite per mode (float32 included) and failures."""
    from mobilec import compress
    from mobilec.errors import MobilecError

    paths: dict[str, Path] = {}
    failed: dict[str, str] = {}
    for mode in modes:
        out = work / f"{name}-{mode}"
        recipe = work / f"{name}-{mode}.yaml"
        recipe.write_text(RECIPE.format(name=name, model=model, data=data, mode=mode, out=out))
        start = time.perf_counter()
        try:
            report = compress(recipe, evaluate=False)
        except MobilecError as exc:
            failed[mode] = exc.message.splitlines()[0][:120]
            continue
        for a in report["artifacts"]:
            if a["format"] != "tflite":
                continue
            if a["status"] == "ok":
                paths.setdefault(a["quantization"], out / a["path"])
            elif a["quantization"] == mode:
                failed[mode] = f"{a['status']}: " + (a["error"] or "").splitlines()[0][:150]
        print(f"  built {name} {mode:<8} in {time.perf_counter() - start:5.1f} s", flush=True)
    return paths, failed


def latencies(paths: dict[str, Path], rounds: int, invokes: int) -> dict[str, float]:
    """Median ms per invoke of each model, measured in interleaved rounds."""
    from ai_edge_litert.interpreter import Interpreter

    runners: dict[str, Any] = {}
    rng = np.random.default_rng(0)
    for mode, path in paths.items():
        it = Interpreter(model_path=str(path), num_threads=1)
        try:
            it.allocate_tensors()
        except RuntimeError as exc:  # verified by mobilec, so this would be a mobilec bug
            print(f"  {mode}: LiteRT cannot allocate it: {str(exc).splitlines()[0]}")
            continue
        d = it.get_input_details()[0]
        if np.dtype(d["dtype"]).kind in "iu":
            info = np.iinfo(d["dtype"])
            x = rng.integers(info.min, info.max, d["shape"], dtype=d["dtype"])
        else:
            x = rng.random(d["shape"], dtype=np.float32).astype(d["dtype"])
        it.set_tensor(d["index"], x)
        for _ in range(5):
            it.invoke()
        runners[mode] = it
    samples: dict[str, list[float]] = {m: [] for m in runners}
    for _ in range(rounds):
        for mode, it in runners.items():
            for _ in range(invokes):
                t0 = time.perf_counter()
                it.invoke()
                samples[mode].append((time.perf_counter() - t0) * 1000)
    return {m: statistics.median(v) for m, v in samples.items()}


def report(name: str, paths: dict[str, Path], failed: dict[str, str], lat: dict[str, float],
           modes: list[str]) -> None:
    base_size = paths["float32"].stat().st_size
    base_lat = lat["float32"]
    print(f"## {name}")
    print("| mode | size | size ratio (float32 / mode) | LiteRT median ms | latency vs float32 |")
    print("|---|---:|---:|---:|---:|")
    for mode in ["float32", *modes]:
        if mode in failed or mode not in lat:
            print(f"| {mode} | - | - | - | failed ({failed.get(mode, 'does not run')}) |")
            continue
        size = paths[mode].stat().st_size
        print(f"| {mode} | {size / 1024:.1f} KB | {base_size / size:.2f}x | {lat[mode]:.3f} | "
              f"{lat[mode] / base_lat:.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    header("sizes and LiteRT latency per quantization mode, vs float32")
    print("latency vs float32: < 1 is faster; 1 thread, batch 1, on this host's CPU "
          "(XNNPACK), not a phone")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        mobilenet, mobilenet_data = build_mobilenet(work)
        cases = [
            ("digits-cnn", ensure_demo_model(),
             "{source: digits, calibration_samples: 200, eval_samples: 360}", 200),
            ("mobilenetv2-0.35-96", mobilenet,
             f"{{source: npz, train: {mobilenet_data}, calibration_samples: 100}}", 10),
        ]
        for name, model, data, invokes in cases:
            paths, failed = build_all(name, model, data, modes, work)
            if "float32" not in paths:
                print(f"## {name}: no float32 baseline; failures: {failed}")
                continue
            report(name, paths, failed, latencies(paths, args.rounds, invokes), modes)


if __name__ == "__main__":
    main()
