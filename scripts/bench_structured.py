"""Structured (channel) pruning, ratio 0.5 + fine-tuning, measured side by side on the
Keras digits CNN (.tflite), the PyTorch digits CNN (.pte) and the corpus' torch_resnet_bn
trained on the digits upsampled to 32 px (.pte).

For each: parameters, MACs, float32 artifact size, accuracy and float32 host latency
(median of one sample, 1 thread, LiteRT / ExecuTorch XNNPACK; the best of 3 interleaved
measurements of each file, since this host is shared) of the pruned model against the
unpruned one. Issue 25's measure: params <= 0.55x, latency <= 0.65x, drop <= 1.5 pt.
mobilec's own stages and formats build everything (bench_compression.load_state/measure).

    .venv/bin/python scripts/bench_structured.py
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

PRUNE = {"structure": "channels", "ratio": 0.5, "epochs": 4, "learning_rate": 1e-3}
REPEATS = 3


def keras_case(work: Path) -> dict[str, Any]:
    from bench_compression import ensure_model, load_state

    from mobilec.recipe.schema import PruneConfig
    from mobilec.stages import prune

    model = ensure_model(ROOT / "models/demo/digits.keras")
    (work / "k0").mkdir()
    (work / "k1").mkdir()
    plain, pruned = load_state(model, work / "k0"), load_state(model, work / "k1")
    metrics = prune.run(pruned, PruneConfig(**PRUNE))
    return compare("Keras digits CNN", "tflite", plain, pruned, metrics)


def torch_case(name: str, module: Any, data: Any, work: Path) -> dict[str, Any]:
    import copy

    from torch_digits import module_state

    from mobilec.recipe.schema import PruneConfig
    from mobilec.stages import prune

    plain = module_state(module, data, work / name / "a")
    pruned = module_state(copy.deepcopy(module), data, work / name / "b")
    metrics = prune.run(pruned, PruneConfig(**PRUNE))
    return compare(name, "executorch", plain, pruned, metrics)


def compare(name: str, fmt: str, plain: Any, pruned: Any, metrics: dict[str, Any]
            ) -> dict[str, Any]:
    from bench_compression import measure

    from mobilec.formats import get_format
    from mobilec.state import Artifact

    rows = {"unpruned": measure(plain, fmt, "float32", "unpruned"),
            "pruned": measure(pruned, fmt, "float32", "pruned")}
    f = get_format(fmt)
    best: dict[str, float] = {}
    for _ in range(REPEATS):  # interleaved: both files see the same load on this host
        for tag, state in (("unpruned", plain), ("pruned", pruned)):
            path = state.work_dir / "bench" / f"{tag}-float32.{fmt}"
            art = Artifact(path=path, format=fmt, quantization="float32")
            lat = f.latency(state, art, state.eval_x[:1])["median"]
            best[tag] = min(best.get(tag, lat), lat)
    return {"name": name, "fmt": fmt, "metrics": metrics, "rows": rows, "latency": best,
            "reference": plain.reference_accuracy}


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from mobilec.util.tfenv import configure_environment

    configure_environment()
    import conformance_torch
    import torch
    from torch_digits import cnn_layers, digits_32px, digits_nchw, train

    results = []
    with tempfile.TemporaryDirectory(prefix="mobilec-bench-structured-") as tmp:
        work = Path(tmp)
        results.append(keras_case(work))
        data = digits_nchw()
        torch.manual_seed(0)
        results.append(torch_case("PyTorch digits CNN", train(cnn_layers(), *data[0]), data, work))
        big = digits_32px(data)
        torch.manual_seed(0)
        resnet = train(conformance_torch.resnet_bn(), *big[0], epochs=3, lr=1e-3)
        results.append(torch_case("torch_resnet_bn digits 32px", resnet, big, work))
    print_table(results)


def print_table(results: list[dict[str, Any]]) -> None:
    print(f"structured pruning {PRUNE}: pruned vs unpruned float32 artifact")
    print(f"{'model':30} {'fmt':6} {'params':>15} {'x':>6} {'MACs':>19} {'x':>6} "
          f"{'size B':>17} {'x':>6} {'acc':>15} {'drop pt':>8} {'lat ms':>15} {'x':>6}")
    for r in results:
        m, a, b = r["metrics"], r["rows"]["unpruned"], r["rows"]["pruned"]
        la, lb = r["latency"]["unpruned"], r["latency"]["pruned"]
        drop = 100 * (r["reference"] - b["accuracy"])
        print(f"{r['name']:30} {r['fmt'][:6]:6} {m['params_before']:>7}->{m['params_after']:<7} "
              f"{m['params_after'] / m['params_before']:6.3f} "
              f"{m['flops_before']:>9}->{m['flops_after']:<9} "
              f"{m['flops_after'] / m['flops_before']:6.3f} {a['size']:>8}->{b['size']:<8} "
              f"{b['size'] / a['size']:6.3f} {a['accuracy'] * 100:6.2f}->{b['accuracy'] * 100:6.2f}% "
              f"{drop:+8.2f} {la:7.4f}->{lb:<7.4f} {lb / la:6.3f}")


if __name__ == "__main__":
    main()
