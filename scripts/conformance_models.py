"""Build the conformance corpus offline: 30+ real architectures with random weights (Keras ones in
conformance_archs.py, PyTorch ones in conformance_torch.py), plus eval data in the range each
architecture expects.

    .venv/bin/python scripts/conformance_models.py --out DIR [--only NAME ...] [--quick]
                                                   [--all-copies]

Writes DIR/<model>/ (model.keras; for the representative subset marked `copies` (every model
with --all-copies) also model.h5, export/ (model.export()), tfsave/ (tf.saved_model.save),
model.onnx (tf2onnx from the export's serving signature); model.pt2 for PyTorch; one
eval-<source>.npz per source) and DIR/corpus.json: one entry per (model, source) with the path,
the inputs (name, shape, dtype) as that source sees them and the eval npz (arrays keyed by input
name; `x` for a single input; `y`: labels). Fidelity needs no trained weights, but random weights
hide broken conversions behind a near-uniform softmax, so every classifier outputs logits
(`classifier_activation=None`). A model with an output of class-score shape [batch, classes]
gets labels `y`: its own top-1 there with 10 % moved to another class (conformance_archs.
class_labels), so the source is 90 % accurate on its class output and visibly not on any
other; the entry's `labels` says which output ({output, index, classes, noise, accuracy,
outputs}; null: no class output, no `y`). A model already built in DIR (its entries.json
exists and has `labels`) is kept; one built before labels existed is rebuilt.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from conformance_archs import ARCHS, QUICK, Arch, condition, keras_labels  # noqa: E402 - path above
from conformance_torch import TORCH_ARCHS, build_torch  # noqa: E402

SOURCES = ("keras", "h5", "export", "tfsave", "onnx", "onnx-fn")
# Eval inputs per model (BatchNorm settles on them, too). 256, not 32: a float16 verification
# needs top-1 agreement >= 0.99, which 32 samples cannot resolve (one flip is 0.969), and at 32
# samples a 32 px network's last BatchNorms (1x1 maps) settle on 32 values per channel
# (densenet121 float16: 38.0 dB / 0.969 on 32, 41.6 dB / 1.000 on 256, weights rounded in Keras).
EVAL_SAMPLES = 256
OPSET = 17


# ----------------------------------------------------------------------------- saving

def _specs_keras(model: Any) -> list[dict[str, Any]]:
    return [{"name": t.name.split(":")[0], "shape": [None if d is None else int(d) for d in t.shape],
             "dtype": str(getattr(t.dtype, "name", t.dtype))} for t in model.inputs]


def _specs_savedmodel(path: Path) -> list[dict[str, Any]]:
    from mobilec.util.tfenv import import_tf

    fn = import_tf().saved_model.load(str(path)).signatures["serving_default"]
    return [{"name": name, "shape": [None if d is None else int(d) for d in spec.shape],
             "dtype": spec.dtype.name} for name, spec in sorted(fn.structured_input_signature[1].items())]


def _specs_onnx(path: Path) -> list[dict[str, Any]]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    dtypes = {1: "float32", 6: "int32", 7: "int64", 9: "bool", 10: "float16"}
    return [{"name": i.name, "dtype": dtypes.get(i.type.tensor_type.elem_type,
                                                 str(i.type.tensor_type.elem_type)),
             "shape": [d.dim_value if d.HasField("dim_value") else None
                       for d in i.type.tensor_type.shape.dim]}
            for i in graph.input if i.name not in inits]


def _to_onnx(export_dir: Path, dest: Path) -> None:
    """`python -m tf2onnx.convert --saved-model` on the model.export() SavedModel: what users run.

    (Wrapping the loaded signature in a tf.function instead leaves nested
    StatefulPartitionedCall ops that tf2onnx cannot convert, e.g. in ConvNeXt.)"""
    cmd = [sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(export_dir),
           "--output", str(dest), "--opset", str(OPSET)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0 or not dest.exists():
        lines = [t for t in proc.stderr.splitlines() if "Error" in t or "error" in t]
        raise RuntimeError(f"tf2onnx exited {proc.returncode}: {' | '.join(lines[-3:])[:400]}")


def _onnx_from_function(export_dir: Path, dest: Path) -> None:
    """tf2onnx from the loaded serving signature, as mobilec's tf2onnx-signature route does it:
    the nested XLA-marked calls (Keras 3's grouped conv on CPU) inlined before tf2onnx, and
    exact GELU's Erfc rewritten; plain from_function left both and no runtime loaded the file."""
    from mobilec.formats.onnx_repair import repair_onnx
    from mobilec.formats.onnx_tf import function_to_onnx, signature_function
    from mobilec.util.tfenv import import_tf

    tf = import_tf()
    import logging

    logging.getLogger("tf2onnx").setLevel(logging.CRITICAL)  # one line per op it cannot take
    loaded = tf.saved_model.load(str(export_dir))  # keep it alive: fn needs its variables
    function_to_onnx(signature_function(loaded, sorted_names=True), dest, OPSET)
    repair_onnx(dest)


def _ort_rejects(path: Path) -> str | None:
    """Why onnxruntime cannot load the file (tf2onnx leaves ConvNeXt's nested calls), or None."""
    import onnxruntime as ort

    try:
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - any refusal is the fact we record
        return f"{type(exc).__name__}: {str(exc).strip()[:300]}"
    return None


def stray(name: str) -> bool:
    """A graph input tf2onnx made of a captured resource ('83812:0'), not a model input."""
    head, _, tail = name.partition(":")
    return head.isdigit() and tail.isdigit()


def _npz(dest: Path, specs: list[dict[str, Any]], data: dict[str, np.ndarray],
         y: np.ndarray | None = None) -> None:
    """Arrays keyed by the source's input names (`x` for one input), matched by position, and
    the labels `y` when there are any."""
    arrays = list(data.values())
    labels = {} if y is None else {"y": y}
    specs = [s for s in specs if not stray(s["name"])]  # no data exists for them: the entry says so
    if len(specs) == 1:
        np.savez(dest, x=arrays[0], **labels)
        return
    if {s["name"] for s in specs} == set(data):
        np.savez(dest, **data, **labels)
        return
    # tf.saved_model.save names a Keras 3 model's inputs by position (inputs, inputs_1, ...):
    # map them in the model's input order; anything else is refused rather than guessed.
    def position(name: str) -> int | None:
        head, _, tail = name.rpartition("_")
        if name == "inputs":
            return 0
        return int(tail) if head == "inputs" and tail.isdigit() else None

    if not all(position(s["name"]) is not None for s in specs):
        raise ValueError(f"cannot match inputs {[s['name'] for s in specs]} to arrays {list(data)}")
    np.savez(dest, **{s["name"]: arrays[position(s["name"])] for s in specs}, **labels)


def build_one(arch: Arch, root: Path, rng_seed: int = 0,
              all_copies: bool = False) -> list[dict[str, Any]]:
    """Build and save one architecture every way; an entry per source (with `error` if it failed)."""
    from mobilec.util.tfenv import import_keras3, import_tf, import_tf_keras

    tf = import_tf()
    keras = import_keras3()
    d = root / arch.name
    d.mkdir(parents=True, exist_ok=True)
    data = arch.data(np.random.default_rng(rng_seed), EVAL_SAMPLES)
    entries: list[dict[str, Any]] = []
    # (y, labels) per source: the primary model's, unless a copy was built apart (the .h5 of
    # a Keras 3 model: tf_keras draws other random weights, so other decisions)
    labels: dict[str, Any] = {}

    def step(source: str, rel: str, save: Callable[[], list[dict[str, Any]]]) -> None:
        start = time.perf_counter()
        entry: dict[str, Any] = {"model": arch.name, "source": source, "path": f"{arch.name}/{rel}",
                                 "note": arch.note}
        try:
            specs = save()
            npz = f"{arch.name}/eval-{source}.npz"
            y, about = labels.get(source, labels["primary"]) or (None, None)
            _npz(root / npz, specs, data, y)
            entry.update(inputs=specs, eval=npz, labels=about)
            if any(stray(s["name"]) for s in specs):
                entry["stray_inputs"] = [s["name"] for s in specs if stray(s["name"])]
            if rel.endswith(".onnx"):  # kept either way: users have such files; mobilec must say so
                entry["ort_rejects"] = _ort_rejects(root / entry["path"])
        except Exception as exc:  # noqa: BLE001 - a failed save is a corpus fact, not a crash
            entry.update(path=None, error=f"{type(exc).__name__}: {str(exc).strip()[:400]}",
                         traceback=traceback.format_exc()[-2000:])
        entry["seconds"] = round(time.perf_counter() - start, 2)
        entries.append(entry)

    # Keras 3 dropped some families (RegNet): those are built with tf_keras, as their users
    # have them (.h5, SavedModels, .onnx; no .keras), and the .h5 is the primary entry.
    primary_mod = keras if arch.keras3 else import_tf_keras()
    primary_mod.utils.set_random_seed(rng_seed)
    start = time.perf_counter()
    try:
        model = arch.build(primary_mod)
        condition(model, arch, data)
        labels["primary"] = keras_labels(model, arch, data)
    except Exception as exc:  # noqa: BLE001 - this Keras cannot build it: every source says so
        return [{"model": arch.name, "source": src, "path": None, "note": arch.note,
                 "error": f"build: {type(exc).__name__}: {str(exc).strip()[:300]}"}
                for src in SOURCES if src != "onnx-fn" or arch.onnx_fn]
    build_s = time.perf_counter() - start
    if arch.keras3:
        step("keras", "model.keras", lambda: (model.save(d / "model.keras"), _specs_keras(model))[1])
    else:
        step("h5", "model.h5", lambda: (model.save(d / "model.h5"), _specs_keras(model))[1])
    def export() -> list[dict[str, Any]]:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints every captured variable
            model.export(str(d / "export"))
        return _specs_savedmodel(d / "export")

    copies = arch.copies or all_copies
    if copies:
        step("export", "export", export)
        step("tfsave", "tfsave", lambda: (tf.saved_model.save(model, str(d / "tfsave")),
                                          _specs_savedmodel(d / "tfsave"))[1])
        step("onnx", "model.onnx", lambda: (_to_onnx(d / "export", d / "model.onnx"),
                                            _specs_onnx(d / "model.onnx"))[1])
    if arch.onnx_fn:
        if not copies:  # the .onnx-fn is made from the export, which is then no entry itself
            step("export", "export", export)
            entries.pop()
        step("onnx-fn", "model-fn.onnx", lambda: (_onnx_from_function(d / "export", d / "model-fn.onnx"),
                                                  _specs_onnx(d / "model-fn.onnx"))[1])
    if copies and arch.tf_keras and arch.keras3:
        def save_h5() -> list[dict[str, Any]]:
            tfk = import_tf_keras()
            tfk.utils.set_random_seed(rng_seed)
            legacy = arch.build(tfk)
            condition(legacy, arch, data)
            labels["h5"] = keras_labels(legacy, arch, data)
            legacy.save(d / "model.h5")
            tfk.backend.clear_session()
            return _specs_keras(legacy)

        step("h5", "model.h5", save_h5)
    entries[0]["primary"] = True  # the runner gives the primary entry every run (--other-runs)
    for e in entries:
        e.update(build_seconds=round(build_s, 2), params=int(model.count_params()))
    primary_mod.backend.clear_session()
    return entries


def _labelled(done: Path) -> bool:
    """Built since the corpus has labels: every saved entry says which output (or null)."""
    return all("labels" in e for e in json.loads(done.read_text()) if not e.get("error"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--only", nargs="+", metavar="NAME", help=f"models: {', '.join(ARCHS)}")
    ap.add_argument("--quick", action="store_true", help="one model per failure class (tests)")
    ap.add_argument("--force", action="store_true", help="rebuild models already in --out")
    ap.add_argument("--all-copies", action="store_true",
                    help="save every model every way (default: the `copies` subset; hours to run)")
    args = ap.parse_args()
    known = [*ARCHS, *TORCH_ARCHS]
    names = list(args.only or (QUICK if args.quick else known))
    unknown = [n for n in names if n not in known]
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(known)}")
    from mobilec.util.tfenv import configure_environment

    configure_environment()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in names:
        done = args.out / name / "entries.json"
        if done.exists() and not args.force and _labelled(done):
            print(f"{name}: cached")
            continue
        start = time.perf_counter()
        entries = (build_torch(TORCH_ARCHS[name], args.out, samples=EVAL_SAMPLES)
                   if name in TORCH_ARCHS else build_one(ARCHS[name], args.out,
                                                        all_copies=args.all_copies))
        for e in entries:  # the model's whole build, every copy: summed into the run's wall time
            e["model_seconds"] = round(time.perf_counter() - start, 2)
        done.write_text(json.dumps(entries, indent=1))  # last: a half-built model is rebuilt
        failed = [f"{e['source']} ({e['error'][:80]})" for e in entries if e.get("error")]
        print(f"{name}: {time.perf_counter() - start:.1f}s, {entries[0].get('params')} params"
              + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    # The manifest lists every model built in DIR so far, not only this call's.
    corpus = [e for p in sorted(args.out.glob("*/entries.json")) for e in json.loads(p.read_text())]
    (args.out / "corpus.json").write_text(json.dumps(corpus, indent=1))
    print(f"{args.out / 'corpus.json'}: {len(corpus)} entries, "
          f"{sum(1 for e in corpus if e.get('error'))} failed to save")


if __name__ == "__main__":
    main()
