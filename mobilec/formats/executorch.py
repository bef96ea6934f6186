"""ExecuTorch `.pte`: XNNPACK-lowered programs (float32, PT2E int8), run with ExecuTorch's
Python runtime on this host.

Real models break the plain `to_edge_transform_and_lower` call in more than one
way (XNNPACK's channels-last pass asserts on some layer patterns; an int8 program
can lower and still fail at run time), so a `.pte` is built along ROUTES, in
order; each result is run here against the eager module and the first that
verifies ships. The artifact names its route and every route that failed, why.

The program is exported with batch 1 (what a phone runs): ExecuTorch 1.5.1's
runtime refuses larger batches than its memory plan even for a dynamic batch dim
(measured: a Dim(max=512) program takes at most 15), so the runner feeds one
sample at a time.

The runtime is native code that a bad program can crash (a use-after-free while
developing this module took the whole process down with SIGSEGV), so every run of
a .pte (route check, evaluation, latency) happens in a child process: a crash
fails that route, not mobilec. The price is ~4 s of imports per run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mobilec.errors import ConversionError, UnsupportedError, stop_if_interrupted
from mobilec.formats.runtime import measure_latency
from mobilec.sources.batch import (
    Inputs,
    as_list,
    first_n,
    length,
    map_inputs,
    synthetic_inputs,
    take,
)
from mobilec.state import Artifact, ModelState
from mobilec.util.metrics import fidelity, passes

BACKEND = "XnnpackBackend"
ROUTE_VERIFY_SAMPLES = 128  # as many as the convert stage verifies on
CALIBRATION_BATCH = 32
RUN_TIMEOUT_S = 600
# An int8 route "verifies" when it is the same model, not when it is as exact as float:
# the accuracy budget judges its quality. Below these it is broken (layout, scales).
INT8_MIN_TOP1 = 0.9
INT8_MIN_SNR_DB = 10.0
PRECISION = {
    "float32": "float32 weights and compute",
    "int8": "int8 weights (per-channel) and activations, float32 I/O (PT2E, XNNPACKQuantizer)",
}


@dataclass(frozen=True)
class Route:
    name: str
    decompose: bool  # run_decompositions() before lowering
    delegate: bool  # XNNPACK partitioner; False: portable kernels only
    quantizer: str = "per-channel"  # int8 only: per-channel (all ops) | per-op (conv/linear)
    int8_only: bool = False


ROUTES = (
    Route("xnnpack", decompose=False, delegate=True),
    Route("xnnpack-decomposed", decompose=True, delegate=True),
    Route("xnnpack-int8-per-op", decompose=True, delegate=True, quantizer="per-op",
          int8_only=True),
    Route("portable", decompose=True, delegate=False),
)


class ExecuTorchFormat:
    name = "executorch"
    suffix = ".pte"
    modes = frozenset({"int8"})

    def precheck(self, state: ModelState) -> None:
        if state.torch_module is None and state.torch_program is None:
            raise UnsupportedError(
                "ExecuTorch (.pte) needs a PyTorch source (model.path: x.pt2 or model.module)",
                where="convert.formats", hint="drop executorch from the formats, or start "
                                              "from the PyTorch model")

    def build(self, state: ModelState, artifact: Artifact, dest: Path) -> None:
        """Try ROUTES in order; write the first .pte that runs and matches eager PyTorch."""
        self.precheck(state)
        mode = artifact.quantization
        if mode not in ("float32", "int8"):
            raise UnsupportedError(f"ExecuTorch artifacts are float32 or int8, not {mode}",
                                   where="stages.quantize.mode")
        if mode == "int8" and _calibration(state) is None:
            raise UnsupportedError("int8 .pte needs calibration data and the recipe has none",
                                   hint="add a data: section (train or eval), or ask for float32")
        module = _eager_module(state)
        x_ver = _verification_inputs(state)
        from mobilec.sources.pytorch import eager_runner

        reference = eager_runner(module)(x_ver)
        failed: list[dict[str, str]] = []
        for route in ROUTES:
            if route.int8_only and mode != "int8":
                continue
            try:
                buffer, delegation = lower(module, first_n(x_ver, 1), route, mode,
                                           _calibration(state))
                dest.write_bytes(buffer)
                got = run_isolated(dest, x_ver)
            except Exception as exc:  # noqa: BLE001 - each route fails in its own way
                stop_if_interrupted(exc)  # a signal wrapped by the converter still stops
                failed.append({"route": route.name, "reason": _reason(exc)})
                continue
            fid = fidelity(reference, got)
            ok, why = _passes(state, fid, mode)
            if not ok:
                failed.append({"route": route.name, "reason": f"verification: {why}"})
                continue
            _record(artifact, route, failed, delegation, fid, length(x_ver))
            return
        dest.unlink(missing_ok=True)
        artifact.routes_failed = failed
        raise ConversionError("no ExecuTorch route produced a .pte that matches the model: " +
                              "; ".join(f"{f['route']}: {f['reason']}" for f in failed),
                              hint="the routes and reasons are in the report's routes_failed")

    def runner(self, state: ModelState, artifact: Artifact) -> Any:
        path, transpose = artifact.path, artifact.input_transpose
        return lambda x: run_isolated(path, _transposed(x, transpose))

    def latency(self, state: ModelState, artifact: Artifact, sample: Inputs
                ) -> dict[str, float]:
        x1 = _transposed(first_n(sample, 1), artifact.input_transpose)
        return run_isolated(artifact.path, x1, latency=True)


def _transposed(x: Inputs, transpose: tuple[int, ...] | None) -> Inputs:
    if not transpose:
        return x
    return map_inputs(x, lambda a: np.transpose(a, transpose) if a.ndim == len(transpose) else a)


def _record(artifact: Artifact, route: Route, failed: list[dict[str, str]],
            delegation: dict[str, Any], fid: dict[str, Any], samples: int) -> None:
    artifact.route = route.name
    artifact.routes_failed = failed
    artifact.delegation = delegation
    artifact.precision = PRECISION.get(artifact.quantization, artifact.quantization)
    if artifact.quantization == "int8" and route.quantizer == "per-op":
        artifact.quantizer = "PT2E XNNPACKQuantizer, conv/linear only, per-tensor"
        artifact.precision = "int8 conv/linear (per-tensor), other ops float32; float32 I/O"
    elif artifact.quantization == "int8":
        artifact.quantizer = "PT2E XNNPACKQuantizer, per-channel"
    artifact.verification = {"against": "eager PyTorch", "samples": samples, **fid}
    if not route.delegate:
        artifact.delegate, artifact.fallback = None, None
        artifact.notes.append("no XNNPACK delegate in this .pte: every op runs on ExecuTorch's "
                              "portable kernels")
    if delegation["non_delegated_ops"] and any("quantize" in op for op in
                                                delegation["non_delegated_ops"]):
        artifact.notes.append("the app must link ExecuTorch's quantized kernels "
                              "(quantized_ops_lib): quantize/dequantize run outside the delegate")
    for f in failed:
        artifact.notes.append(f"route {f['route']} failed: {f['reason']}")
    artifact.notes.append(f"route {route.name}: {delegation['delegated']} ops delegated to "
                          f"{delegation['backend'] or 'no backend'}, "
                          f"{delegation['non_delegated']} on portable kernels")


def lower(module: Any, example: Inputs, route: Route, mode: str,
          calibration: Inputs | None) -> tuple[bytes, dict[str, Any]]:
    """Export `module` at batch 1, quantize (int8), lower along `route`; the .pte bytes and
    the delegation counts."""
    import torch
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower

    from mobilec.sources.pytorch import export_program, to_tensor

    if mode == "int8":
        # Registers the quantized_decomposed out-variants: without them a program whose
        # quantize/dequantize ops stay outside the delegate cannot be emitted.
        import executorch.kernels.quantized  # noqa: F401
        if calibration is None:
            raise UnsupportedError("int8 needs calibration data and the recipe has none",
                                   hint="add a data: section, or ask for float32")
        module = quantize_pt2e(module, example, calibration, route.quantizer)
    ep = export_program(module, tuple(to_tensor(a) for a in as_list(example)))
    if route.decompose:
        ep = ep.run_decompositions()
    partitioners = []
    if route.delegate:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        partitioners = [XnnpackPartitioner()]
    with torch.no_grad():
        edge = to_edge_transform_and_lower(
            ep, partitioner=partitioners,
            # quantize/dequantize ops are not core ATen: the IR check would reject them
            compile_config=EdgeCompileConfig(_check_ir_validity=mode != "int8"))
        program = edge.to_executorch()
    return program.buffer, delegation_counts(edge, route.delegate)


def quantize_pt2e(module: Any, example: Inputs, calibration: Inputs, variant: str) -> Any:
    """PT2E int8 for XNNPACK: prepare, calibrate on the recipe's data, convert."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from mobilec.sources.pytorch import export_program, to_tensor

    quantizer = XNNPACKQuantizer()
    if variant == "per-op":
        # Only the weight-heavy ops, per-tensor: adds, concats and pools stay float,
        # which avoids the int8 layout mismatches some graphs hit at run time.
        cfg = get_symmetric_quantization_config(is_per_channel=False)
        for op in (torch.ops.aten.conv2d.default, torch.ops.aten.conv1d.default,
                   torch.ops.aten.linear.default):
            quantizer.set_operator_type(op, cfg)
    else:
        quantizer.set_global(get_symmetric_quantization_config(is_per_channel=True))
    # Dynamic batch so calibration runs in batches; a model that will not trace that
    # way is calibrated one sample at a time.
    args = tuple(as_list(example))
    try:
        gm, step = export_program(module, args, dynamic_batch=True).module(), CALIBRATION_BATCH
    except Exception:  # noqa: BLE001 - fall back to the static batch-1 graph
        gm, step = export_program(module, args).module(), 1
    prepared = prepare_pt2e(gm, quantizer)
    with torch.no_grad():
        for i in range(0, length(calibration), step):
            prepared(*[to_tensor(a) for a in as_list(take(calibration, slice(i, i + step)))])
    return convert_pt2e(prepared)


def delegation_counts(edge: Any, delegated: bool) -> dict[str, Any]:
    """ExecuTorch's delegation info: nodes inside XNNPACK subgraphs vs. outside."""
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(edge.exported_program().graph_module)
    # getitem/sym_size/alloc are bookkeeping, not kernels: leave them out of the list
    portable = sorted(op for op, b in info.delegation_by_operator.items()
                      if b.non_delegated and op not in ("getitem", "sym_size", "alloc"))
    return {"delegated": int(info.num_delegated_nodes),
            "non_delegated": int(info.num_non_delegated_nodes),
            "subgraphs": int(info.num_delegated_subgraphs),
            "non_delegated_ops": portable,
            "backend": BACKEND if delegated and info.num_delegated_subgraphs else None}


def pte_runner(path: Path) -> Any:
    """A runner over a batch-1 .pte: one sample at a time, outputs concatenated."""
    import torch

    from mobilec.sources.pytorch import to_tensor

    method = _load_method(path)

    def run(x: Inputs) -> list[np.ndarray]:
        per_sample = []
        for i in range(length(x)):
            out = method.execute(tuple(to_tensor(a) for a in as_list(take(x, slice(i, i + 1)))))
            per_sample.append([o.detach().float().numpy() if isinstance(o, torch.Tensor)
                               else np.asarray(o, dtype=np.float32) for o in out])
        return [np.concatenate([s[k] for s in per_sample]) for k in range(len(per_sample[0]))]

    return run


def run_isolated(path: Path, x: Inputs, latency: bool = False) -> Any:
    """Run a .pte in a child process: its outputs on `x` (or, with latency, the latency
    of one sample). A runtime crash becomes a ConversionError naming the signal."""
    with tempfile.TemporaryDirectory(prefix="mobilec-pte-") as tmp:
        xin, out = Path(tmp) / "x.npz", Path(tmp) / "out.npz"
        np.savez(xin, *[np.ascontiguousarray(a) for a in as_list(x)])
        code = ("import sys; from mobilec.formats.executorch import _child_main; "
                "_child_main(sys.argv[1:])")
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        args = [sys.executable, "-c", code, str(path), str(xin), str(out)]
        try:
            proc = subprocess.run(args + (["--latency"] if latency else []), env=env,
                                  capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            raise ConversionError(f"the .pte did not finish in {RUN_TIMEOUT_S} s") from exc
        if proc.returncode != 0:
            raise ConversionError(_child_failure(proc.returncode, proc.stderr))
        if latency:
            return json.loads(out.read_text())
        with np.load(out) as z:
            return [z[f"arr_{i}"] for i in range(len(z.files))]


def _child_failure(code: int, stderr: str) -> str:
    if code < 0:
        import signal

        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"the ExecuTorch runtime crashed ({name}) running the .pte"
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error" in ln or "error" in ln]
    return f"the .pte failed in the ExecuTorch runtime: {(errors or lines or ['?'])[-1][:300]}"


def _child_main(argv: list[str]) -> None:
    """Child process entry: run the .pte on the saved inputs, save the outputs."""
    path, xin, out = Path(argv[0]), Path(argv[1]), Path(argv[2])
    with np.load(xin) as z:
        parts = [z[f"arr_{i}"] for i in range(len(z.files))]
    x = parts[0] if len(parts) == 1 else parts
    if "--latency" in argv[3:]:
        # One thread, like every latency mobilec reports (a throwaway process: the
        # "unsafe" reset cannot race anything here).
        try:
            from executorch.extension.pybindings import portable_lib

            portable_lib._unsafe_reset_threadpool(1)
        except (ImportError, AttributeError):
            pass
        method = _load_method(path)
        from mobilec.sources.pytorch import to_tensor

        inputs = tuple(to_tensor(a) for a in as_list(first_n(x, 1)))
        out.write_text(json.dumps(measure_latency(lambda: method.execute(inputs))))
        return
    np.savez(out, *pte_runner(path)(x))


def _load_method(path: Path) -> Any:
    # Quantized kernels (quantize/dequantize outside XNNPACK) are a separate library in
    # the Python runtime: without this import an int8 portable .pte fails to load (0x14).
    import executorch.kernels.quantized  # noqa: F401
    from executorch.runtime import Runtime

    # Program from bytes: the runtime then never holds the file open (Windows, atomic moves).
    program = Runtime.get().load_program(Path(path).read_bytes())
    method = program.load_method("forward")
    if method is None:
        raise ConversionError(f"{Path(path).name} has no forward method")
    # A Method does not keep its Program (which owns the buffer) alive: when the Program
    # is collected the method reads freed memory (measured: garbage shapes, SIGSEGV).
    return _MethodHandle(program, method)


class _MethodHandle:
    """A loaded method together with the program it lives in."""

    def __init__(self, program: Any, method: Any) -> None:
        self.program = program
        self.method = method

    def execute(self, inputs: Any) -> Any:
        return self.method.execute(inputs)


def _eager_module(state: ModelState) -> Any:
    if state.torch_module is not None:
        return state.torch_module
    return state.torch_program.module()


def _verification_inputs(state: ModelState) -> Inputs:
    calib = None if state.data is None or state.data.calibration is None \
        else state.data.calibration.x
    for x in (state.eval_x, calib):
        if x is not None and length(x):
            return first_n(x, ROUTE_VERIFY_SAMPLES)
    return synthetic_inputs(state.inputs, 4)


def _calibration(state: ModelState) -> Inputs | None:
    if state.data is None or state.data.calibration is None:
        return None
    return state.data.calibration.x


def _passes(state: ModelState, fid: dict[str, Any], mode: str) -> tuple[bool, str]:
    if mode == "int8":
        return passes(fid, INT8_MIN_TOP1, INT8_MIN_SNR_DB)
    verify = getattr(state.recipe, "verify", None)
    return passes(fid, getattr(verify, "min_top1_agreement", 0.99),
                  getattr(verify, "min_snr_db", 20.0))


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc).strip() or repr(exc)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    # torch errors often end with the useful line; ExecuTorch's start with it
    line = lines[0] if lines else type(exc).__name__
    return f"{type(exc).__name__}: {line.strip()[:300]}"
