"""The conformance corpus' Keras architectures and their eval data (inputs in the range each
architecture expects), built offline with random weights. Saving lives in conformance_models.py,
the PyTorch architectures in conformance_torch.py.

Every classifier outputs logits (`classifier_activation=None`): a randomly initialised deep
classifier's softmax is nearly uniform, and would hide a broken conversion.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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
    # also saved the other ways users save models (.h5, model.export(), tf.saved_model.save,
    # .onnx): by default a representative subset only, to keep the whole run under 45 minutes
    copies: bool = False
    # set BatchNorm moving statistics from the eval data (see `settle_batchnorm`)
    settle_bn: bool = False
    # fit the last Dense layer to random labels on the eval data (see `fit_head`)
    fit_head: bool = False
    # the output the eval labels are made from (see `class_labels`); None: the only output of
    # class-score shape [batch, classes], if there is one
    label_output: int | None = None
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
        copies: bool = False, **kw: Any) -> Arch:
    """A keras.applications architecture, random weights, 10 logits, one input named `image`."""

    def build(k: Any) -> Any:
        inp = k.Input((size, size, 3), name="image")
        return getattr(k.applications, cls)(weights=None, input_tensor=inp, classes=10,
                                            classifier_activation=None, **kw)

    def data(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        return {"image": preprocess(images(rng, n, size), mode)}

    return Arch(name, build, data, note=f"keras.applications.{cls} {size}px, inputs '{mode}'",
                onnx_fn=onnx_fn, keras3=keras3, copies=copies, settle_bn=True,
                fit_head=True)


def model_arrays(model: Any, data: dict[str, np.ndarray]) -> Any:
    """The eval arrays in the model's input order (one array for one input)."""
    names = [t.name.split(":")[0] for t in model.inputs]
    arrays = [data[n] if n in data else list(data.values())[i] for i, n in enumerate(names)]
    return arrays[0] if len(arrays) == 1 else arrays


# ------------------------------------------------------------------------------- eval labels

LABEL_NOISE = 0.1  # the share of labels moved off the model's own decision


def class_labels(outputs: list[np.ndarray], names: list[str], pick: int | None = None,
                 seed: int = 0) -> tuple[np.ndarray, dict[str, Any]] | None:
    """Eval labels: the source model's own top-1 on its class output, with LABEL_NOISE of them
    (drawn at random) moved to another class, so that the source is LABEL_NOISE short of 100 %
    and an accuracy read from any other output (or a broken one) shows. None when no output
    has the shape of class scores [batch, classes] (regression, per-cell or per-pixel outputs).

    `pick`: the class output (needed when several have that shape). The dict is the corpus
    entry's `labels`: which output, its width, and the accuracy the source must show on it."""
    classifiers = [i for i, o in enumerate(outputs) if o.ndim == 2 and o.shape[1] >= 2]
    if pick is None:
        if not classifiers:
            return None
        if len(classifiers) > 1:
            raise ValueError(f"outputs {[names[i] for i in classifiers]} are all class scores: "
                             "set the architecture's label_output")
        pick = classifiers[0]
    own = outputs[pick].argmax(axis=1)
    classes = int(outputs[pick].shape[1])
    rng = np.random.default_rng(seed)
    moved = rng.choice(len(own), int(round(LABEL_NOISE * len(own))), replace=False)
    y = own.astype("int64")
    y[moved] = (y[moved] + rng.integers(1, classes, len(moved))) % classes  # never its own class
    # the digest: --resume reruns an entry whose labels changed, even to the same figures
    return y, {"output": names[pick], "index": pick, "classes": classes, "noise": LABEL_NOISE,
               "accuracy": round(float(np.mean(y == own)), 6),
               "sha256": hashlib.sha256(y.tobytes()).hexdigest()[:16],
               "outputs": [{"name": n, "shape": [None, *o.shape[1:]]}
                           for n, o in zip(names, outputs, strict=True)]}


def settle_batchnorm(model: Any, data: dict[str, np.ndarray]) -> None:
    """Give every BatchNorm the moving statistics of its own input on the eval data.

    With weights=None the moving statistics are 0/1 while the activations are not: through
    50+ layers the signal shrinks until the logits are 1e-12..1e-21 (measured at 32 px) -
    every format then "matches" a constant and int8 rounds it to 0. One training-mode pass
    with momentum 0 normalizes each layer as a trained network's BatchNorm would.
    """
    bns = [la for la in model._flatten_layers(include_self=False, recursive=True)
           if type(la).__name__ == "BatchNormalization"]
    if not bns:
        return
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = 0.0
    model(model_arrays(model, data), training=True)
    for bn, m in zip(bns, saved, strict=True):
        bn.momentum = m


def fit_head(model: Any, data: dict[str, np.ndarray], seed: int = 0, margin: float = 10.0) -> None:
    """Fit the classifier's last layer (Dense, or a 1x1 Conv2D) by ridge regression to random labels on the eval
    data: a linear probe on the random backbone's features.

    A random deep classifier's logits are near ties (mobilenet_v2: median top-2 gap 0.36 for
    logits of std 0.9), so a float16 conversion's 2^-11 weight rounding, which these random
    BatchNorm networks amplify ~3 dB per block, flips the top-1 of 1-3% of samples: top-1
    agreement would then measure coin tosses, not the conversion. With a fitted head the
    gaps are a trained classifier's (median 6.0) while the backbone and its SNR stay as they
    were (float16, weights rounded in Keras: 28.4 dB -> 30.6 dB, top-1 0.973 -> 1.000); a
    broken conversion still changes the features, hence the decisions.
    """
    # The last layer with a kernel: a Dense, or MobileNet's 1x1 Conv2D on a 1x1 map.
    head = next((la for la in reversed(model.layers) if getattr(la, "kernel", None) is not None),
                None)
    if head is None or int(np.prod(head.kernel.shape[:-2])) != 1:
        return
    features_of = type(model)(model.inputs, head.input)
    f = np.asarray(features_of(model_arrays(model, data)), np.float64)
    f = f.reshape(len(f), -1)
    kernel_shape = tuple(head.kernel.shape)
    if f.shape[1] != kernel_shape[-2]:
        return
    classes = int(kernel_shape[-1])
    targets = np.eye(classes)[np.random.default_rng(seed).integers(0, classes, len(f))] * margin
    mean = f.mean(0)
    centred = f - mean
    gram = centred.T @ centred
    # lambda = the mean feature variance: a trained head (weight decay) leans on directions
    # the data spreads along; an unregularized fit of 256 samples in 1280 dimensions also
    # leans on near-null ones and multiplies the conversion's error there (efficientnet_b0,
    # float16 weights rounded in Keras: 14.5 dB at lambda/100, 27.0 dB at lambda)
    ridge = np.trace(gram) / len(gram)
    w = np.linalg.solve(gram + ridge * np.eye(len(gram)), centred.T @ targets)
    b = targets.mean(0) - mean @ w
    head.set_weights([w.reshape(kernel_shape).astype("float32"), b.astype("float32")])


def condition(model: Any, arch: Arch, data: dict[str, np.ndarray]) -> None:
    """What the architecture asks for of its random weights (settle_bn, fit_head)."""
    if arch.settle_bn:
        settle_batchnorm(model, data)
    if arch.fit_head:
        fit_head(model, data)


def keras_labels(model: Any, arch: Arch, data: dict[str, np.ndarray]) -> Any:
    """`class_labels` from the Keras model's outputs on its eval data."""
    out = model.predict(model_arrays(model, data), batch_size=64, verbose=0)
    outs = [np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])]
    return class_labels(outs, [str(n) for n in model.output_names], arch.label_output)


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


def face_attributes(k: Any) -> Any:
    """A face-attribute model's three heads on one backbone: age (regression [N, 1]), emotion
    logits [N, 7] and gender logits [N, 2]. Two outputs have class-score shape and the
    labelled one (gender) is last: mobilec must pick it by the source's accuracy."""
    img = k.Input((32, 32, 3), name="image")
    h = k.layers.Rescaling(1 / 255.0)(img)
    h = k.layers.Conv2D(16, 3, strides=2, activation="relu")(h)
    h = k.layers.Conv2D(32, 3, strides=2, activation="relu")(h)
    h = k.layers.GlobalAveragePooling2D()(h)
    age = k.layers.Dense(1, name="age")(h)
    emotion = k.layers.Dense(7, name="emotion")(h)
    gender = k.layers.Dense(2, name="gender")(h)  # the last layer: fit_head fits it
    return k.Model(img, [age, emotion, gender], name="face_attributes")


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
         note="int32 token ids (vocab 1000) + Embedding [class 1]", copies=True),
    Arch("text_masked", text_masked, _masked_data, note="two int32 inputs: tokens + mask [class 1]",
         copies=True),
    Arch("lstm_seq", lstm_seq, lambda r, n: {"series": _normal((20, 8))(r, n)}, note="stacked LSTM"),
    Arch("gru_seq", gru_seq, lambda r, n: {"series": _normal((20, 8))(r, n)}, note="stacked GRU"),
    Arch("audio_frames", audio_frames, lambda r, n: {"logmel": _normal((100, 40), -4, 2)(r, n)},
         note="Conv1D, three frame-wise outputs [class 4]", copies=True),
    Arch("transformer_encoder", transformer_encoder,
         lambda r, n: {"embeddings": _normal((24, 32))(r, n)},
         note="MultiHeadAttention, LayerNorm, GELU"),
    Arch("two_input", two_input,
         lambda r, n: {"image": images(r, n, 32), "features": _normal((8,))(r, n)},
         note="image 0-255 + feature vector", copies=True),
    Arch("detector", detector, lambda r, n: {"image": images(r, n, 64)},
         note="two outputs: boxes, sigmoid scores"),
    Arch("face_attributes", face_attributes, lambda r, n: {"image": images(r, n, 32)},
         note="three outputs: age [N,1], emotion [N,7], gender [N,2]; labels on the last",
         copies=True, fit_head=True, label_output=2),
    Arch("yolo_head", yolo_head, lambda r, n: {"image": images(r, n, 64)},
         note="one output: boxes 0-320 px concatenated with sigmoid scores [silent int8 failure]",
         copies=True),
    Arch("mlp_tabular", mlp_tabular, lambda r, n: {"features": _normal((20,))(r, n)},
         note="Dense + BatchNorm on a feature vector"),
    Arch("keyword_spotter", keyword_spotter, lambda r, n: {"mfcc": _normal((49, 10, 1), 0, 5)(r, n)},
         note="DS-CNN on MFCCs"),
]

# The smallest input each family takes (32 px; Inception 75), and no family twice at two
# depths: ResNet101, EfficientNet-B1/V2-B1, InceptionResNetV2, Xception, NASNetMobile and
# VGG16 were dropped to keep the whole run under 45 minutes on 2 cores.
VISION = [
    app("mobilenet", "MobileNet", 32, "tf"),
    app("mobilenet_v2", "MobileNetV2", 32, "tf"),
    app("mobilenet_v3_small", "MobileNetV3Small", 32, "raw", copies=True),
    app("efficientnet_b0", "EfficientNetB0", 32, "raw"),
    app("efficientnet_v2_b0", "EfficientNetV2B0", 32, "raw"),
    app("densenet121", "DenseNet121", 32, "torch"),
    app("resnet50_v2", "ResNet50V2", 32, "tf"),
    app("inception_v3", "InceptionV3", 75, "tf"),
    app("convnext_tiny", "ConvNeXtTiny", 32, "raw", onnx_fn=True),
    app("regnetx_002", "RegNetX002", 32, "raw", keras3=False),
]

ARCHS: dict[str, Arch] = {a.name: a for a in VISION + CUSTOM}
# One model per failure class of issue 15 (and the silent one): the fast slice for tests.
QUICK = ("text_classifier", "mobilenet_v3_small", "audio_frames", "convnext_tiny", "mobilenet_v2",
         "yolo_head", "lstm_seq")
