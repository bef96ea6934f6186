"""Every compression mode on the demo digits CNN, measured in one run.

For each mode: size and gzip ratio vs the original model's float32 artifact of
the same format, accuracy drop vs the original model, and LiteRT/onnxruntime
latency ratio vs that float32 (median, 1 thread, this host). qat and prune rows
fine-tune first (mobilec's own stages), then convert. Uses mobilec's own stages and formats, so
the figures are the ones `mobilec compress` reports.

    .venv/bin/python scripts/bench_compression.py [--model models/demo/digits.keras]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

TFLITE_MODES = ("float32", "dynamic", "float16", "int8", "int8-io", "int16x8", "int4")
ONNX_MODES = ("float32", "dynamic", "float16", "int8")


def ensure_model(path: Path) -> Path:
    if path.exists():
        return path
    import make_demo_model

    print(f"{path} is missing: training the demo model", file=sys.stderr)
    model = make_demo_model.build()
    make_demo_model.train(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    return path


def load_state(model: Path, work: Path, stages: list[dict[str, Any]] | None = None) -> Any:
    """A ModelState after load (and the given training stages), like compress builds it."""
    import yaml
    from benchlib import state_after

    recipe_path = work / f"bench-{len(list(work.glob('*.yaml')))}.yaml"
    recipe_path.write_text(yaml.safe_dump({
        "version": 1, "name": "digits", "model": {"path": str(model)},
        "data": {"source": "digits", "eval_samples": 360, "calibration_samples": 200},
        "stages": stages or [], "targets": ["cpu"]}))
    return state_after(recipe_path, work)


def measure(state: Any, fmt: str, mode: str, tag: str) -> dict[str, Any]:
    from mobilec.formats import get_format
    from mobilec.state import Artifact
    from mobilec.util.fs import gzip_size, size_of
    from mobilec.util.metrics import accuracy

    dest = state.work_dir / "bench" / f"{tag}-{mode}.{fmt}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    art = Artifact(path=dest, format=fmt, quantization=mode)
    f = get_format(fmt)
    start = time.perf_counter()
    f.build(state, art, dest)
    built = time.perf_counter() - start
    acc = accuracy(f.runner(state, art)(state.eval_x)[0], state.eval_y)
    lat = f.latency(state, art, state.eval_x[:1])["median"]
    return {"format": fmt, "mode": mode, "tag": tag, "size": size_of(dest), "gzip": gzip_size(dest),
            "accuracy": acc, "drop": state.reference_accuracy - acc, "latency": lat,
            "build_s": built}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "models/demo/digits.keras"))
    ap.add_argument("--skip-training", action="store_true", help="leave out prune and qat")
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from mobilec.util.tfenv import configure_environment

    configure_environment()
    model = ensure_model(Path(args.model).resolve())
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mobilec-bench-") as tmp:
        work = Path(tmp)
        state = load_state(model, work)
        for mode in TFLITE_MODES:
            rows.append(measure(state, "tflite", mode, "ptq"))
        for mode in ONNX_MODES:
            rows.append(measure(state, "onnx", mode, "ptq"))
        if not args.skip_training:
            for tag, stages, mode in (
                    ("qat", [{"quantize": {"mode": "qat"}}], "qat"),
                    ("prune0.5", [{"prune": {"sparsity": 0.5}}], "int8"),
                    ("prune0.8", [{"prune": {"sparsity": 0.8}}], "int8")):
                sub = work / tag
                sub.mkdir()
                trained = load_state(model, sub, stages)
                rows.append(measure(trained, "tflite", mode, tag))
    print_table(rows, state.reference_accuracy)


def print_table(rows: list[dict[str, Any]], reference: float) -> None:
    # Every ratio is against the original model's float32 artifact of the same format.
    base = {r["format"]: r for r in rows if r["mode"] == "float32" and r["tag"] == "ptq"}
    ptq_int8 = next(r for r in rows if r["format"] == "tflite" and r["mode"] == "int8"
                    and r["tag"] == "ptq")
    print(f"demo digits CNN, original accuracy {reference * 100:.2f}% on 360 eval samples")
    print(f"{'format':7} {'variant':16} {'size':>9} {'size x':>7} {'gzip x':>7} {'acc':>7} "
          f"{'drop pt':>8} {'ms':>7} {'lat x':>6}  note")
    for r in rows:
        b = base[r["format"]]
        variant = r["mode"] if r["tag"] in ("ptq", r["mode"]) else f"{r['tag']}+{r['mode']}"
        note = ""
        if r["tag"].startswith("prune") and r["mode"] == "int8":
            note = f"gzip {r['gzip'] / ptq_int8['gzip']:.2f}x of unpruned int8"
        if r["latency"] > 1.1 * b["latency"]:
            note = (note + "; " if note else "") + "slower than float32 here"
        print(f"{r['format']:7} {variant:16} {r['size']:9d} {r['size'] / b['size']:7.3f} "
              f"{r['gzip'] / b['gzip']:7.3f} {r['accuracy'] * 100:6.2f}% "
              f"{r['drop'] * 100:+8.2f} {r['latency']:7.4f} {r['latency'] / b['latency']:6.2f}  {note}")


if __name__ == "__main__":
    main()
