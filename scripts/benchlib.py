"""Shared by scripts/bench_*.py: the machine line, measured subprocesses, the models.

Each benchmark runs the things it compares side by side, interleaved, in one process
tree, and prints medians and ratios; BENCHMARKS.md quotes what they printed.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DEMO_MODEL = ROOT / "models" / "demo" / "digits.keras"

sys.path.insert(0, str(ROOT))


# The compress run the overhead and memory benchmarks compare with a plain converter script.
INT8_TFLITE_RECIPE = """\
version: 1
name: {name}
model: {{path: {model}}}
data: {data}
stages:
  - quantize: {{mode: int8}}
  - convert: {{formats: [tflite]}}
targets: [cpu]
output: {{report: [json, md, html]}}
"""


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(next(ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines()
                      if ln.startswith("MemTotal")))
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    load = f", load avg {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    versions = ", ".join(f"{p} {_version(p)}" for p in ("tensorflow", "ai-edge-litert", "onnxruntime"))
    return (f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} cores{mem}{load}; "
            f"Python {platform.python_version()}, {versions}")


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "-"


def header(title: str) -> None:
    print(f"# {title}")
    print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"machine: {machine()}")


@dataclass
class Measured:
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    returncode: int
    stderr: str


def run_measured(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
                 ) -> Measured:
    """Run a command; wall time, CPU time and peak RSS of that very process (wait4)."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=full_env,
                            cwd=cwd)
    assert proc.stderr is not None
    err = proc.stderr.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    # ru_maxrss is KiB on Linux, bytes on macOS.
    rss = usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    return Measured(wall, usage.ru_utime + usage.ru_stime, rss, proc.returncode, err)


def plain_vs_mobilec(name: str, model: Path, calib: Path | None, data: str, work: Path,
                     rounds: int) -> Iterator[tuple[str, Path, Measured]]:
    """The same float32 + int8 .tflite job done by scripts/plain_convert.py and by
    `mobilec compress --no-eval`, each in a fresh process, in alternating order round by
    round (neither always runs on a warm page cache); yields (who, out dir, measurement)."""
    recipe = work / f"{name}.yaml"
    recipe.write_text(INT8_TFLITE_RECIPE.format(name=name, model=model, data=data))
    for i in range(rounds):
        for who in (["plain", "mobilec"] if i % 2 == 0 else ["mobilec", "plain"]):
            out = work / f"{name}-{who}-{i}"
            if who == "plain":
                cmd = [sys.executable, str(ROOT / "scripts" / "plain_convert.py"), str(model), str(out)]
                cmd += ["--calibration", str(calib)] if calib else []
            else:
                cmd = [str(BIN / "mobilec"), "compress", str(recipe), "--no-eval", "--out", str(out)]
            yield who, out, check(run_measured(cmd), f"{name} {who}")


def check(m: Measured, what: str) -> Measured:
    if m.returncode not in (0, 1):
        sys.exit(f"{what} failed (exit {m.returncode}):\n{m.stderr[-3000:]}")
    return m


def median(values: list[float]) -> float:
    return statistics.median(values)


def ensure_demo_model() -> Path:
    if not DEMO_MODEL.exists():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "make_demo_model.py"),
                        "--out", str(DEMO_MODEL)], check=True)
    return DEMO_MODEL


def build_mobilenet(directory: Path) -> tuple[Path, Path]:
    """MobileNetV2 (alpha 0.35, 96x96x3, 10 classes) with random weights (weights=None: no
    download), saved as .keras; plus 256 random images with labels as npz for calibration."""
    import numpy as np

    from mobilec.util.nativeio import native_quiet
    from mobilec.util.tfenv import import_keras3

    with native_quiet():  # TensorFlow's C++ start-up chatter on fd 2
        keras = import_keras3()
        keras.utils.set_random_seed(0)
        model = keras.applications.MobileNetV2(input_shape=(96, 96, 3), alpha=0.35, weights=None,
                                               classes=10)
    path = directory / "mobilenetv2-0.35-96.keras"
    model.save(path)
    rng = np.random.default_rng(0)
    data = directory / "mobilenet-data.npz"
    np.savez(data, x=rng.random((256, 96, 96, 3), dtype=np.float32),
             y=rng.integers(0, 10, 256))
    return path, data


def state_after(recipe_path: Path, work: Path) -> Any:
    """A ModelState after the load stage and the recipe's stages, as compress builds it
    (benchmarks that measure a model between stages, not a whole compress run)."""
    from mobilec.recipe.loader import load_recipe
    from mobilec.stages import get_stage
    from mobilec.state import ModelState

    recipe = load_recipe(recipe_path)
    state = ModelState(recipe=recipe, out_dir=work / "out", work_dir=work)
    get_stage("load")(state, None)
    for entry in recipe.stages:
        get_stage(entry.name)(state, entry.config)
    return state
