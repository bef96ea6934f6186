"""Training stages on PyTorch and Keras, side by side (issue 25's measures), in one run.

The PyTorch digits CNN (scripts/torch_digits.py, a `.pt2`, 85k params) and the Keras
demo digits CNN (scripts/make_demo_model.py, `.keras`, 85k params) each go through
`mobilec compress` (the real pipeline: the figures are the ones report.json holds):

- int8 alone (PTQ) · prune 0.5 unstructured + int8 (block 1, and `prune-block4`: zeros in
  runs of 4 along the input channels) · quantize qat · distill width 0.5 ·
  factorize rank 0.25 + 2 epochs · factorize rank auto (max_drop 1 pt)
- PyTorch only, `qat-coreml`: quantize qat with an ios-coreml target, whose int8
  `.mlpackage` is trained by coremltools' LinearQuantizer; Core ML cannot run here, so its
  accuracy is the finalized QAT model's (the graph the file is built from, `built_from`)

and the script prints, per framework, the shipped format's gzip bytes and accuracy
drop against the loaded model, with the issue's bars:
prune+int8 gzip <= 0.70x int8 alone and <= 1 pt drop; qat >= PTQ int8 - 0.1 pt and within
0.5 pt of float32; distill width 0.5 <= 0.3x params and <= 2 pt drop (factorize has no
bar: its params ratio and drop are printed). PyTorch ships `.pte` (XNNPACK), Keras
`.tflite`; the PyTorch rows start from the `.pt2` (distill and factorize lift its graph's
ops into layers: training/torch_graph.py), except qat-coreml (a model.module factory).

    .venv/bin/python scripts/bench_torch_training.py [--rows int8 prune qat distill qat-coreml]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

ROWS = {
    "int8": [{"quantize": {"mode": "int8"}}],
    "prune": [{"prune": {"sparsity": 0.5, "schedule": "polynomial", "epochs": 4,
                         "learning_rate": 0.001}}, {"quantize": {"mode": "int8"}}],
    # the same, zeros in runs of 4 along the input channels (contiguous in the file)
    "prune-block4": [{"prune": {"sparsity": 0.5, "schedule": "polynomial", "epochs": 4,
                                "learning_rate": 0.001, "block": 4}},
                     {"quantize": {"mode": "int8"}}],
    "qat": [{"quantize": {"mode": "qat", "epochs": 2, "learning_rate": 0.0001}}],
    "distill": [{"distill": {"student": {"width": 0.5}, "epochs": 15, "learning_rate": 0.002,
                             "temperature": 4, "alpha": 0.7}}],
    "qat-coreml": [{"quantize": {"mode": "qat", "epochs": 2, "learning_rate": 0.0001}}],
    "factorize": [{"factorize": {"rank": 0.25, "epochs": 2, "learning_rate": 0.001}}],
    "factorize-auto": [{"factorize": {"rank": "auto", "max_drop": 0.01}}],
}
SHIPS = {"pytorch": ("executorch", "android-executorch"), "keras": ("tflite", "cpu")}
# rows that ship another format: (format, target, the artifact's quantization)
ROW_SHIPS = {"qat-coreml": ("coreml", "ios-coreml", "int8")}
MODULE_ROWS = ("qat-coreml",)  # LinearQuantizer wraps nn.Modules: the model.module factory


def torch_model(work: Path) -> tuple[Path, dict[str, Any]]:
    import numpy as np
    import torch
    from torch_digits import cnn_layers, digits_nchw, train

    (xt, yt), (xe, ye) = digits_nchw()
    torch.manual_seed(0)
    model = train(cnn_layers(), xt, yt, epochs=3)
    batch = torch.export.Dim("batch", min=1, max=4096)
    ep = torch.export.export(model.eval(), (torch.tensor(xe[:2]),), dynamic_shapes=({0: batch},))
    path = work / "torch_digits.pt2"
    torch.export.save(ep, str(path))
    # Core ML's QAT wraps nn.Conv/nn.Linear modules: the same weights behind a factory,
    # loaded as model.module with trust_code.
    torch.save(model.state_dict(), work / "torch_digits.pt")
    (work / "torch_digits_net.py").write_text(
        "import sys, torch\n"
        f"sys.path.insert(0, {str(ROOT / 'scripts')!r})\n"
        "from torch_digits import cnn_layers\n"
        "def build():\n"
        "    m = cnn_layers()\n"
        f"    m.load_state_dict(torch.load({str(work / 'torch_digits.pt')!r}, weights_only=True))\n"
        "    return m.eval(), (torch.zeros(2, 1, 8, 8),)\n")
    np.savez(work / "train.npz", x=xt, y=yt)
    np.savez(work / "eval.npz", x=xe, y=ye)
    return path, {"source": "npz", "train": "train.npz", "eval": "eval.npz",
                  "calibration_samples": 200}


def keras_model() -> tuple[Path, dict[str, Any]]:
    from benchlib import ensure_demo_model

    return ensure_demo_model(), {"source": "digits", "eval_samples": 360,
                                 "calibration_samples": 200}


def run_row(work: Path, framework: str, model: Path, data: dict[str, Any], row: str
            ) -> dict[str, Any]:
    import yaml

    from mobilec.api import compress

    fmt, target = SHIPS[framework]
    if row in ROW_SHIPS:
        fmt, target, _ = ROW_SHIPS[row]
    recipe = work / f"{framework}-{row}.yaml"
    spec: dict[str, Any] = {"path": str(model)}
    if framework == "pytorch" and row in MODULE_ROWS:
        spec = {"module": "torch_digits_net.py:build", "dynamic_batch": True}
    recipe.write_text(yaml.safe_dump({
        "version": 1, "name": f"{framework}-{row}", "model": spec, "data": data,
        "stages": [*ROWS[row], {"convert": {"formats": [fmt]}}], "targets": [target],
        "output": {"dir": str(work / f"out-{framework}-{row}"), "report": ["json"]}}))
    start = time.perf_counter()
    report = compress(recipe, trust_code=True)
    seconds = time.perf_counter() - start
    arts = {a["quantization"]: a for a in report["artifacts"] if a["format"] == fmt}
    shipped = arts.get(ROW_SHIPS[row][2] if row in ROW_SHIPS else
                       ROWS[row][-1]["quantize"]["mode"] if "quantize" in ROWS[row][-1] else
                       "float32")
    stage = {s["name"]: s for s in report["stages"]}
    return {"report": report, "float32": arts.get("float32"), "shipped": shipped,
            "stages": stage, "seconds": seconds, "base_accuracy": report["model"]["accuracy"],
            "params": report["model"]["params"]}


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def summarize(framework: str, res: dict[str, dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    int8, qat, distill, apple = (res.get(k) for k in ("int8", "qat", "distill", "qat-coreml"))
    prunes = {k: res[k] for k in ("prune", "prune-block4") if k in res}
    factorize = {k: res[k] for k in ("factorize", "factorize-auto") if k in res}
    base = next(iter(res.values()))["base_accuracy"]
    lines.append(f"| {framework} | float32 (loaded) | {pct(base)} | - | "
                 f"{next(iter(res.values()))['params']:,} params | |")
    if int8:
        a = int8["shipped"]
        lines.append(f"| {framework} | int8 (PTQ) | {pct(a['accuracy'])} | {pct(a['accuracy_drop'])}"
                     f" | {a['gzip_bytes']:,} B gzip | {int8['seconds']:.0f}s |")
    for prune in prunes.values():
        a = prune["shipped"]
        m = prune["stages"]["prune"]["metrics"]
        ratio = a["gzip_bytes"] / int8["shipped"]["gzip_bytes"] if int8 else None
        ok = ratio is not None and ratio <= 0.70 and a["accuracy_drop"] <= 0.01
        lines.append(f"| {framework} | prune 0.5 block {m.get('block', 1)} (counted "
                     f"{m['sparsity']}) + int8 | {pct(a['accuracy'])} | "
                     f"{pct(a['accuracy_drop'])} | {a['gzip_bytes']:,} B gzip = "
                     f"{'-' if ratio is None else f'{ratio:.3f}'}x int8 alone (bar <= 0.70x, "
                     f"<= 1 pt): {verdict(ok)} | {prune['seconds']:.0f}s |")
    if qat:
        a = qat["shipped"]
        ptq = int8["shipped"]["accuracy"] if int8 else None
        ok = ptq is not None and a["accuracy"] >= ptq - 0.001 and base - a["accuracy"] <= 0.005
        lines.append(f"| {framework} | qat | {pct(a['accuracy'])} | {pct(a['accuracy_drop'])} | "
                     f"{a['gzip_bytes']:,} B gzip; vs PTQ {pct(ptq)} (bar >= PTQ - 0.1 pt, within "
                     f"0.5 pt of float32): {verdict(ok)} | {qat['seconds']:.0f}s |")
    if apple:
        a = apple["shipped"]
        graph = next(f for f in a["built_from"] or [] if "QAT model" in f["graph"])
        acc, ptq = graph["accuracy"], int8["shipped"]["accuracy"] if int8 else None
        ok = ptq is not None and acc >= ptq - 0.001 and base - acc <= 0.005
        lines.append(f"| {framework} | qat Core ML int8 (LinearQuantizer; accuracy of the "
                     f"finalized QAT graph the .mlpackage is built from, status {a['status']}) | "
                     f"{pct(acc)} | {pct(base - acc)} | {a['size_bytes']:,} B ({a['route']}); vs "
                     f"PTQ int8 {pct(ptq)} (bar >= PTQ - 0.1 pt, within 0.5 pt of float32): "
                     f"{verdict(ok)} | {apple['seconds']:.0f}s |")
    if distill:
        m = distill["stages"]["distill"]["metrics"]
        a = distill["float32"]
        ratio = m["params_after"] / m["params_before"]
        ok = ratio <= 0.3 and a["accuracy_drop"] <= 0.02
        lines.append(f"| {framework} | distill width 0.5 (float32) | {pct(a['accuracy'])} | "
                     f"{pct(a['accuracy_drop'])} | {m['params_before']:,} -> {m['params_after']:,} "
                     f"params = {ratio:.3f}x (bar <= 0.3x, <= 2 pt): {verdict(ok)} | "
                     f"{distill['seconds']:.0f}s |")
    for row, got in factorize.items():
        stage = got["stages"]["factorize"]
        if stage["status"] != "ok":
            lines.append(f"| {framework} | {row} | - | - | {stage['status']}: "
                         f"{str(stage.get('error'))[:200]} | {got['seconds']:.0f}s |")
            continue
        m = stage["metrics"]
        a = got["float32"]
        ranks = ", ".join(f"{r['name']}:{r['rank']}/{r['full_rank']}"
                          for r in m["layers_factorized"])
        lines.append(f"| {framework} | {row.replace('-', ' ')} (float32; {ranks}) | "
                     f"{pct(a['accuracy'])} | {pct(a['accuracy_drop'])} | "
                     f"{m['params_before']:,} -> {m['params_after']:,} params = "
                     f"{m['params_after'] / m['params_before']:.3f}x, {a['gzip_bytes']:,} B gzip"
                     f" | {got['seconds']:.0f}s |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--frameworks", nargs="+", default=["pytorch", "keras"],
                    choices=["pytorch", "keras"])
    args = ap.parse_args()

    from benchlib import header

    from mobilec.util.tfenv import configure_environment

    configure_environment()
    header("Training stages, PyTorch vs Keras digits CNN (scripts/bench_torch_training.py)")
    print("| framework | row | accuracy % | drop (pt) | size / bar | compress wall |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for framework in args.frameworks:
            model, data = torch_model(work) if framework == "pytorch" else keras_model()
            res = {}
            for row in args.rows:
                if row in ROW_SHIPS and framework != "pytorch":
                    continue  # Core ML's own QAT is a PyTorch (coremltools.optimize.torch) row
                res[row] = run_row(work, framework, model, data, row)
                print(f"  {framework} {row}: {res[row]['seconds']:.0f}s", file=sys.stderr,
                      flush=True)
            for line in summarize(framework, res):
                print(line, flush=True)


if __name__ == "__main__":
    main()
