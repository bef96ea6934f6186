"""Build the conformance corpus offline: 30+ real architectures with random weights, each saved
the ways users save models, plus eval data in the range each architecture expects.

    .venv/bin/python scripts/conformance_models.py --out DIR [--only NAME ...] [--quick]

Writes DIR/<model>/ (model.keras, model.h5, export/ (model.export()), tfsave/
(tf.saved_model.save), model.onnx (tf2onnx from the export's serving signature), one
eval-<source>.npz per source) and DIR/corpus.json: one entry per (model, source) with the path,
the inputs (name, shape, dtype) as that source sees them and the eval npz (arrays keyed by input
name; `x` for a single input; no labels). Fidelity needs no trained weights, but random weights
hide broken conversions behind a near-uniform softmax, so every classifier outputs logits
(`classifier_activation=None`). A model already built in DIR (its entries.json exists) is kept.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

SOURCES = ("keras", "h5", "export", "tfsave", "onnx", "onnx-fn")
EVAL_SAMPLES = 32
OPSET = 17
# Means/stds of keras.applications' preprocess_input modes, applied here in numpy so that the
# eval data is in the range the network was designed for (not all of them rescale inside).
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], "float32")
TORCH_MEAN = np.array([0.485, 0.456, 0.406], "float32")
TORCH_STD = np.array([0.229, 0.224, 0.225], "float32")


@dataclass
class Arch:
    name: str
    build: Callable[[Any], Any]  # keras module (Keras 3 or tf_keras) -> model
    data: Callable[[np.random.Generator, int], dict[str, np.ndarray]]  # eval inputs by layer name
    note: str = ""  # what it exercises (failure class of issue 15, range of its inputs)
    tf_keras: bool = True  # the same architecture also builds with tf_keras (for the .h5)
    # also save `onnx-fn`: tf2onnx.convert.from_function on the loaded serving signature; for
    # ConvNeXt that .onnx has a stray graph input (a captured resource, '83812:0') - class 3
    onnx_fn: bool = False
    keras3: bool = True  # False: Keras 3 lacks it (RegNet); built with tf_keras, primary is the .h5
    extra: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------- eval data

def images(rng: np.random.Generator, n: int, size: int, channels: int = 3) -> np.ndarray:
    """Photo-like 0-255 images: smooth blobs plus texture (pure noise is no one's input)."""
    coarse = rng.uniform(0, 255, (n, 4, 4, channels)).astype("float32")
    reps = -(-size // 4)
    smooth = np.kron(coarse, np.ones((1, reps, reps, 1), "float32"))[:, :size, :size]
    return np.clip(smooth + rng.normal(0, 20, smooth.shape), 0, 255).astype("float32")


def preprocess(x: np.ndarray, mode: str) -> np.ndarray:
    if mode == "raw":  # the model rescales inside (EfficientNet, ConvNeXt, RegNet, MobileNetV3)
        return x
    if mode == "tf":
        return x / 127.5 - 1.0
    if mode == "caffe":
        return x[..., ::-1] - CAFFE_MEAN_BGR
    if mode == "torch":
        return (x / 255.0 - TORCH_MEAN) / TORCH_STD
    raise ValueError(mode)


def app(name: str, cls: str, size: int, mode: str, onnx_fn: bool = False, keras3: bool = True,
        **kw: Any) -> Arch:
    """A keras.applications architecture, random weights, 10 logits, one input named `image`."""

    def build(k: Any) -> Any:
        inp = k.Input((size, size, 3), name="image")
        return getattr(k.applications, cls)(weights=None, input_tensor=inp, classes=10,
                                            classifier_activation=None, **kw)

    def data(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        return {"image": preprocess(images(rng, n, size), mode)}

    return Arch(name, build, data, note=f"keras.applications.{cls} {size}px, inputs '{mode}'",
                onnx_fn=onnx_fn, keras3=keras3)


# ------------------------------------------------------------------- non-vision models

def text_classifier(k: Any) -> Any:
    tok = k.Input((32,), dtype="int32", name="tokens")
    h = k.layers.Embedding(1000, 32)(tok)
    h = k.layers.Conv1D(32, 3, padding="same", activation="relu")(h)
    h = k.layers.GlobalAveragePooling1D()(h)
    h = k.layers.Dense(16, activation="relu")(h)
    return k.Model(tok, k.layers.Dense(4, name="logits")(h), name="text_classifier")


def text_masked(k: Any) -> Any:
    # The mask is a second int32 input; an Embedding of it keeps the model Lambda-free (so
    # .keras loads without unsafe deserialization) and gives a second integer gather.
    tok = k.Input((32,), dtype="int32", name="tokens")
    mask = k.Input((32,), dtype="int32", name="mask")
    h = k.layers.Embedding(500, 24)(tok)
    m = k.layers.Embedding(2, 24, embeddings_initializer="ones")(mask)
    h = k.layers.Multiply()([h, m])
    h = k.layers.Bidirectional(k.layers.GRU(16))(h)
    return k.Model([tok, mask], k.layers.Dense(3, name="logits")(h), name="text_masked")


def lstm_seq(k: Any) -> Any:
    x = k.Input((20, 8), name="series")
    h = k.layers.LSTM(32, return_sequences=True)(x)
    h = k.layers.LSTM(16)(h)
    return k.Model(x, k.layers.Dense(5, name="logits")(h), name="lstm_seq")


def gru_seq(k: Any) -> Any:
    x = k.Input((20, 8), name="series")
    h = k.layers.GRU(32, return_sequences=True)(x)
    h = k.layers.GRU(16)(h)
    return k.Model(x, k.layers.Dense(5, name="logits")(h), name="gru_seq")


def audio_frames(k: Any) -> Any:
    """Log-mel frames in, three frame-wise outputs (class logits, voice activity, pitch)."""
    x = k.Input((100, 40), name="logmel")
    h = k.layers.Conv1D(32, 5, padding="same", activation="relu")(x)
    h = k.layers.BatchNormalization()(h)
    h = k.layers.Conv1D(32, 3, padding="same", activation="relu")(h)
    frames = k.layers.Conv1D(10, 1, name="frame_logits")(h)
    vad = k.layers.Conv1D(1, 1, activation="sigmoid", name="vad")(h)
    pitch = k.layers.Conv1D(1, 1, name="pitch")(h)
    return k.Model(x, [frames, vad, pitch], name="audio_frames")


def transformer_encoder(k: Any) -> Any:
    x = k.Input((24, 32), name="embeddings")
    h = x
    for _ in range(2):
        a = k.layers.MultiHeadAttention(num_heads=4, key_dim=8)(h, h)
        h = k.layers.LayerNormalization()(k.layers.Add()([h, a]))
        f = k.layers.Dense(64, activation="gelu")(h)
        f = k.layers.Dense(32)(f)
        h = k.layers.LayerNormalization()(k.layers.Add()([h, f]))
    h = k.layers.GlobalAveragePooling1D()(h)
    return k.Model(x, k.layers.Dense(6, name="logits")(h), name="transformer_encoder")


def two_input(k: Any) -> Any:
    img = k.Input((32, 32, 3), name="image")
    feat = k.Input((8,), name="features")
    h = k.layers.Rescaling(1 / 255.0)(img)
    h = k.layers.Conv2D(16, 3, strides=2, activation="relu")(h)
    h = k.layers.Conv2D(32, 3, strides=2, activation="relu")(h)
    h = k.layers.GlobalAveragePooling2D()(h)
    f = k.layers.Dense(16, activation="relu")(feat)
    h = k.layers.Concatenate()([h, f])
    return k.Model([img, feat], k.layers.Dense(3, name="logits")(h), name="two_input")


def _backbone(k: Any, img: Any) -> Any:
    h = k.layers.Rescaling(1 / 255.0)(img)
    for filters in (16, 32, 64):
        h = k.layers.Conv2D(filters, 3, strides=2, padding="same")(h)
        h = k.layers.BatchNormalization()(h)
        h = k.layers.ReLU()(h)
    return h  # 64x64 in -> 8x8 cells


def detector(k: Any) -> Any:
    """Two outputs: box regressions and class scores per cell (an SSD-like head)."""
    img = k.Input((64, 64, 3), name="image")
    h = _backbone(k, img)
    boxes = k.layers.Reshape((64, 4), name="boxes")(k.layers.Conv2D(4, 1)(h))
    scores = k.layers.Reshape((64, 3))(k.layers.Conv2D(3, 1)(h))
    scores = k.layers.Activation("sigmoid", name="scores")(scores)
    return k.Model(img, [boxes, scores], name="detector")


def yolo_head(k: Any) -> Any:
    """One output packs boxes in pixels (0-320) and sigmoid class scores: a mixed-range tensor."""
    img = k.Input((64, 64, 3), name="image")
    h = k.layers.Reshape((64, 64))(_backbone(k, img))
    boxes = k.layers.Rescaling(320.0)(k.layers.Dense(4, activation="sigmoid")(h))
    scores = k.layers.Dense(3, activation="sigmoid")(h)
    out = k.layers.Concatenate(name="detections")([boxes, scores])
    return k.Model(img, out, name="yolo_head")


def mlp_tabular(k: Any) -> Any:
    x = k.Input((20,), name="features")
    h = k.layers.Dense(64, activation="relu")(x)
    h = k.layers.BatchNormalization()(h)
    h = k.layers.Dense(32, activation="relu")(h)
    return k.Model(x, k.layers.Dense(3, name="logits")(h), name="mlp_tabular")


def keyword_spotter(k: Any) -> Any:
    """DS-CNN on MFCCs (49 frames x 10 coefficients), the classic on-device KWS network."""
    x = k.Input((49, 10, 1), name="mfcc")
    h = k.layers.Conv2D(64, (10, 4), strides=(2, 2), padding="same", activation="relu")(x)
    for _ in range(3):
        h = k.layers.DepthwiseConv2D(3, padding="same")(h)
        h = k.layers.BatchNormalization()(h)
        h = k.layers.ReLU()(h)
        h = k.layers.Conv2D(64, 1)(h)
        h = k.layers.BatchNormalization()(h)
        h = k.layers.ReLU()(h)
    h = k.layers.GlobalAveragePooling2D()(h)
    return k.Model(x, k.layers.Dense(12, name="logits")(h), name="keyword_spotter")


def _tokens(rng: np.random.Generator, n: int, vocab: int) -> np.ndarray:
    """Token ids within the vocabulary, padded with 0 after a random length (as a tokenizer)."""
    t = rng.integers(1, vocab, (n, 32)).astype("int32")
    lengths = rng.integers(8, 33, n)
    t[np.arange(32)[None, :] >= lengths[:, None]] = 0
    return t


def _normal(shape: tuple[int, ...], mean: float = 0.0, std: float = 1.0):
    return lambda rng, n: rng.normal(mean, std, (n, *shape)).astype("float32")


def _masked_data(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    tok = _tokens(rng, n, 500)
    return {"tokens": tok, "mask": (tok != 0).astype("int32")}


CUSTOM = [
    Arch("text_classifier", text_classifier, lambda r, n: {"tokens": _tokens(r, n, 1000)},
         note="int32 token ids (vocab 1000) + Embedding [class 1]"),
    Arch("text_masked", text_masked, _masked_data, note="two int32 inputs: tokens + mask [class 1]"),
    Arch("lstm_seq", lstm_seq, lambda r, n: {"series": _normal((20, 8))(r, n)}, note="stacked LSTM"),
    Arch("gru_seq", gru_seq, lambda r, n: {"series": _normal((20, 8))(r, n)}, note="stacked GRU"),
    Arch("audio_frames", audio_frames, lambda r, n: {"logmel": _normal((100, 40), -4, 2)(r, n)},
         note="Conv1D, three frame-wise outputs [class 4]"),
    Arch("transformer_encoder", transformer_encoder,
         lambda r, n: {"embeddings": _normal((24, 32))(r, n)},
         note="MultiHeadAttention, LayerNorm, GELU"),
    Arch("two_input", two_input,
         lambda r, n: {"image": images(r, n, 32), "features": _normal((8,))(r, n)},
         note="image 0-255 + feature vector"),
    Arch("detector", detector, lambda r, n: {"image": images(r, n, 64)},
         note="two outputs: boxes, sigmoid scores"),
    Arch("yolo_head", yolo_head, lambda r, n: {"image": images(r, n, 64)},
         note="one output: boxes 0-320 px concatenated with sigmoid scores [silent int8 failure]"),
    Arch("mlp_tabular", mlp_tabular, lambda r, n: {"features": _normal((20,))(r, n)},
         note="Dense + BatchNorm on a feature vector"),
    Arch("keyword_spotter", keyword_spotter, lambda r, n: {"mfcc": _normal((49, 10, 1), 0, 5)(r, n)},
         note="DS-CNN on MFCCs"),
]

VISION = [
    app("mobilenet", "MobileNet", 64, "tf"),
    app("mobilenet_v2", "MobileNetV2", 64, "tf"),
    app("mobilenet_v3_small", "MobileNetV3Small", 64, "raw"),
    app("mobilenet_v3_large", "MobileNetV3Large", 64, "raw"),
    app("efficientnet_b0", "EfficientNetB0", 64, "raw"),
    app("efficientnet_b1", "EfficientNetB1", 64, "raw"),
    app("efficientnet_v2_b0", "EfficientNetV2B0", 64, "raw"),
    app("efficientnet_v2_b1", "EfficientNetV2B1", 64, "raw"),
    app("nasnet_mobile", "NASNetMobile", 64, "tf"),
    app("densenet121", "DenseNet121", 64, "torch"),
    app("resnet50", "ResNet50", 64, "caffe"),
    app("resnet50_v2", "ResNet50V2", 64, "tf"),
    app("resnet101", "ResNet101", 64, "caffe"),
    app("inception_v3", "InceptionV3", 75, "tf"),
    app("inception_resnet_v2", "InceptionResNetV2", 75, "tf"),
    app("xception", "Xception", 72, "tf"),
    app("convnext_tiny", "ConvNeXtTiny", 64, "raw", onnx_fn=True),
    app("regnetx_002", "RegNetX002", 64, "raw", keras3=False),
    app("regnety_002", "RegNetY002", 64, "raw", keras3=False),
    app("regnetx_004", "RegNetX004", 64, "raw", keras3=False),
    app("vgg16", "VGG16", 32, "caffe"),
]

ARCHS: dict[str, Arch] = {a.name: a for a in VISION + CUSTOM}
# One model per failure class of issue 15 (and the silent one): the fast slice for tests.
QUICK = ("text_classifier", "mobilenet_v3_small", "audio_frames", "convnext_tiny", "mobilenet_v2",
         "yolo_head", "lstm_seq")


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
    from mobilec.util.tfenv import import_tf

    tf = import_tf()
    import logging

    import tf2onnx

    logging.getLogger("tf2onnx").setLevel(logging.CRITICAL)  # one line per op it cannot take
    loaded = tf.saved_model.load(str(export_dir))  # keep it alive: fn needs its variables
    fn = loaded.signatures["serving_default"]
    specs = fn.structured_input_signature[1]
    names = sorted(specs)
    sig = [tf.TensorSpec(specs[n].shape, specs[n].dtype, name=n) for n in names]
    wrapped = tf.function(lambda *xs: fn(**dict(zip(names, xs, strict=True))), input_signature=sig)
    tf2onnx.convert.from_function(wrapped, input_signature=sig, opset=OPSET, output_path=str(dest))


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


def _npz(dest: Path, specs: list[dict[str, Any]], data: dict[str, np.ndarray]) -> None:
    """Arrays keyed by the source's input names (`x` for one input), matched by position."""
    arrays = list(data.values())
    specs = [s for s in specs if not stray(s["name"])]  # no data exists for them: the entry says so
    if len(specs) == 1:
        np.savez(dest, x=arrays[0])
        return
    if {s["name"] for s in specs} == set(data):
        np.savez(dest, **data)
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
    np.savez(dest, **{s["name"]: arrays[position(s["name"])] for s in specs})


def build_one(arch: Arch, root: Path, rng_seed: int = 0) -> list[dict[str, Any]]:
    """Build and save one architecture every way; an entry per source (with `error` if it failed)."""
    from mobilec.util.tfenv import import_keras3, import_tf, import_tf_keras

    tf = import_tf()
    keras = import_keras3()
    d = root / arch.name
    d.mkdir(parents=True, exist_ok=True)
    data = arch.data(np.random.default_rng(rng_seed), EVAL_SAMPLES)
    entries: list[dict[str, Any]] = []

    def step(source: str, rel: str, save: Callable[[], list[dict[str, Any]]]) -> None:
        start = time.perf_counter()
        entry: dict[str, Any] = {"model": arch.name, "source": source, "path": f"{arch.name}/{rel}",
                                 "note": arch.note}
        try:
            specs = save()
            npz = f"{arch.name}/eval-{source}.npz"
            _npz(root / npz, specs, data)
            entry.update(inputs=specs, eval=npz)
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

    step("export", "export", export)
    step("tfsave", "tfsave", lambda: (tf.saved_model.save(model, str(d / "tfsave")),
                                      _specs_savedmodel(d / "tfsave"))[1])
    step("onnx", "model.onnx", lambda: (_to_onnx(d / "export", d / "model.onnx"),
                                        _specs_onnx(d / "model.onnx"))[1])
    if arch.onnx_fn:
        step("onnx-fn", "model-fn.onnx", lambda: (_onnx_from_function(d / "export", d / "model-fn.onnx"),
                                                  _specs_onnx(d / "model-fn.onnx"))[1])
    if arch.tf_keras and arch.keras3:
        def save_h5() -> list[dict[str, Any]]:
            tfk = import_tf_keras()
            tfk.utils.set_random_seed(rng_seed)
            legacy = arch.build(tfk)
            legacy.save(d / "model.h5")
            tfk.backend.clear_session()
            return _specs_keras(legacy)

        step("h5", "model.h5", save_h5)
    entries[0]["primary"] = True  # the runner gives the primary entry every run (--other-runs)
    for e in entries:
        e.update(build_seconds=round(build_s, 2), params=int(model.count_params()))
    primary_mod.backend.clear_session()
    return entries


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--only", nargs="+", metavar="NAME", help=f"models: {', '.join(ARCHS)}")
    ap.add_argument("--quick", action="store_true", help="one model per failure class (tests)")
    ap.add_argument("--force", action="store_true", help="rebuild models already in --out")
    args = ap.parse_args()
    names = list(args.only or (QUICK if args.quick else ARCHS))
    unknown = [n for n in names if n not in ARCHS]
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(ARCHS)}")
    from mobilec.util.tfenv import configure_environment

    configure_environment()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in names:
        done = args.out / name / "entries.json"
        if done.exists() and not args.force:
            print(f"{name}: cached")
            continue
        start = time.perf_counter()
        entries = build_one(ARCHS[name], args.out)
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
