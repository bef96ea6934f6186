"""Core AI (.aimodel): the pinned stack, the format, its routes and its Linux runtime."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest


@pytest.mark.slow  # a fresh process importing TensorFlow, jax, torch and coremltools
def test_the_stack_imports_with_ml_dtypes_0_6() -> None:
    """coreai-core caps ml-dtypes at 0.6.0; TensorFlow, jax (litert-torch), torch, coremltools
    and Core AI must all import and compute with it in one process."""
    code = (
        "import importlib.metadata as md, numpy as np\n"
        "import tensorflow as tf, jax, jax.numpy as jnp, torch, coremltools, ml_dtypes\n"
        "import coreai, coreai_torch\n"
        "assert md.version('ml-dtypes') == '0.6.0', md.version('ml-dtypes')\n"
        "x = tf.cast(tf.constant([1.5, 2.0]), tf.bfloat16).numpy()\n"
        "assert x.dtype == ml_dtypes.bfloat16 and float(x.sum()) == 3.5\n"
        "assert float(jnp.ones(3, jnp.bfloat16).sum()) == 3.0\n"
        "print('ok', float(tf.constant(1.0)))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and "ok 1.0" in done.stdout, done.stderr[-3000:]


# ---------------------------------------------------------------- real conversions

POINT = 0.01


@pytest.fixture(scope="module")
def torch_digits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The PyTorch digits CNN (scripts/torch_digits.py), trained, saved as a .pt2 with its
    data as .npz files; and its eval accuracy in eager PyTorch."""
    import torch
    from torch_digits import cnn_layers, digits_nchw, train

    (xt, yt), (xe, ye) = digits_nchw()
    torch.manual_seed(0)
    model = train(torch.nn.Sequential(*cnn_layers()), xt, yt)
    tmp = tmp_path_factory.mktemp("coreai")
    torch.export.save(torch.export.export(model, (torch.tensor(xe[:1]),)), str(tmp / "cnn.pt2"))
    np.savez(tmp / "train.npz", x=xt, y=yt)
    np.savez(tmp / "eval.npz", x=xe, y=ye)
    return {"dir": tmp, "model": model, "eval": (xe, ye)}


def _data() -> dict[str, Any]:
    return {"source": "npz", "train": "train.npz", "eval": "eval.npz", "calibration_samples": 100}


@pytest.mark.slow
def test_pt2_to_palettized_aimodel_verified_on_linux(torch_digits: dict[str, Any]) -> None:
    """The issue's measure: a 4-bit palettized .aimodel of the digits model is <= 0.16x the
    float32 .aimodel and loses <= 1 pt, both run by coreai-core's Linux runtime; the
    artifact is a published directory with its I/O, ops and a Swift loader in report.md."""
    from conftest import compress, write_recipe

    tmp = torch_digits["dir"]
    recipe = write_recipe(tmp, tmp / "cnn.pt2", name="cai", data=_data(),
                          stages=[{"quantize": {"mode": "palettize"}}], targets=["ios-coreai"])
    report = compress(recipe)
    rows = {a["quantization"]: a for a in report["artifacts"] if a["format"] == "coreai"}
    base, pal = rows["float32"], rows["palettize"]
    for a in (base, pal):
        assert a["status"] == "ok", (a["error"], a["routes_failed"])
        assert a["route"] == "torch-export" and a["path"].endswith(".aimodel")
        assert (tmp / "out" / a["path"]).is_dir()
        assert a["accuracy"] is not None and a["latency_ms"]["median"] > 0
    assert base["fidelity"]["top1_agreement"] >= 0.99 and base["fidelity"]["snr_db"] > 60
    ratio = pal["size_bytes"] / base["size_bytes"]
    assert ratio <= 0.16, ratio
    assert base["accuracy"] - pal["accuracy"] <= POINT, (base["accuracy"], pal["accuracy"])
    manifest = json.loads((tmp / "out" / (pal["path"] + ".delegate.json")).read_text())
    assert manifest["inputs"][0]["shape"][1:] == [1, 8, 8]
    assert manifest["op_compatibility"]["ops"].get("conv2d") == 2
    md = (tmp / "out" / "report.md").read_text()
    assert "import CoreAI" in md and 'loadFunction(named: "main")' in md


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["float16", "dynamic", "int4"])
def test_aimodel_modes_build_and_verify(torch_digits: dict[str, Any], tmp_path: Path,
                                        mode: str) -> None:
    """float16, int8 weights and int4 weights: each built, run on Linux, held against eager
    PyTorch (the convert stage's own build-and-verify path)."""
    from mobilec.policy.targets import ArtifactSpec
    from mobilec.stages.convert import build_artifact

    state = _state(torch_digits, tmp_path)
    art = build_artifact(state, ArtifactSpec("coreai", mode, "ios-coreai", "coreai", "cpu"))
    assert art.status == "ok", (art.error, art.routes_failed)
    fid = art.verification
    assert fid["top1_agreement"] >= 0.98 and fid["snr_db"] > (40 if mode == "float16" else 20)
    assert art.path.is_dir() and (art.path / "metadata.json").is_file()


@pytest.mark.slow
def test_a_perturbed_aimodel_is_caught(torch_digits: dict[str, Any], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A float32 .aimodel that differs from the source never ships as ok."""
    import torch

    from mobilec.formats import coreai
    from mobilec.policy.targets import ArtifactSpec
    from mobilec.stages.convert import build_artifact

    real = coreai.convert

    def perturbed(ep: Any, *args: Any, **kwargs: Any) -> Any:
        # The program the format converts, whatever its origin, with noisy copies of its
        # weights (the source's own tensors are left as they are).
        broken = ep.run_decompositions({})
        with torch.no_grad():
            for name, t in list(broken.state_dict.items()):
                if t.is_floating_point():
                    broken.state_dict[name] = t + torch.randn_like(t) * 0.5
        return real(broken, *args, **kwargs)

    monkeypatch.setattr(coreai, "convert", perturbed)
    state = _state(torch_digits, tmp_path)
    art = build_artifact(state, ArtifactSpec("coreai", "float32", None, "coreai", "cpu"))
    assert art.status == "failed-verification", (art.error, art.verification)
    assert "differs from the source" in (art.error or ""), art.error


def test_a_converter_that_aborts_fails_the_route_not_the_run(
        torch_digits: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """coreai-torch's MLIR aborts the process on a shape it cannot infer (a bridged ConvNeXt
    in float16, measured: "LLVM ERROR: Failed to infer result type(s)", SIGABRT). The
    conversion runs in a fork: the row fails with the reason, and this process goes on."""
    import os

    from mobilec.formats import coreai
    from mobilec.policy.targets import ArtifactSpec
    from mobilec.stages.convert import build_artifact

    def aborting(*args: Any, **kwargs: Any) -> Any:
        os.write(2, b"LLVM ERROR: Failed to infer result type(s)\n")
        os.abort()

    monkeypatch.setattr(coreai, "convert", aborting)
    state = _state(torch_digits, tmp_path)
    art = build_artifact(state, ArtifactSpec("coreai", "float32", None, "coreai", "cpu"))
    assert art.status == "failed", (art.status, art.error)
    assert "crashed (SIGABRT): LLVM ERROR: Failed to infer result type(s)" in art.error, art.error
    monkeypatch.undo()
    again = build_artifact(state, ArtifactSpec("coreai", "float32", None, "coreai", "cpu"))
    assert again.status == "ok", again.error  # the same process converts the next one


@pytest.mark.slow
def test_keras_reaches_coreai_through_the_onnx_bridge(demo_keras: Path, tmp_path: Path) -> None:
    """A Keras model: tf2onnx's .onnx -> onnx2torch -> torch.export -> .aimodel, verified
    against Keras on Linux; the row names the bridge route that shipped."""
    from conftest import compress, write_recipe

    recipe = write_recipe(tmp_path, demo_keras, name="kcai", targets=["ios-coreai"])
    report = compress(recipe)
    rows = {a["quantization"]: a for a in report["artifacts"] if a["format"] == "coreai"}
    for mode in ("float16", "float32"):
        a = rows[mode]
        assert a["status"] == "ok", (a["error"], a["routes_failed"])
        assert a["route"] == "onnx2torch-tf2onnx-keras", a["route"]
        assert a["fidelity"]["top1_agreement"] >= 0.99, a["fidelity"]
        assert a["accuracy"] is not None
    assert rows["float16"]["size_bytes"] < 0.6 * rows["float32"]["size_bytes"]


def _state(torch_digits: dict[str, Any], tmp: Path) -> Any:
    from conftest import torch_state

    xe, ye = torch_digits["eval"]
    return torch_state(torch_digits["model"], (xe, ye), (xe, ye), xe[:100], tmp)


def test_the_bridge_makes_constant_shape_ops_static(tmp_path: Path) -> None:
    """onnx2torch reads Reshape's shape, Pad's pads and (Un)Squeeze's axes from tensors at run
    time, which torch.export cannot trace; the bridge makes them static where the tensor is
    an initializer, and the exported program still computes what onnxruntime does."""
    import onnx
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper, numpy_helper

    from mobilec.formats.coreai_bridge import onnx_to_torch
    from mobilec.formats.coreai_convert import export_decomposed

    def const(name: str, values: list[int]) -> Any:
        return numpy_helper.from_array(np.array(values, dtype=np.int64), name)

    nodes = [helper.make_node("Pad", ["x", "pads"], ["padded"]),  # N,C,5,5 -> N,C,6,6
             helper.make_node("Reshape", ["padded", "shape"], ["flat"]),  # -> N, C*36
             helper.make_node("Unsqueeze", ["flat", "axes"], ["u"]),  # -> N, 1, C*36
             helper.make_node("Squeeze", ["u", "axes"], ["y"])]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 72])],
        [const("pads", [0, 0, 0, 0, 0, 0, 1, 1]), const("shape", [-1, 72]), const("axes", [1])])
    path = tmp_path / "shapes.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    x = np.random.default_rng(0).standard_normal((3, 2, 5, 5)).astype(np.float32)
    want = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    ep, dynamic = export_decomposed(onnx_to_torch(path), (x[:1],))
    assert dynamic
    np.testing.assert_allclose(ep.module()(torch.tensor(x)).numpy(), want, atol=1e-6)


@pytest.mark.slow
def test_one_warm_runtime_child_serves_every_run_and_a_dead_one_is_replaced(
        tmp_path: Path) -> None:
    """Every .aimodel run of a process goes to one runtime child (its imports paid once);
    a file the runtime rejects fails that run only; a child that died is replaced."""
    import os
    import shutil
    import signal

    import torch

    from mobilec.errors import ConversionError
    from mobilec.formats import coreai_runtime
    from mobilec.formats.coreai_convert import convert, export_decomposed, save
    from mobilec.util.scratch import scratch_cwd

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()).eval()
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    ep, _ = export_decomposed(model, (x[:1],))
    save(convert(ep, "float32"), tmp_path / "m.aimodel")
    want = model(torch.tensor(x)).detach().numpy()

    coreai_runtime.shutdown()
    with scratch_cwd(tmp_path / "run1"):  # a run's temp dir, removed when the run ends
        coreai_runtime.prestart()
        pid = coreai_runtime.worker_pid()
        names, outs, lat = coreai_runtime.run_isolated(tmp_path / "m.aimodel", x, latency=True)
    shutil.rmtree(tmp_path / "run1")
    np.testing.assert_allclose(outs[0], want, atol=1e-5)
    assert lat["median"] > 0 and len(names) == 1
    with scratch_cwd(tmp_path / "run2"):  # the next run of the process: its own temp dir
        coreai_runtime.run_isolated(tmp_path / "m.aimodel", x)
    assert coreai_runtime.worker_pid() == pid  # the same warm child for every run

    # An empty .aimodel directory crashes coreai-core's runtime (SIGSEGV, measured): that
    # run fails with the signal's name, mobilec lives on, the next run gets a new child.
    (tmp_path / "bad.aimodel").mkdir()
    with pytest.raises(ConversionError, match="crashed|failed in the Core AI runtime"):
        coreai_runtime.run_isolated(tmp_path / "bad.aimodel", x)
    np.testing.assert_allclose(coreai_runtime.run_isolated(tmp_path / "m.aimodel", x)[1][0],
                               want, atol=1e-5)
    second = coreai_runtime.worker_pid()
    assert second not in (None, pid)

    os.kill(second, signal.SIGKILL)  # a child that died between runs is replaced too
    while coreai_runtime.worker_pid() == second:
        os.sched_yield()
    coreai_runtime.run_isolated(tmp_path / "m.aimodel", x)
    assert coreai_runtime.worker_pid() not in (None, second)
    coreai_runtime.shutdown()


def test_the_bridge_folds_shapes_computed_at_run_time(tmp_path: Path) -> None:
    """tf2onnx writes a Keras Reshape as Shape -> Slice -> Concat -> Reshape: onnx2torch then
    reads the shape at run time and torch.export cannot trace it. The bridge folds it at one
    sample's shapes and exports at batch 1; the program computes what onnxruntime does."""
    import onnx
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper, numpy_helper

    from mobilec.errors import MobilecError
    from mobilec.formats.coreai_bridge import bridged_program, onnx_to_torch
    from mobilec.formats.coreai_convert import export_decomposed

    def const(name: str, values: list[int]) -> Any:
        return numpy_helper.from_array(np.array(values, dtype=np.int64), name)

    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Slice", ["s", "zero", "one"], ["batch"]),
             helper.make_node("Concat", ["batch", "rest"], ["shape"], axis=0),
             helper.make_node("Reshape", ["x", "shape"], ["r"]),  # N,4,6 -> N,3,8
             helper.make_node("Expand", ["r", "s2"], ["y"])]  # s2 from the shape too
    nodes.insert(3, helper.make_node("Concat", ["batch", "rest"], ["s2"], axis=0))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, 8])],
        [const("zero", [0]), const("one", [1]), const("rest", [3, 8])])
    path = tmp_path / "runtime_shape.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    x = np.random.default_rng(0).standard_normal((1, 4, 6)).astype(np.float32)
    with pytest.raises(MobilecError):  # what the bridge did before folding
        export_decomposed(onnx_to_torch(path), (x,))
    ep, dynamic, folded = bridged_program(path, (x,))
    assert folded and not dynamic
    want = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    np.testing.assert_allclose(ep.module()(torch.tensor(x)).numpy(), want, atol=1e-6)


@pytest.mark.parametrize("op", ["LSTM", "GRU"])
def test_the_bridge_runs_onnx_lstm_and_gru_as_onnxruntime_does(tmp_path: Path, op: str) -> None:
    """onnx2torch has no LSTM/GRU (tf2onnx writes every Keras LSTM/GRU layer as one): the
    bridge's own converters compute what onnxruntime does, in each direction, with and
    without an initial state, through the Slice/Expand/Tile static forms too."""
    import onnx
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper, numpy_helper

    from mobilec.formats.coreai_bridge import onnx_to_torch

    rng = np.random.default_rng(0)
    seq, batch, feat, hidden = 5, 2, 3, 4
    gates = 4 if op == "LSTM" else 3
    for direction in ("forward", "reverse", "bidirectional"):
        dirs = 2 if direction == "bidirectional" else 1

        def init(name: str, shape: tuple[int, ...]) -> Any:
            return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

        inits = [init("W", (dirs, gates * hidden, feat)), init("R", (dirs, gates * hidden, hidden)),
                 init("B", (dirs, 2 * gates * hidden)), init("h0", (dirs, 1, hidden)),
                 numpy_helper.from_array(np.array([1, 2, 1], dtype=np.int64), "reps"),
                 numpy_helper.from_array(np.array([dirs, batch, hidden], dtype=np.int64), "hs"),
                 numpy_helper.from_array(np.array([1], dtype=np.int64), "one"),
                 numpy_helper.from_array(np.array([0], dtype=np.int64), "zero")]
        extra = {"linear_before_reset": 1} if op == "GRU" else {}
        state_in = ["h", "h"] if op == "LSTM" else ["h"]
        outputs = ["Y", "Yh", "Yc"] if op == "LSTM" else ["Y", "Yh"]
        nodes = [helper.make_node("Expand", ["h0", "hs"], ["h"]),  # [dirs, batch, hidden]
                 helper.make_node(op, ["x", "W", "R", "B", "", *state_in], outputs,
                                  hidden_size=hidden, direction=direction, **extra),
                 helper.make_node("Slice", ["Y", "zero", "one", "zero"], ["first"]),
                 helper.make_node("Tile", ["Yh", "reps"], ["tiled"]),
                 # onnx2torch hands a whole multi-output node to a graph output: not Y itself
                 helper.make_node("Identity", ["Y"], ["y"])]
        graph = helper.make_graph(
            nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [seq, batch, feat])],
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
             for n in ("y", "first", "tiled")], inits)
        path = tmp_path / f"{op}-{direction}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
        x = rng.standard_normal((seq, batch, feat)).astype(np.float32)
        want = ort.InferenceSession(str(path)).run(None, {"x": x})
        got = onnx_to_torch(path)(torch.tensor(x))
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g.detach().numpy(), w, atol=1e-5, err_msg=direction)


def test_the_bridge_unrolls_onnx_loop_and_reverses_sequences(tmp_path: Path) -> None:
    """tf2onnx writes a masked/bidirectional Keras RNN as Loop over the time steps (reading
    the sequence from the enclosing graph) and ReverseSequence: onnx2torch has neither. The
    bridge runs a constant-trip-count Loop's body per step (torch.export unrolls it) and
    computes what onnxruntime does, exported."""
    import onnx
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper, numpy_helper

    from mobilec.formats.coreai_bridge import bridged_program

    seq, batch, feat = 4, 1, 3
    i64 = lambda name, v: numpy_helper.from_array(np.array(v, dtype=np.int64), name)  # noqa: E731
    body = helper.make_graph(
        [helper.make_node("Gather", ["rev", "t"], ["step"], axis=0),  # rev: outer scope
         helper.make_node("Add", ["h", "step"], ["h2"]),
         helper.make_node("Tanh", ["h2"], ["h_out"]),
         helper.make_node("Add", ["t", "one"], ["t_out"]),
         helper.make_node("Identity", ["cond"], ["cond_out"]),
         helper.make_node("Identity", ["h_out"], ["scan"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("t", TensorProto.INT64, []),
         helper.make_tensor_value_info("h", TensorProto.FLOAT, [batch, feat])],
        [helper.make_tensor_value_info(n, t, None) for n, t in (
            ("cond_out", TensorProto.BOOL), ("t_out", TensorProto.INT64),
            ("h_out", TensorProto.FLOAT), ("scan", TensorProto.FLOAT))],
        [i64("one", 1)])
    graph = helper.make_graph(
        [helper.make_node("ReverseSequence", ["x", "lens"], ["rev"], batch_axis=1, time_axis=0),
         helper.make_node("Loop", ["trip", "true", "t0", "h0"], ["t_end", "h_end", "hs"],
                          body=body),
         helper.make_node("Identity", ["hs"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [seq, batch, feat])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [i64("trip", seq), i64("lens", [3]), i64("t0", 0),
         numpy_helper.from_array(np.array(True), "true"),
         numpy_helper.from_array(np.zeros((batch, feat), np.float32), "h0")])
    path = tmp_path / "loop.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    x = np.random.default_rng(0).standard_normal((seq, batch, feat)).astype(np.float32)
    want = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    ep, _, _ = bridged_program(path, (x,))
    np.testing.assert_allclose(ep.module()(torch.tensor(x)).numpy(), want, atol=1e-6)


@pytest.mark.slow  # a real .aimodel built and run in coreai-core's Linux runtime
def test_the_bridge_leaves_padding_out_of_averagepool_windows_as_onnx_does(
        tmp_path: Path) -> None:
    """ONNX AveragePool excludes padding from its counts by default (tf2onnx writes every
    Keras AveragePooling2D(padding='same') so: inception_v3's .aimodel was at -0.6 dB);
    coreai-torch 0.4.3 counts it. The .aimodel made through the bridge and run on Linux
    computes what onnxruntime does, in float32 and float16, and says it was rewritten."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from mobilec.formats.coreai_bridge import bridged_program
    from mobilec.formats.coreai_convert import convert, save
    from mobilec.formats.coreai_rewrites import rewrite_notes
    from mobilec.formats.coreai_runtime import run_isolated
    from mobilec.util.metrics import snr_db

    graph = helper.make_graph(
        [helper.make_node("AveragePool", ["x"], ["p"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
         helper.make_node("AveragePool", ["p"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                          pads=[1, 1, 1, 1], count_include_pad=1)],  # counted: as it was
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 7, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    path = tmp_path / "pool.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    x = (np.random.default_rng(0).standard_normal((3, 2, 7, 7)) + 2).astype(np.float32)
    want = ort.InferenceSession(str(path)).run(None, {"x": x})[0]
    ep, dynamic, _ = bridged_program(path, (x[:1],), [0])
    assert dynamic
    for mode, floor in (("float32", 100), ("float16", 50)):
        dest = tmp_path / f"pool-{mode}.aimodel"
        save(convert(ep, mode, input_names=["x"], output_names=["y"]), dest)
        got = run_isolated(dest, x, axes={"inputs": [0], "outputs": {"y": 0}})[1][0]
        assert got.shape == want.shape and snr_db(want, got) > floor, (mode, snr_db(want, got))
    assert len(rewrite_notes(ep)) == 1 and "1 average pool" in rewrite_notes(ep)[0]


def test_a_ceil_mode_average_pool_coreai_torch_would_shrink_fails_naming_it() -> None:
    """coreai-torch lowers avg_pool2d as if ceil_mode were False: where the last window is
    partial, the route fails saying so (not a wrong shape found at verification); where the
    windows fit, it converts."""
    import torch

    from mobilec.errors import ConversionError
    from mobilec.formats.coreai_convert import export_decomposed

    def pool(size: int) -> Any:
        class Pool(torch.nn.Module):
            def forward(self, x: Any) -> Any:
                return torch.nn.functional.avg_pool2d(x, size, ceil_mode=True)
        return Pool()

    x = np.zeros((1, 2, 9, 9), np.float32)
    export_decomposed(pool(3), (x,))  # 9 = 3 windows of 3
    with pytest.raises(ConversionError, match=r"avg_pool2d with ceil_mode=True \(output size "
                                              r"\[5, 5\]\).*\(\[4, 4\]\)"):
        export_decomposed(pool(2), (x,))  # 4 windows of 2 and one of 1
