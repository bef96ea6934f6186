"""ExecuTorch `.pte`: XNNPACK-lowered programs (float32, PT2E int8), run with ExecuTorch's
Python runtime on this host.

Real models break the plain `to_edge_transform_and_lower` call in more than one
way (XNNPACK's channels-last pass asserts on some layer patterns; an int8 program
can lower and still fail at run time), so a `.pte` is built along ROUTES, in
order; the convert stage runs each result against the eager module and ships the
first that verifies. The artifact names its route and every route that failed, why.

The program is exported with batch 1 (what a phone runs): ExecuTorch 1.5.1's
runtime refuses larger batches than its memory plan even for a dynamic batch dim
(measured: a Dim(max=512) program takes at most 15), so the runner feeds one
sample at a time.

Every run of a .pte happens in a child process (executorch_runtime).
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mobilec.delegates.snippets import kotlin_executorch, swift_executorch
from mobilec.errors import ConversionError, MobilecError, UnsupportedError, stop_if_interrupted
from mobilec.formats import executorch_quant
from mobilec.formats.executorch_runtime import run_isolated, timed_latency, timed_run
from mobilec.sources.batch import (
    Inputs,
    as_list,
    first_n,
    length,
    map_inputs,
    take,
)
from mobilec.sources.pytorch import export_program, to_tensor
from mobilec.state import Artifact, ModelState

CALIBRATION_BATCH = 32
# ExecuTorch's kernel libraries (their CMake targets), what a .pte may need outside its delegate
QUANTIZED_OPS = "quantized_ops_lib"
PORTABLE_OPS = "portable_ops_lib"
PRECISION = {
    "float32": "float32 weights and compute",
    "int8": "int8 weights (per-channel) and activations, float32 I/O (PT2E, XNNPACKQuantizer)",
    "qat": "int8 weights (per-channel) and activations, quantization-aware trained (PT2E QAT), "
           "float32 I/O",
    **executorch_quant.PRECISION,
}


@dataclass(frozen=True)
class Route:
    name: str
    decompose: bool  # run_decompositions() before lowering
    delegate: bool  # XNNPACK partitioner; False: portable kernels only
    quantizer: str = "per-channel"  # int8 only: per-channel (all ops) | per-op (conv/linear)
    int8_only: bool = False
    # int8 only: quantize the program after run_decompositions(), not the exported one
    quantize_decomposed: bool = False
    backend: str = "xnnpack"  # the partitioner: xnnpack | coreml


# ios-executorch: the Core ML backend first (float32; it runs on Apple devices only, so
# here it is checked structurally), then the XNNPACK routes as its fallback.
COREML_ROUTE = Route("coreml", decompose=False, delegate=True, backend="coreml")
BACKENDS = {"xnnpack": "XnnpackBackend", "coreml": "CoreMLBackend"}
ROUTES = (
    Route("xnnpack", decompose=False, delegate=True),
    Route("xnnpack-decomposed", decompose=True, delegate=True),
    Route("xnnpack-int8-per-op", decompose=True, delegate=True, quantizer="per-op",
          int8_only=True),
    Route("xnnpack-int8-decomposed-per-op", decompose=True, delegate=True, quantizer="per-op",
          int8_only=True, quantize_decomposed=True),
    # Last, no delegate: for an XNNPACK target convert reports it `degraded`, never ok.
    Route("portable", decompose=True, delegate=False),
)


class ExecuTorchFormat:
    name = "executorch"
    suffix = ".pte"
    modes = frozenset({"int8", "qat", *executorch_quant.PRECISION})

    def precheck(self, state: ModelState) -> None:
        if state.torch_module is None and state.torch_program is None:
            raise UnsupportedError(
                "ExecuTorch (.pte) needs a PyTorch source (model.path: x.pt2 or model.module)",
                where="convert.formats", hint="drop executorch from the formats, or start "
                                              "from the PyTorch model")

    def routes(self, state: ModelState, artifact: Artifact) -> list[tuple[str, Any]]:
        """ROUTES in order; the convert stage runs each result against eager PyTorch and
        ships the first that verifies."""
        mode = artifact.quantization
        routes = [route for route in ROUTES if mode == "int8" or not route.int8_only]
        if artifact.delegate == "coreml" and mode == "float32":
            routes.insert(0, COREML_ROUTE)
        return [(route.name, self._along(state, route)) for route in routes]

    def _along(self, state: ModelState, route: Route) -> Any:
        return lambda art, dest: self.build(state, art, dest, route)

    def build(self, state: ModelState, artifact: Artifact, dest: Path,
              route: Route | None = None) -> None:
        """Lower the eager module along `route` (default: the first) and write the .pte."""
        self.precheck(state)
        route = route or ROUTES[0]
        mode = artifact.quantization
        if mode not in PRECISION:
            raise UnsupportedError(f"ExecuTorch artifacts are {', '.join(PRECISION)}, not {mode}",
                                   where="stages.quantize.mode")
        calibration = _calibration(state)
        if mode == "int8" and calibration is None:
            raise UnsupportedError("int8 .pte needs calibration data and the recipe has none",
                                   hint="add a data: section (train or eval), or ask for float32")
        if mode == "qat" and state.torch_qat is None:
            raise UnsupportedError("a qat .pte is converted from the quantization-aware graph "
                                   "the quantize stage trains, and there is none",
                                   where="stages.quantize.mode")
        example = state.sample_inputs(1)
        module = state.torch_qat if mode == "qat" else _eager_module(state)
        try:
            buffer, delegation = lower(module, example, route, mode, calibration,
                                       notes=artifact.notes)
        except MobilecError:
            raise
        except Exception as exc:  # noqa: BLE001 - each route fails in its own way
            stop_if_interrupted(exc)  # a signal wrapped by the converter still stops
            raise ConversionError(_reason(exc), hint=_hint(exc, mode)) from exc
        if route.delegate and not delegation["delegated"]:
            # no op taken: this is the portable program under a delegate's name; the next
            # route may delegate (the portable route comes last, reported as such)
            raise ConversionError(f"the {route.backend} partitioner took no op of the program "
                                  f"(ops: {', '.join(delegation['non_delegated_ops'][:6])})")
        dest.write_bytes(buffer)
        _record(artifact, route, delegation)
        artifact.delegation["io"] = {"inputs": [t.as_dict() | {"shape": [1, *t.shape[1:]]}
                                                for t in state.inputs],
                                     "outputs": [t.as_dict() for t in state.outputs]}

    def runner(self, state: ModelState, artifact: Artifact) -> Any:
        if _coreml_delegated(artifact) and sys.platform != "darwin":
            return None  # the Core ML backend has no runtime here: structural check instead
        path, transpose = artifact.path, artifact.input_transpose
        kernels = _kernels(artifact)
        return lambda x: timed_run(state, path, _transposed(x, transpose), kernels)

    def describe_io(self, path: Path, artifact: Artifact) -> dict[str, list[dict[str, Any]]]:
        return dict((artifact.delegation or {}).get("io") or {"inputs": [], "outputs": []})

    def op_compat(self, path: Path, artifact: Artifact) -> dict[str, Any]:
        """ExecuTorch's delegation info, recorded when the program was lowered."""
        d = artifact.delegation or {}
        total = d.get("delegated", 0) + d.get("non_delegated", 0)
        return {"supported": d.get("delegated", 0), "total": total,
                "unsupported": list(d.get("non_delegated_ops", [])),
                "checked_with": "ExecuTorch get_delegation_info on the lowered program "
                                f"({d.get('backend') or 'no delegate'})"}

    def loader_snippet(self, artifact: Artifact, manifest: dict[str, Any]) -> tuple[str, str]:
        if artifact.target == "ios-executorch":
            return "swift", swift_executorch(artifact, manifest)
        return "kotlin", kotlin_executorch(artifact, manifest)

    def structural_check(self, state: ModelState, artifact: Artifact) -> None:
        """Off macOS, a Core ML-delegated .pte: it was lowered (the delegation counts come
        from the lowered program) and its file is whole; accuracy stays null with the reason."""
        d = artifact.delegation or {}
        if not artifact.path.exists() or artifact.path.stat().st_size == 0 or \
                not d.get("delegated"):
            artifact.status = "failed-verification"
            artifact.error = "the Core ML backend took no op of the program"
            return
        artifact.not_run_reason = ("ExecuTorch's Core ML backend runs on Apple devices only; "
                                   "checked structurally here")
        artifact.verification = {"against": "structure (no Core ML runtime on this host)",
                                 "delegated_ops": d.get("delegated")}

    def latency(self, state: ModelState, artifact: Artifact, sample: Inputs
                ) -> dict[str, float]:
        x1 = _transposed(first_n(sample, 1), artifact.input_transpose)  # unless verify timed it:
        return timed_latency(state, artifact.path) or \
            run_isolated(artifact.path, x1, latency=True, kernels=_kernels(artifact))


def _transposed(x: Inputs, transpose: tuple[int, ...] | None) -> Inputs:
    if not transpose:
        return x
    return map_inputs(x, lambda a: np.transpose(a, transpose) if a.ndim == len(transpose) else a)


def _record(artifact: Artifact, route: Route, delegation: dict[str, Any]) -> None:
    artifact.route = route.name
    artifact.delegation = delegation
    artifact.precision = PRECISION.get(artifact.quantization, artifact.quantization)
    if artifact.quantization == "int8" and route.quantizer == "per-op":
        artifact.quantizer = "PT2E XNNPACKQuantizer, conv/linear only, per-tensor" + (
            ", after run_decompositions()" if route.quantize_decomposed else "")
        artifact.precision = "int8 conv/linear (per-tensor), other ops float32; float32 I/O"
    elif artifact.quantization == "int8":
        artifact.quantizer = "PT2E XNNPACKQuantizer, per-channel"
    elif artifact.quantization == "qat":
        artifact.quantizer = "PT2E XNNPACKQuantizer, per-channel, quantization-aware trained"
    elif executorch_quant.QUANTIZER.get(artifact.quantization):
        artifact.quantizer = executorch_quant.QUANTIZER[artifact.quantization]
    if not route.delegate:
        artifact.notes.append("no XNNPACK delegate in this .pte: every op runs on ExecuTorch's "
                              "portable kernels")
    total = delegation["delegated"] + delegation["non_delegated"]
    delegation["delegated_fraction"] = round(delegation["delegated"] / total, 4) if total else 0.0
    if delegation.get("kernels"):
        artifact.notes.append("the app must link ExecuTorch's " + " and ".join(
            delegation["kernels"]) + (" (quantize/dequantize run outside the delegate)"
                                      if QUANTIZED_OPS in delegation["kernels"] else ""))
    artifact.notes.append(f"route {route.name}: {delegation['delegated']} of {total} ops "
                          f"({delegation['delegated_fraction']:.0%}) delegated to "
                          f"{delegation['backend'] or 'no backend'}, "
                          f"{delegation['non_delegated']} on kernel libraries")


def lower(module: Any, example: Inputs, route: Route, mode: str,
          calibration: Inputs | None, notes: list[str] | None = None
          ) -> tuple[bytes, dict[str, Any]]:
    """Export `module` at batch 1, quantize (int8, or a mode of executorch_quant), lower
    along `route`; the .pte bytes and the delegation counts. Notes on what the mode kept
    float are appended to `notes`."""
    from executorch.exir import EdgeCompileConfig, to_edge_transform_and_lower


    if mode in ("int8", "qat"):
        # Registers the quantized_decomposed out-variants: without them a program whose
        # quantize/dequantize ops stay outside the delegate cannot be emitted.
        import executorch.kernels.quantized  # noqa: F401
    if mode == "qat":  # a trained PT2E QAT graph: its learned ranges, no calibration
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

        module = convert_pt2e(copy.deepcopy(module))
    elif mode == "int8":
        if calibration is None:
            raise UnsupportedError("int8 needs calibration data and the recipe has none",
                                   hint="add a data: section, or ask for float32")
        module = quantize_pt2e(module, example, calibration, route.quantizer,
                               route.quantize_decomposed)
        if not any("quantize" in str(n.target) for n in module.graph.nodes):
            # an XNNPACK int8 route would ship the float program: the portable one says so
            if route.delegate:
                raise ConversionError("XNNPACKQuantizer annotated no op of this program "
                                      "(nothing would be int8)")
            if notes is not None:
                notes.append("no op of this program is one XNNPACKQuantizer quantizes: the "
                             "int8 .pte holds float32 ops")
    elif mode in executorch_quant.PRECISION:
        module, mode_notes = executorch_quant.prepare(module, example, mode)
        if notes is not None:
            notes.extend(n for n in mode_notes if n not in notes)
    ep = export_program(module, tuple(to_tensor(a) for a in as_list(example)))
    if route.decompose:
        ep = ep.run_decompositions()
    partitioners = []
    if route.delegate and route.backend == "coreml":
        from executorch.backends.apple.coreml.partition import CoreMLPartitioner

        partitioners = [CoreMLPartitioner()]
    elif route.delegate:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        partitioners = [XnnpackPartitioner()]
    with executorch_quant.lowering(mode):  # no_grad; float16: fp16 Conv weights
        edge = to_edge_transform_and_lower(
            ep, partitioner=partitioners,
            # quantize/dequantize ops are not core ATen: the IR check would reject them
            compile_config=EdgeCompileConfig(_check_ir_validity=mode in ("float32", "float16")))
        program = edge.to_executorch()
    delegation = delegation_counts(edge, BACKENDS[route.backend] if route.delegate else None)
    delegation["kernels"] = kernel_libraries(program.executorch_program)
    return program.buffer, delegation


def quantize_pt2e(module: Any, example: Inputs, calibration: Inputs, variant: str,
                  decomposed: bool = False) -> Any:
    """PT2E int8 for XNNPACK: prepare, calibrate on the recipe's data, convert.
    `decomposed`: annotate the program after run_decompositions() (its convolutions are
    aten.convolution, the ops XNNPACK's partitioner sees) rather than the exported one."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e


    quantizer = XNNPACKQuantizer()
    if variant == "per-op":
        # Only the weight-heavy ops, per-tensor: adds, concats and pools stay float,
        # which avoids the int8 layout mismatches some graphs hit at run time.
        cfg = get_symmetric_quantization_config(is_per_channel=False)
        for op in (torch.ops.aten.conv2d.default, torch.ops.aten.conv1d.default,
                   torch.ops.aten.convolution.default, torch.ops.aten.linear.default):
            quantizer.set_operator_type(op, cfg)
    else:
        quantizer.set_global(get_symmetric_quantization_config(is_per_channel=True))
    # Dynamic batch so calibration runs in batches; a model that will not trace that
    # way is calibrated one sample at a time.
    args = tuple(as_list(example))

    def graph(**kw: Any) -> Any:
        ep = export_program(module, args, **kw)
        # {}: functional ATen with conv2d/linear kept (a full decomposition turns them into
        # convolution/addmm, which XNNPACKQuantizer's annotators do not match: nothing int8)
        return (ep.run_decompositions({}) if decomposed else ep).module()

    try:
        gm, step = graph(dynamic_batch=True), CALIBRATION_BATCH
    except Exception:  # noqa: BLE001 - fall back to the static batch-1 graph
        gm, step = graph(), 1
    prepared = prepare_pt2e(gm, quantizer)
    with torch.no_grad():
        for i in range(0, length(calibration), step):
            prepared(*[to_tensor(a) for a in as_list(take(calibration, slice(i, i + step)))])
    return convert_pt2e(prepared)


def delegation_counts(edge: Any, backend: str | None) -> dict[str, Any]:
    """ExecuTorch's delegation info: nodes inside the backend's subgraphs vs. outside."""
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(edge.exported_program().graph_module)
    # getitem/sym_size/alloc are bookkeeping, not kernels: leave them out of the list
    portable = sorted(op for op, b in info.delegation_by_operator.items()
                      if b.non_delegated and op not in ("getitem", "sym_size", "alloc"))
    return {"delegated": int(info.num_delegated_nodes),
            "non_delegated": int(info.num_non_delegated_nodes),
            "subgraphs": int(info.num_delegated_subgraphs),
            "non_delegated_ops": portable,
            "backend": backend if backend and info.num_delegated_subgraphs else None}


def kernel_libraries(program: Any) -> list[str]:
    """The kernel libraries the emitted program calls outside its delegates, read from its
    operator table: `quantized_ops_lib` for quantized_decomposed::* (quantize/dequantize
    left outside the delegate), `portable_ops_lib` for any other operator (aten::*). An app
    must link exactly these (plus the delegate's backend); the runner loads exactly these."""
    names = {op.name for plan in program.execution_plan for op in plan.operators}
    libs = []
    if any(n.startswith("quantized_decomposed::") for n in names):
        libs.append(QUANTIZED_OPS)
    if any(not n.startswith("quantized_decomposed::") for n in names):
        libs.append(PORTABLE_OPS)
    return libs


def _eager_module(state: ModelState) -> Any:
    if state.torch_module is not None:
        return state.torch_module
    return state.torch_program.module()


def _calibration(state: ModelState) -> Inputs | None:
    if state.data is None or state.data.calibration is None:
        return None
    return state.data.calibration.x


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc).strip() or repr(exc)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    # torch errors often end with the useful line; ExecuTorch's start with it
    line = lines[0] if lines else type(exc).__name__
    return f"{type(exc).__name__}: {line.strip()[:300]}"


# What PyTorch says when an integer tensor (embedding / gather indices) reached an op as float:
# PT2E int8 observed and fake-quantized it like an activation.
_INDEX_AS_FLOAT = ("'indices' to have one of the following scalar types",
                   "tensors used as indices must be long")


def _hint(exc: BaseException, mode: str) -> str | None:
    """What to do about a known failure (None: the reason says it all)."""
    if mode == "int8" and any(m in str(exc) for m in _INDEX_AS_FLOAT):
        return ("PT2E int8 quantizes every activation, and this model computes integer index "
                "tensors (embedding/gather indices), which it turned to float: no int8 route "
                "can calibrate it. Ship the .pte as float16 (quantize: {mode: float16}) or "
                "float32, and take int8 from the .tflite/.onnx")
    return None


def _kernels(artifact: Artifact) -> list[str] | None:
    """The kernel libraries the .pte was emitted to need (None: not recorded, load all)."""
    return (artifact.delegation or {}).get("kernels")


def _coreml_delegated(artifact: Artifact) -> bool:
    return (artifact.delegation or {}).get("backend") == BACKENDS["coreml"]
