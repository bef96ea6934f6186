"""`mobilec explore` on the PyTorch digits CNN (issue 25's measure), in one run.

The `.pt2` of scripts/torch_digits.py (85k params, built as scripts/bench_torch_training.py
builds it) is searched over prune sparsity x quantize mode x format (.tflite and .pte: the
cpu and android-executorch targets) with a 1-point budget. The script prints every candidate
and the ratio the issue asks for: the float32 `.pte` / `.tflite` gzip size over the smallest
artifact (gzip) within 1 point; bar >= 10x.

    .venv/bin/python scripts/bench_explore_torch.py [--max-candidates 12] [--max-minutes 30]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--max-candidates", type=int, default=12)
    ap.add_argument("--max-minutes", type=float, default=30)
    ap.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.8, 0.9])
    ap.add_argument("--work", type=Path, help="keep the model, recipe and explore outputs here "
                    "(default: a temporary dir); a rerun reuses explore's cache")
    args = ap.parse_args()

    import yaml
    from bench_torch_training import torch_model
    from benchlib import header

    from mobilec.explore.run import explore
    from mobilec.util.tfenv import configure_environment

    configure_environment()
    header("explore on the PyTorch digits CNN (scripts/bench_explore_torch.py)")
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        model, data = torch_model(work)
        recipe = work / "explore.yaml"
        recipe.write_text(yaml.safe_dump({
            "version": 1, "name": "torch-digits", "model": {"path": str(model)}, "data": data,
            "stages": [{"quantize": {"mode": "int8"}},
                       {"convert": {"formats": ["tflite", "executorch"]}}],
            "targets": ["cpu", "android-executorch"],
            "budget": {"max_accuracy_drop": 0.01},
            "explore": {"max_candidates": args.max_candidates, "max_minutes": args.max_minutes,
                        "sparsities": args.sparsities},
            "output": {"dir": str(work / "out"), "report": ["json"]}}))
        start = time.perf_counter()
        doc = explore(recipe)
        seconds = time.perf_counter() - start
    rows = doc["candidates"]
    print(f"search: {len(rows)} rows in {seconds:.0f} s; stopped: {doc['stopped']['reason']} ({doc['stopped']['detail']})")
    print("| candidate | size | gzip | accuracy % | drop (pt) | status |")
    print("|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: (r["gzip_bytes"] is None, r["gzip_bytes"] or 0)):
        acc = "-" if r["accuracy"] is None else f"{100 * r['accuracy']:.2f}"
        drop = "-" if r["accuracy_drop"] is None else f"{100 * r['accuracy_drop']:+.2f}"
        size = "-" if r["size_bytes"] is None else f"{r['size_bytes']:,}"
        gz = "-" if r["gzip_bytes"] is None else f"{r['gzip_bytes']:,}"
        why = f" ({r['error'][:200]})" if r.get("error") else ""
        print(f"| {r['id']} | {size} | {gz} | {acc} | {drop} | {r['status']}{why} |")
    best = next((r for r in rows if r["id"] == doc.get("best")), None)
    if best is None:
        print("no artifact within 1 point: MISSED")
        return
    for fmt in ("executorch", "tflite"):
        base = next((r for r in rows if r["status"] == "baseline" and r["format"] == fmt
                     and r["gzip_bytes"]), None)
        if base is None:
            print(f"float32 {fmt}: no baseline row")
            continue
        ratio = base["gzip_bytes"] / best["gzip_bytes"]
        print(f"float32 {fmt} gzip {base['gzip_bytes']:,} B / best {best['id']} gzip "
              f"{best['gzip_bytes']:,} B = {ratio:.1f}x (bar >= 10x within 1 pt): "
              f"{'ok' if ratio >= 10 else 'MISSED'}")


if __name__ == "__main__":
    main()
