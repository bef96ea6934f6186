"""Where the bytes of a pruned int8 artifact go (issue 25's prune 0.5 + int8 measure:
gzip <= 0.70x int8 alone), on the PyTorch digits CNN (`.pte`) and the Keras digits CNN
(`.tflite`), each pruned by mobilec's own prune stage (the recipe of
scripts/bench_torch_training.py: sparsity 0.5, polynomial, 4 epochs, lr 1e-3; `block 1`:
zeros anywhere, `block 4`: zeros in runs of 4 along the input channels), then built int8
by mobilec's format. The last table puts block 1 and block 4 side by side: gzip vs int8
alone and accuracy drop against the loaded model (bars <= 0.70x, <= 1 pt).

Per weight tensor of the int8 file: its bytes, the fraction that is int8 0 (do the pruned
zeros survive quantization?), its order-0 byte entropy and its own gzip size. Per file:
gzip -9 (the measure), deflate without LZ77 (zlib Z_HUFFMAN_ONLY), xz -9, and the order-0
entropy floor (bytes x entropy / 8, what any coder of independent bytes needs at least).

    .venv/bin/python scripts/bench_prune_bytes.py [--frameworks pytorch keras]
"""

from __future__ import annotations

import argparse
import gzip
import lzma
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_torch_training import ROWS, keras_model, torch_model  # noqa: E402 - after the path

FORMAT = {"pytorch": "executorch", "keras": "tflite"}
PRUNED = {"prune0.5+int8": "prune", "prune0.5-block4+int8": "prune-block4"}  # tag -> row


def entropy(data: bytes) -> float:
    """Order-0 entropy of the bytes, bits per byte."""
    counts = np.bincount(np.frombuffer(data, np.uint8), minlength=256) / max(1, len(data))
    counts = counts[counts > 0]
    return float(-(counts * np.log2(counts)).sum())


def coders(data: bytes) -> dict[str, float]:
    huff = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_HUFFMAN_ONLY)
    return {"raw": len(data), "gzip": len(gzip.compress(data, compresslevel=9, mtime=0)),
            "huffman": len(huff.compress(data) + huff.flush()),
            "xz": len(lzma.compress(data, preset=9)),
            "floor": len(data) * entropy(data) / 8}


def load_state(work: Path, model: Path, data: dict[str, Any], stages: list[dict[str, Any]]
               ) -> Any:
    """A ModelState after load and `stages`, as compress builds it."""
    import yaml
    from benchlib import state_after

    # next to the model's data files: the recipe's relative paths resolve against it
    recipe_path = work.parent / f"{work.name}.yaml"
    recipe_path.write_text(yaml.safe_dump({"version": 1, "name": "bytes",
                                           "model": {"path": str(model)}, "data": data,
                                           "stages": stages, "targets": ["cpu"]}))
    return state_after(recipe_path, work)


def int8_weights(state: Any, framework: str, path: Path) -> dict[str, np.ndarray]:
    """The int8 weight tensors the file holds: for a .pte, PT2E's per-channel int8 weights
    (what XNNPACK serializes, the same quantizer and data); for a .tflite, its
    int8 weight tensors."""
    if framework == "pytorch":
        import torch

        from mobilec.formats.executorch import quantize_pt2e

        module = state.torch_module if state.torch_module is not None else \
            state.torch_program.module()
        q = quantize_pt2e(module, state.sample_inputs(1), state.data.calibration.x,
                          "per-channel")
        return {n: v.numpy() for n in dir(q) if isinstance(v := getattr(q, n, None),
                                                          torch.Tensor)
                and v.dtype == torch.int8}
    from mobilec.formats.tflite import interpreter

    interp = interpreter(path)
    interp.allocate_tensors()
    out = {}
    for d in interp.get_tensor_details():
        # weights: constants of two or more dims (dim 0 of 1 is an activation's batch)
        if d["dtype"] == np.int8 and len(d["shape"]) >= 2 and d["shape"][0] > 1:
            try:
                out[d["name"]] = np.array(interp.get_tensor(d["index"]))
            except ValueError:  # an activation: no data before invoke
                continue
    return out


def build(state: Any, framework: str, dest: Path) -> tuple[Path, float]:
    from mobilec.formats import get_format
    from mobilec.state import Artifact
    from mobilec.util.metrics import accuracy

    fmt = get_format(FORMAT[framework])
    art = Artifact(path=dest, format=FORMAT[framework], quantization="int8")
    fmt.build(state, art, dest)
    return dest, accuracy(fmt.runner(state, art)(state.eval_x)[0], state.eval_y)


def measure(framework: str, work: Path) -> dict[str, Any]:
    model, data = torch_model(work) if framework == "pytorch" else keras_model()
    rows = {}
    for tag, stages in (("int8", []), *((tag, ROWS[row][:1]) for tag, row in PRUNED.items())):
        sub = work / f"{framework}-{tag}"
        sub.mkdir()
        state = load_state(sub, model, data, stages)
        suffix = ".pte" if framework == "pytorch" else ".tflite"
        path, acc = build(state, framework, sub / f"model-int8{suffix}")
        blob = path.read_bytes()
        weights = int8_weights(state, framework, path)
        rows[tag] = {"file": coders(blob), "accuracy": acc, "reference": state.reference_accuracy,
                     # counted in what ships: int8 zeros over all int8 weights of the file
                     "zeros": float(np.mean(np.concatenate([w.ravel() for w in
                                                            weights.values()]) == 0)),
                     "tensors": {n: (w.size, float(np.mean(w == 0)), entropy(w.tobytes()),
                                     coders(w.tobytes())["gzip"]) for n, w in weights.items()},
                     "weights": coders(b"".join(w.tobytes() for w in weights.values()))}
    return rows


def report(framework: str, rows: dict[str, Any]) -> None:
    print(f"\n{framework} digits CNN, int8 {FORMAT[framework]}")
    for tag, r in rows.items():
        print(f"  {tag}: accuracy {100 * r['accuracy']:.2f}% (loaded {100 * r['reference']:.2f}%)")
        print(f"    {'weight tensor':40} {'bytes':>7} {'int8 0':>7} {'H b/B':>6} {'gzip':>7}")
        for name, (size, zeros, h, gz) in sorted(r["tensors"].items(), key=lambda kv: -kv[1][0]):
            print(f"    {name[-40:]:40} {size:>7} {zeros:>7.3f} {h:>6.3f} {gz:>7}")
        f, w = r["file"], r["weights"]
        print(f"    int8 weights {w['raw']:,} of the file's {f['raw']:,} B "
              f"({w['raw'] / f['raw']:.1%}); gzip of the rest ~{f['gzip'] - w['gzip']:,} B")
    base = rows["int8"]["file"]
    for tag in PRUNED:
        pruned = rows[tag]["file"]
        print(f"    {'file':14} {'int8 B':>9} {tag:>20} {'x':>7}")
        for coder in ("raw", "gzip", "huffman", "xz", "floor"):
            print(f"    {coder:14} {base[coder]:>9,.0f} {pruned[coder]:>20,.0f} "
                  f"{pruned[coder] / base[coder]:>7.3f}")
        # the bar against the best a byte-wise coder can do on the pruned weights: each
        # tensor at its own order-0 entropy, plus the rest of the file as gzip leaves it
        r = rows[tag]
        at_entropy = sum(size * h / 8 for size, _, h, _ in r["tensors"].values())
        rest = r["file"]["gzip"] - r["weights"]["gzip"]
        print(f"    pruned weights at their entropy {at_entropy:,.0f} B + rest {rest:,} B = "
              f"{(at_entropy + rest) / base['gzip']:.3f}x int8 gzip; deflate without LZ77 "
              f"{pruned['huffman'] / base['gzip']:.3f}x; gzip -9 "
              f"{pruned['gzip'] / base['gzip']:.3f}x (bar <= 0.70x)")


def side_by_side(results: dict[str, dict[str, Any]]) -> None:
    """block 1 and block 4 on both frameworks: the measure's two figures and its verdict."""
    print(f"\n| framework | row | int8 0 in weights | accuracy % | drop (pt) | gzip B | "
          f"x int8 alone | bar (<= 0.70x, <= 1 pt) |\n|{'---|' * 8}")
    for framework, rows in results.items():
        base = rows["int8"]
        print(f"| {framework} {FORMAT[framework]} | int8 | {base['zeros']:.4f} | "
              f"{100 * base['accuracy']:.2f} | "
              f"{100 * (base['reference'] - base['accuracy']):.2f} | {base['file']['gzip']:,} "
              f"| 1.000 | |")
        for tag in PRUNED:
            r = rows[tag]
            drop = r["reference"] - r["accuracy"]
            ratio = r["file"]["gzip"] / base["file"]["gzip"]
            ok = ratio <= 0.70 and drop <= 0.01
            print(f"| {framework} {FORMAT[framework]} | {tag} | {r['zeros']:.4f} | "
                  f"{100 * r['accuracy']:.2f} | {100 * drop:.2f} | {r['file']['gzip']:,} | "
                  f"{ratio:.3f} | {'ok' if ok else 'MISSED'} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--frameworks", nargs="+", default=["pytorch", "keras"])
    args = ap.parse_args()
    from mobilec.util.tfenv import configure_environment

    configure_environment()
    results = {}
    with tempfile.TemporaryDirectory(prefix="mobilec-bytes-") as tmp:
        for framework in args.frameworks:
            work = Path(tmp) / framework
            work.mkdir()
            results[framework] = measure(framework, work)
            report(framework, results[framework])
    side_by_side(results)


if __name__ == "__main__":
    main()
