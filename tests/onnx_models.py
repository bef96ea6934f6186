"""Real ONNX models for the ONNX-input tests, built offline in seconds.

Keras models (tf_keras) exported with tf2onnx, as a user's exporter would, plus
models written op by op with onnx.helper. Each builder writes `<name>.onnx` and
the data that fits it (`<name>-train.npz`, `<name>-eval.npz`, arrays x and y) in
the ONNX model's own layout, and returns the .onnx path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

OPSET = 17


def _save_data(directory: Path, name: str, x: np.ndarray, y: np.ndarray, n_train: int) -> None:
    np.savez(directory / f"{name}-train.npz", x=x[:n_train].astype("float32"), y=y[:n_train])
    np.savez(directory / f"{name}-eval.npz", x=x[n_train:].astype("float32"), y=y[n_train:])


def data_paths(onnx_path: Path) -> dict[str, str]:
    """The recipe `data:` section for a model built here."""
    stem = onnx_path.with_suffix("")
    return {"source": "npz", "train": f"{stem}-train.npz", "eval": f"{stem}-eval.npz",
            "calibration_samples": 64, "eval_samples": 200}


def save_helper_model(graph, path: Path) -> Path:
    """An onnx.helper graph as a checked model file (default opset, IR 8 for onnxruntime)."""
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="mobilec-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from mobilec.sources.data import digits_split

    train, ev = digits_split()
    return np.concatenate([train.x, ev.x]), np.concatenate([train.y, ev.y])


def _keras_to_onnx(model, shape: list[int], path: Path, nchw: bool) -> Path:
    """tf2onnx from a tf_keras model; `nchw` makes the ONNX input channels-first (as PyTorch)."""
    from mobilec.util.tfenv import import_tf

    tf = import_tf()
    import tf2onnx

    name = model.inputs[0].name.split(":")[0]
    spec = [tf.TensorSpec([None, *shape], tf.float32, name=name)]
    tf2onnx.convert.from_keras(model, input_signature=spec, opset=OPSET, output_path=str(path),
                               inputs_as_nchw=[name] if nchw else None)
    return path


def _fit(model, x: np.ndarray, y: np.ndarray | list[np.ndarray], losses, epochs: int) -> None:
    from mobilec.util.tfenv import import_tf_keras

    tfk = import_tf_keras()
    model.compile(optimizer=tfk.optimizers.Adam(3e-3), loss=losses)
    model.fit(x, y, epochs=epochs, batch_size=64, verbose=0)


def conv_classifier_nchw(directory: Path) -> Path:
    """A small digits CNN whose ONNX input is NCHW [N, 1, 8, 8] (a PyTorch-style export)."""
    from mobilec.util.tfenv import import_tf_keras

    tfk = import_tf_keras()
    tfk.utils.set_random_seed(0)
    x, y = _digits()
    inp = tfk.Input((8, 8, 1), name="image")
    h = tfk.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    h = tfk.layers.MaxPooling2D()(h)
    h = tfk.layers.Conv2D(16, 3, padding="same", activation="relu")(h)
    h = tfk.layers.Flatten()(h)
    out = tfk.layers.Dense(10, activation="softmax", name="probs")(h)
    model = tfk.Model(inp, out)
    _fit(model, x[:1437], y[:1437], "sparse_categorical_crossentropy", epochs=4)
    _save_data(directory, "cnn", np.transpose(x, (0, 3, 1, 2)), y, 1437)
    return _keras_to_onnx(model, [8, 8, 1], directory / "cnn.onnx", nchw=True)


def mlp(directory: Path) -> Path:
    """Dense layers on flattened digits: input [N, 64], no layout at all."""
    from mobilec.util.tfenv import import_tf_keras

    tfk = import_tf_keras()
    tfk.utils.set_random_seed(1)
    x, y = _digits()
    x = x.reshape(len(x), 64)
    model = tfk.Sequential([tfk.Input((64,), name="features"),
                            tfk.layers.Dense(32, activation="relu"),
                            tfk.layers.Dense(10, name="logits")])
    _fit(model, x[:1437], y[:1437],
         tfk.losses.SparseCategoricalCrossentropy(from_logits=True), epochs=6)
    _save_data(directory, "mlp", x, y, 1437)
    return _keras_to_onnx(model, [64], directory / "mlp.onnx", nchw=False)


def conv1d_sequences(directory: Path) -> Path:
    """A 1-D conv over sequences, ONNX input [N, 4, 32] (channels, steps: NCW). The label is
    which channel carries a burst; the model learns it in a few epochs."""
    from mobilec.util.tfenv import import_tf_keras

    tfk = import_tf_keras()
    tfk.utils.set_random_seed(2)
    rng = np.random.default_rng(2)
    n = 800
    y = rng.integers(0, 4, n)
    x = rng.normal(0, 0.3, (n, 32, 4)).astype("float32")
    start = rng.integers(0, 24, n)
    for i in range(n):
        x[i, start[i]:start[i] + 8, y[i]] += 1.5
    inp = tfk.Input((32, 4), name="signal")
    h = tfk.layers.Conv1D(8, 5, padding="same", activation="relu")(inp)
    h = tfk.layers.Conv1D(8, 3, padding="same", activation="relu")(h)
    h = tfk.layers.GlobalMaxPooling1D()(h)
    out = tfk.layers.Dense(4, activation="softmax", name="burst")(h)
    model = tfk.Model(inp, out)
    _fit(model, x[:600], y[:600], "sparse_categorical_crossentropy", epochs=5)
    _save_data(directory, "seq", np.transpose(x, (0, 2, 1)), y, 600)
    path = _keras_to_onnx(model, [32, 4], directory / "seq.onnx", nchw=False)
    return _input_channels_first(path)


def _input_channels_first(path: Path) -> Path:
    """tf2onnx's inputs_as_nchw takes only 4-D inputs: give a 3-D input a leading Transpose,
    so the ONNX model takes [N, C, L] as a PyTorch Conv1d export does."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path))
    inp = model.graph.input[0]
    dims = inp.type.tensor_type.shape.dim
    old = [dims[0].dim_param or dims[0].dim_value, dims[1].dim_value, dims[2].dim_value]
    inner = inp.name + "_nwc"
    for node in model.graph.node:
        node.input[:] = [inner if n == inp.name else n for n in node.input]
    model.graph.node.insert(0, helper.make_node("Transpose", [inp.name], [inner],
                                                name="to_nwc", perm=[0, 2, 1]))
    new = helper.make_tensor_value_info(inp.name, inp.type.tensor_type.elem_type,
                                        [old[0], old[2], old[1]])
    model.graph.input.remove(inp)
    model.graph.input.insert(0, new)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def two_outputs(directory: Path) -> Path:
    """One trunk, two heads: digit probabilities and a regression (the image's mean ink).
    ONNX input NHWC [N, 8, 8, 1] as tf2onnx exports a Keras model by default."""
    from mobilec.util.tfenv import import_tf_keras

    tfk = import_tf_keras()
    tfk.utils.set_random_seed(3)
    x, y = _digits()
    ink = x.mean(axis=(1, 2, 3)).reshape(-1, 1).astype("float32")
    inp = tfk.Input((8, 8, 1), name="image")
    h = tfk.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    h = tfk.layers.Flatten()(h)
    h = tfk.layers.Dense(32, activation="relu")(h)
    probs = tfk.layers.Dense(10, activation="softmax", name="digit")(h)
    value = tfk.layers.Dense(1, name="ink")(h)
    model = tfk.Model(inp, [probs, value])
    _fit(model, x[:1437], [y[:1437], ink[:1437]], ["sparse_categorical_crossentropy", "mse"],
         epochs=4)
    _save_data(directory, "two", x, y, 1437)
    return _keras_to_onnx(model, [8, 8, 1], directory / "two.onnx", nchw=False)


def _image_data(directory: Path, name: str, shape: tuple[int, ...], n: int = 96) -> None:
    rng = np.random.default_rng(4)
    x = rng.random((n, *shape), dtype=np.float32)
    _save_data(directory, name, x, rng.integers(0, 5, n), n // 2)


def helper_image_model(directory: Path) -> Path:
    """Written op by op with onnx.helper, PyTorch-style: input [1, 3, H, W] with H and W
    dynamic (model.input_shape must fix them), two outputs: class probabilities and an NCHW
    feature map (onnx2tf computes it NHWC; mobilec must hand it back NCHW). A fixed batch of
    1 and 3 channels is exactly when onnx2tf would download sample images."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    w1 = numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * 0.4).astype("float32"), "w1")
    b1 = numpy_helper.from_array((rng.standard_normal(4) * 0.1).astype("float32"), "b1")
    w2 = numpy_helper.from_array((rng.standard_normal((4, 5)) * 2.0).astype("float32"), "w2")
    b2 = numpy_helper.from_array(np.zeros(5, "float32"), "b2")
    nodes = [
        helper.make_node("Conv", ["pixels", "w1", "b1"], ["conv"], name="conv1", pads=[1, 1, 1, 1],
                         kernel_shape=[3, 3]),
        helper.make_node("Relu", ["conv"], ["features"], name="relu1"),
        helper.make_node("GlobalAveragePool", ["features"], ["pooled"], name="gap"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "w2", "b2"], ["logits"], name="fc"),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(
        nodes, "helper_image",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [1, 3, "height", "width"])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 5]),
         helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, 4, "height", "width"])],
        [w1, b1, w2, b2])
    path = save_helper_model(graph, directory / "helper.onnx")
    _image_data(directory, "helper", (3, 16, 16))
    return path


def custom_op_model(directory: Path) -> Path:
    """MatMul -> com.microsoft::QuickGelu -> MatMul -> Softmax on flattened digits.
    onnxruntime runs the contrib op; onnx2tf has no converter for it."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(6)
    w1 = numpy_helper.from_array((rng.standard_normal((64, 16)) * 0.3).astype("float32"), "w1")
    w2 = numpy_helper.from_array((rng.standard_normal((16, 10)) * 0.5).astype("float32"), "w2")
    nodes = [
        helper.make_node("MatMul", ["features", "w1"], ["h"], name="mm1"),
        helper.make_node("QuickGelu", ["h"], ["act"], name="quick_gelu", domain="com.microsoft",
                         alpha=1.702),
        helper.make_node("MatMul", ["act", "w2"], ["logits"], name="mm2"),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "custom_op",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 10])], [w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    path = directory / "custom.onnx"
    onnx.save(model, str(path))
    x, y = _digits()
    _save_data(directory, "custom", x.reshape(len(x), 64), y, 1437)
    return path


def _softmax_regression(x: np.ndarray, y: np.ndarray, classes: int, steps: int = 300
                        ) -> tuple[np.ndarray, np.ndarray]:
    """A linear classifier fitted with plain gradient descent (numpy, well under a second)."""
    w = np.zeros((x.shape[1], classes), "float32")
    b = np.zeros(classes, "float32")
    onehot = np.eye(classes, dtype="float32")[y]
    for _ in range(steps):
        z = x @ w + b
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        g = (p - onehot) / len(x)
        w -= 2.0 * x.T @ g
        b -= 2.0 * g.sum(axis=0)
    return w, b


def heads_model(directory: Path, name: str, heads: list[tuple[str, int, bool]]) -> Path:
    """Flattened digits [batch, 64] -> one Gemm head per (name, width, trained): a trained
    head is a softmax digit classifier (width 10), an untrained one random numbers of its
    width (a detector's boxes, landmarks, or a second classifier head that knows nothing).
    Written with onnx.helper: no TensorFlow, built in a second."""
    from onnx import TensorProto, helper, numpy_helper

    x, y = _digits()
    flat = x.reshape(len(x), 64).astype("float32")
    rng = np.random.default_rng(6)
    inits, nodes, outputs = [], [], []
    for head, width, trained in heads:
        if trained:
            w, b = _softmax_regression(flat[:1437], y[:1437], width)
        else:
            w = (rng.standard_normal((64, width)) * 0.3).astype("float32")
            b = np.zeros(width, "float32")
        inits += [numpy_helper.from_array(w, f"{head}_w"), numpy_helper.from_array(b, f"{head}_b")]
        gemm = f"{head}_logits" if trained else head
        nodes.append(helper.make_node("Gemm", ["x", f"{head}_w", f"{head}_b"], [gemm]))
        if trained:
            nodes.append(helper.make_node("Softmax", [gemm], [head], axis=1))
        outputs.append(helper.make_tensor_value_info(head, TensorProto.FLOAT, ["batch", width]))
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        outputs, inits)
    path = save_helper_model(graph, directory / f"{name}.onnx")
    _save_data(directory, name, flat, y, 1437)
    return path


def streaming_model(directory: Path, sizes: tuple[int, int] = (16, 16)) -> Path:
    """Two inputs as a streaming audio model has them: `input` [batch, sequence] with the
    sequence dynamic, and `state` [batch, 8]; output `probs` [batch, 4]. The data
    (`streaming-train.npz`, `streaming-eval.npz`) gives `input` sequences of `sizes`
    (train, eval) samples: equal sizes fix the dynamic dim, different ones do not."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    w = numpy_helper.from_array(rng.standard_normal((8, 4)).astype("float32"), "w")
    v = numpy_helper.from_array(np.array([[2.0, -2.0, 1.0, -1.0]], "float32"), "v")
    nodes = [helper.make_node("ReduceMean", ["input"], ["level"], axes=[1], keepdims=1),
             helper.make_node("MatMul", ["level", "v"], ["from_input"]),
             helper.make_node("MatMul", ["state", "w"], ["from_state"]),
             helper.make_node("Add", ["from_input", "from_state"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=1)]
    graph = helper.make_graph(
        nodes, "streaming",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", "sequence"]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 4])], [w, v])
    path = save_helper_model(graph, directory / "streaming.onnx")
    for role, size, n in (("train", sizes[0], 96), ("eval", sizes[1], 64)):
        x = rng.standard_normal((n, size)).astype("float32")
        state = rng.standard_normal((n, 8)).astype("float32")
        logits = x.mean(axis=1, keepdims=True) @ numpy_helper.to_array(v) + \
            state @ numpy_helper.to_array(w)
        np.savez(directory / f"streaming-{role}.npz", input=x, state=state,
                 y=logits.argmax(axis=1))
    return path


_MOBILENET_V3_SE = """
import sys, keras
keras.utils.set_random_seed(0)
inp = keras.Input((32, 32, 3), name="image")
net = keras.applications.MobileNetV3Small(weights=None, input_tensor=inp, classes=10,
                                          classifier_activation=None)
keras.Model(inp, net.get_layer("expanded_conv_squeeze_excite_mul").output).export(
    sys.argv[1], verbose=False)
"""


def mobilenet_v3_se_block(directory: Path) -> Path:
    """MobileNetV3Small's stem and first squeeze-excite block (Keras 3, random weights), saved
    with model.export() and converted by the tf2onnx CLI, as a user would: onnx2tf 1.29 turns
    this .onnx into a TensorFlow graph that runs and is wrong (SNR about -1 dB; the whole
    MobileNetV3Small's .onnx is the conformance corpus' onnx2tf failure). Data: 0-255 images,
    no labels."""
    import subprocess
    import sys

    export = directory / "mnv3_se_export"
    subprocess.run([sys.executable, "-c", _MOBILENET_V3_SE, str(export)], check=True,
                   capture_output=True, timeout=600)
    path = directory / "mnv3_se.onnx"
    subprocess.run([sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(export),
                    "--output", str(path), "--opset", str(OPSET)], check=True,
                   capture_output=True, timeout=600)
    x = np.random.default_rng(0).uniform(0, 255, (96, 32, 32, 3)).astype("float32")
    np.savez(directory / "mnv3_se-train.npz", x=x[:64])  # a feature map: no labels
    np.savez(directory / "mnv3_se-eval.npz", x=x[64:])
    return path


def stateful_stream_model(directory: Path, named: bool = True, sr: bool = True) -> Path:
    """A streaming voice-activity model as silero-vad ships it: `input` [batch, sequence]
    float32 (sequence dynamic), `state` [2, batch, 128] float32 (the batch is NOT the first
    dim) and `sr` int64 rank 0 (one sample rate for the whole batch); outputs `output`
    [batch, 2] (speech probabilities) and `stateN` [2, batch, 128]. The data
    (`stateful-train.npz`, `stateful-eval.npz`) holds each input as the model takes it, the
    samples along its batch dim (`state` [2, N, 128]) and `sr` as one 0-d value; `y` is the
    model's own decision, so the source is 100 % accurate. `named=False`: every dynamic dim
    unnamed (only the data tells which of `state`'s dims is the batch). `sr=False`: the
    sample rate a constant 16000, no rank-0 input (the Core AI runtime crashes on one)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(11)
    batch = "batch" if named else None
    decay = rng.uniform(0.5, 1.0, 128).astype("float32")
    w = rng.standard_normal((128, 2)).astype("float32")
    consts = {"decay": decay, "w": w, "gain": (rng.standard_normal(128) * 2).astype("float32"),
              "rate": np.array(1 / 16000, "float32")}
    nodes = [helper.make_node("ReduceMean", ["input"], ["level"], axes=[1], keepdims=1),
             helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["srf", "rate"], ["scale"]),
             helper.make_node("Mul", ["level", "scale"], ["drive"]),  # [batch, 1]
             helper.make_node("Mul", ["drive", "gain"], ["drive128"]),  # [batch, 128]
             helper.make_node("Mul", ["state", "decay"], ["kept"]),  # [2, batch, 128]
             helper.make_node("Add", ["kept", "drive128"], ["pre"]),
             helper.make_node("Tanh", ["pre"], ["stateN"]),
             helper.make_node("ReduceMean", ["stateN"], ["pooled"], axes=[0], keepdims=0),
             helper.make_node("MatMul", ["pooled", "w"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["output"], axis=1)]
    graph = helper.make_graph(
        nodes, "stateful",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, "sequence"] if named
                                       else [None, None]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, batch, 128]),
         *([helper.make_tensor_value_info("sr", TensorProto.INT64, [])] if sr else [])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, 2]),
         helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, batch, 128])],
        [numpy_helper.from_array(v, k) for k, v in consts.items()] +
        ([] if sr else [numpy_helper.from_array(np.array(16000, "int64"), "sr")]))
    path = save_helper_model(graph, directory / "stateful.onnx")
    for role, n in (("train", 96), ("eval", 64)):
        x = (rng.standard_normal((n, 32)) + rng.uniform(-1, 1, (n, 1))).astype("float32")
        state = (rng.standard_normal((2, n, 128)) * 0.5).astype("float32")
        h = np.tanh(state * decay + x.mean(axis=1, keepdims=True) * consts["gain"])  # sr 16000
        y = (h.mean(axis=0) @ w).argmax(axis=1)
        rate = {"sr": np.array(16000, "int64")} if sr else {}
        np.savez(directory / f"stateful-{role}.npz", input=x, state=state, y=y, **rate)
    return path
