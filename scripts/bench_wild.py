"""A four-format int8 compress of the corpus detector vs the plain export/quantize calls.

    .venv/bin/python scripts/bench_wild.py [--rounds 1] [--work DIR] [--size 64]

The model is the conformance corpus' `torch_yolo_split` (YOLOv8-style: C2f blocks whose
`chunk` is an ONNX Split, a split head), built here at --size px. mobilec's side is
`mobilec compress` with targets cpu, ios-coreml and android-executorch and quantize int8:
float32 and int8 .tflite and .onnx, int8 Core ML (plus its float32 baseline), int8 .pte (plus
its float32 baseline), each verified and evaluated. The plain side (`--plain`, one process) is
the calls a user would write for the same eight files and nothing else: torch.onnx.export,
onnxruntime's quantize_static, litert_torch (float32 .tflite), onnx2tf + the TFLite converter
(int8 .tflite), coremltools + linear_quantize_weights, ExecuTorch's XNNPACK flow (float32,
PT2E int8). Both run in fresh processes, interleaved round by round; the ratio is of wall
times (the target: <= 2x).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shutil
import sys
from pathlib import Path

import numpy as np
from benchlib import BIN, ROOT, header, median, run_measured

sys.path.insert(0, str(ROOT / "scripts"))

RECIPE = """\
version: 1
name: yolo
model: {{path: {model}}}
data: {{source: npz, eval: {npz}, calibration_samples: {calib}, eval_samples: {n}}}
stages:
  - quantize: {{mode: int8}}
  - convert: {{formats: [tflite, onnx, coreml, executorch]}}
targets: [cpu, ios-coreml, android-executorch]
output: {{report: [json]}}
"""
CALIBRATION = 32


def build(work: Path, size: int) -> tuple[Path, Path]:
    import torch
    from conformance_torch import _nchw, yolo_split

    torch.manual_seed(0)
    module = yolo_split().eval()
    x = _nchw(size)(np.random.default_rng(0), 64)
    torch.export.save(torch.export.export(module, (torch.from_numpy(x[:1]),)),
                      str(work / "yolo.pt2"))
    np.savez(work / "yolo.npz", x=x)
    params = sum(p.numel() for p in module.parameters())
    print(f"model: torch_yolo_split at {size} px, {params} parameters")
    return work / "yolo.pt2", work / "yolo.npz"


def plain(model: Path, npz: Path, out: Path) -> None:
    """The eight files by hand: export and quantize calls only, no checks."""
    import os

    os.environ["TF_USE_LEGACY_KERAS"] = "1"  # onnx2tf builds a tf_keras model
    import coremltools as ct
    import litert_torch
    import onnx2tf
    import tensorflow as tf
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    out.mkdir(parents=True, exist_ok=True)
    ep = torch.export.load(str(model))
    x = np.load(npz)["x"][:CALIBRATION]
    args = (torch.from_numpy(x[:1]),)
    module = ep.module()
    with contextlib.redirect_stdout(io.StringIO()):
        # .onnx: float32, then static int8 QDQ per channel
        torch.onnx.export(ep, args, str(out / "f32.onnx"), dynamo=True, opset_version=18,
                          external_data=False)

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.it = iter({"x": x[i:i + 1]} for i in range(len(x)))

            def get_next(self) -> dict[str, np.ndarray] | None:
                return next(self.it, None)

        quantize_static(str(out / "f32.onnx"), str(out / "int8.onnx"), Reader(),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=QuantType.QInt8, activation_type=QuantType.QInt8)
        # .tflite: float32 with litert_torch; int8 (float I/O) through onnx2tf's SavedModel
        litert_torch.convert(module, args).export(str(out / "f32.tflite"))
        shutil.copyfile(out / "f32.onnx", out / "bridge.onnx")  # onnx2tf rewrites its input
        # This host is offline: onnx2tf's sample-image download gets local stand-ins
        import onnx2tf.onnx2tf as o2t_main
        import onnx2tf.utils.common_functions as o2t_common

        o2t_main.download_test_image_data = o2t_common.download_test_image_data = (
            lambda: np.random.default_rng(0).random((20, 128, 128, 3), dtype=np.float32))
        keras_model = onnx2tf.convert(input_onnx_file_path=str(out / "bridge.onnx"),
                                      output_folder_path=str(out / "onnx2tf"),
                                      disable_model_save=True, non_verbose=True)
        conv = tf.lite.TFLiteConverter.from_keras_model(keras_model)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        nhwc = np.transpose(x, (0, 2, 3, 1))
        conv.representative_dataset = lambda: ([nhwc[i:i + 1]] for i in range(len(nhwc)))
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        (out / "int8.tflite").write_bytes(conv.convert())
        # Core ML: float32 mlprogram, int8 weights
        ml = ct.convert(ep.run_decompositions({}), convert_to="mlprogram",
                        skip_model_load=True)
        ml.save(str(out / "f32.mlpackage"))
        cfg = ct.optimize.coreml.OptimizationConfig(global_config=ct.optimize.coreml.
                                                    OpLinearQuantizerConfig(mode="linear_symmetric"))
        ct.optimize.coreml.linear_quantize_weights(ml, cfg).save(str(out / "int8.mlpackage"))
        # .pte: float32 and PT2E int8, XNNPACK
        edge = to_edge_transform_and_lower(ep, partitioner=[XnnpackPartitioner()])
        (out / "f32.pte").write_bytes(edge.to_executorch().buffer)
        quantizer = XNNPACKQuantizer().set_global(
            get_symmetric_quantization_config(is_per_channel=True))
        prepared = prepare_pt2e(torch.export.export(module, args).module(), quantizer)
        with torch.no_grad():
            for i in range(len(x)):
                prepared(torch.from_numpy(x[i:i + 1]))
        edge = to_edge_transform_and_lower(
            torch.export.export(convert_pt2e(prepared), args), partitioner=[XnnpackPartitioner()],
            compile_config=EdgeCompileConfig(_check_ir_validity=False))
        (out / "int8.pte").write_bytes(edge.to_executorch().buffer)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--work", type=Path, default=ROOT / "bench-wild")
    ap.add_argument("--plain", nargs=3, metavar=("MODEL", "NPZ", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.plain:
        plain(*map(Path, args.plain))
        return
    header("bench_wild: four-format int8 compress of a detector vs the plain calls")
    args.work.mkdir(parents=True, exist_ok=True)
    model, npz = build(args.work, args.size)
    recipe = args.work / "yolo.yaml"
    recipe.write_text(RECIPE.format(model=model, npz=npz, calib=CALIBRATION, n=64))
    walls: dict[str, list[float]] = {"plain": [], "mobilec": []}
    cpus: dict[str, list[float]] = {"plain": [], "mobilec": []}
    for i in range(args.rounds):
        for who in (["plain", "mobilec"] if i % 2 == 0 else ["mobilec", "plain"]):
            out = args.work / f"{who}-{i}"
            shutil.rmtree(out, ignore_errors=True)
            cmd = ([sys.executable, __file__, "--plain", str(model), str(npz), str(out)]
                   if who == "plain" else
                   [str(BIN / "mobilec"), "compress", str(recipe), "--out", str(out), "--quiet"])
            m = run_measured(cmd)
            if m.returncode != (0 if who == "plain" else m.returncode) or m.returncode > 1:
                sys.exit(f"{who} failed (exit {m.returncode}):\n{m.stderr[-3000:]}")
            walls[who].append(m.wall_s)
            cpus[who].append(m.cpu_s)
            files = sorted(p.name for p in out.rglob("*") if p.suffix in
                           (".tflite", ".onnx", ".mlpackage", ".pte") and "bridge" not in p.name)
            print(f"round {i} {who:8s} wall {m.wall_s:7.1f} s  cpu {m.cpu_s:7.1f} s  "
                  f"{len(files)} files", flush=True)
    pw, mw = median(walls["plain"]), median(walls["mobilec"])
    pc, mc = median(cpus["plain"]), median(cpus["mobilec"])
    print(f"\n| | plain calls | mobilec compress | ratio |\n|---|---|---|---|\n"
          f"| wall s (median of {args.rounds}) | {pw:.1f} | {mw:.1f} | {mw / pw:.2f}x |\n"
          f"| CPU s (process tree) | {pc:.1f} | {mc:.1f} | {mc / pc:.2f}x |")
    print(f"wall ratio {mw / pw:.2f}x (target <= 2x)")


if __name__ == "__main__":
    main()
