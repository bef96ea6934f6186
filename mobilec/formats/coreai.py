"""Core AI: `.aimodel` (a directory: program bytecode, hash, metadata) for Apple's on-device
stack beside Core ML, built with coreai-torch and compressed with coreai-opt
(formats/coreai_convert.py), and run on this host with coreai-core's Linux runtime in a
child process (formats/coreai_runtime.py): verified and measured like `.tflite`, `.onnx`
and `.pte`, never shipped `ok` unverified.

Routes: a PyTorch source (`.pt2`, `model.module`) goes straight through torch.export
(`torch-export`). Keras, SavedModel and ONNX sources take the bridge
(formats/coreai_bridge.py): the model's float32 `.onnx`, along each of the `.onnx` format's
own routes in order (tf2onnx from the model, then from the float32 `.tflite`; an ONNX
source as it is), to PyTorch with onnx2torch, then torch.export — `onnx2torch-<onnx route>`.
The convert stage verifies each result against the source and ships the first that holds.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

from mobilec.delegates.snippets import swift_coreai
from mobilec.errors import UnsupportedError
from mobilec.formats.coreai_bridge import bridged_program
from mobilec.formats.coreai_convert import (
    batch_is_dynamic,
    convert,
    decompose,
    export_decomposed,
    precision_text,
    save,
)
from mobilec.formats.coreai_rewrites import rewrite_notes
from mobilec.formats.coreai_runtime import FUNCTION, prestart, timed_latency, timed_outputs
from mobilec.formats.onnx import float32_onnx, route_names
from mobilec.formats.runtime import align_outputs
from mobilec.formats.torch_onnx import example_inputs
from mobilec.sources.batch import batch_axes
from mobilec.state import Artifact, ModelState
from mobilec.util.forked import run_forked

TORCH_ROUTE = "torch-export"
BRIDGE_PREFIX = "onnx2torch-"
CONVERT_TIMEOUT_S = 3600


class CoreAIFormat:
    name = "coreai"
    suffix = ".aimodel"

    def precheck(self, state: ModelState) -> None:
        missing = [m for m in ("torch", "coreai_torch", "coreai_opt", "coreai")
                   if importlib.util.find_spec(m) is None]
        if missing:
            raise UnsupportedError(
                f"Core AI (.aimodel) needs {', '.join(missing)}, which are not installed",
                where="targets", hint="pip install 'mobilec[torch]' (coreai-core, coreai-torch, "
                                      "coreai-opt), or drop ios-coreai/coreai")

    def routes(self, state: ModelState, artifact: Artifact) -> list[tuple[str, Any]]:
        """torch.export for a PyTorch source; otherwise the ONNX bridge along each of the
        .onnx format's routes, in its order."""
        if _is_torch(state):
            names = [TORCH_ROUTE]
        else:
            names = [BRIDGE_PREFIX + r for r in route_names(state) if r != "torch-dynamo"]
        return [(name, self._along(state, name)) for name in names]

    def _along(self, state: ModelState, route: str) -> Any:
        return lambda art, dest: self.build(state, art, dest, route)

    def build(self, state: ModelState, artifact: Artifact, dest: Path,
              route: str | None = None) -> None:
        """Export, convert, compress and save the .aimodel directory at `dest`."""
        route = route or self.routes(state, artifact)[0][0]
        prestart(early=True)  # on a spare core its imports overlap this conversion
        mode = artifact.quantization
        bits = int((state.plan.options if state.plan else {}).get("bits", 4))
        example = example_inputs(state)  # each input as the model takes it
        folded = False
        axes = batch_axes(state.inputs)
        if route == TORCH_ROUTE:
            ep, dynamic = _torch_program(state, example, axes)
        else:
            ep, dynamic, folded = bridged_program(
                float32_onnx(state, route[len(BRIDGE_PREFIX):]), example, axes)
        notes = rewrite_notes(ep)
        names = [t.name for t in state.inputs], [t.name for t in state.outputs]
        run_forked(lambda: _convert_and_save(ep, mode, bits, names, dest),
                   what="coreai-torch's conversion", timeout_s=CONVERT_TIMEOUT_S)
        artifact.route = route
        artifact.precision = precision_text(mode, bits)
        artifact.input_layout, artifact.input_transpose = state.input_layout, None
        artifact.not_run_reason = None
        if not dynamic:
            artifact.notes.append("exported at batch 1 (the model did not export with a "
                                  "dynamic batch): feed one sample per call")
        if route.startswith(BRIDGE_PREFIX):
            artifact.notes.append(f"reached Core AI through the ONNX bridge: "
                                  f"{route[len(BRIDGE_PREFIX):]} .onnx -> onnx2torch -> "
                                  "torch.export -> coreai-torch")
        artifact.notes.extend(notes)
        if folded:
            artifact.notes.append("the .onnx computes shapes from its inputs at run time: "
                                  "folded into constants at one sample's input shapes "
                                  "(onnxsim) before onnx2torch")

    def runner(self, state: ModelState, artifact: Artifact) -> Any:
        path = artifact.path

        def run(x: Any) -> list[Any]:
            names, outs = timed_outputs(state, path, x)
            return align_outputs(state.outputs, names, outs)

        return run

    def latency(self, state: ModelState, artifact: Artifact, sample: Any) -> dict[str, float]:
        return timed_latency(state, artifact.path, sample)

    def describe_io(self, path: Path, artifact: Artifact) -> dict[str, list[dict[str, Any]]]:
        """The .aimodel's own function signature (names, shapes with None for a dynamic
        batch, dtypes), read from the asset's summary."""
        summary = _summary(path, statistics=False)
        return {"inputs": [_tensor(n, t) for n, t in summary.function_inputs(FUNCTION)],
                "outputs": [_tensor(n, t) for n, t in summary.function_outputs(FUNCTION)]}

    def op_compat(self, path: Path, artifact: Artifact) -> dict[str, Any]:
        """The program's op distribution. Core AI compiles every op of its own op set and
        places each on the Neural Engine, GPU or CPU on the device (specialization)."""
        summary = _summary(path, statistics=True)
        ops = {str(name): int(count) for name, count in summary.operation_distribution
               if name != "constant"}
        total = sum(ops.values())
        return {"delegate": "coreai", "supported": total, "total": total, "unsupported": [],
                "details": [], "ops": ops,
                "storage_types": [f"{t} x{n}" for t, n in summary.storage_types],
                "checked_with": "ops of the converted Core AI program (coreai-core asset "
                                "summary); placement on ANE/GPU/CPU is decided on the device"}

    def loader_snippet(self, artifact: Artifact, manifest: dict[str, Any]) -> tuple[str, str]:
        return "swift", swift_coreai(artifact, manifest)


def _convert_and_save(ep: Any, mode: str, bits: int, names: tuple[list[str], list[str]],
                      dest: Path) -> None:
    """The forked child's work: convert, compress, save (see util/forked.py: one torch thread,
    the parent's OpenMP workers are not in the child)."""
    import torch

    torch.set_num_threads(1)
    save(convert(ep, mode, bits, *names), dest)


def _is_torch(state: ModelState) -> bool:
    return state.torch_module is not None or state.torch_program is not None


def _torch_program(state: ModelState, example: tuple[Any, ...],
                   axes: list[int | None]) -> tuple[Any, bool]:
    """The decomposed program of a PyTorch source and whether its batch is dynamic. The
    program load (or the last training stage) exported is used as it is when it already
    takes any batch: exporting the module again with a symbolic batch was a third of the
    build's CPU (0.14 of 0.6 s on the digits CNN)."""
    program = state.torch_program
    if program is not None and batch_is_dynamic(program, axes):
        return decompose(program), True
    return export_decomposed(_torch_module(state), example, axes)


def _torch_module(state: ModelState) -> Any:
    """The eager module of a PyTorch source."""
    return state.torch_module if state.torch_module is not None else \
        state.torch_program.module()


def _summary(path: Path, statistics: bool) -> Any:
    from coreai.authoring import AIModelAsset

    return AIModelAsset.load(Path(path)).summary(include_statistics=statistics)


_TYPE = re.compile(r"NDArray \((\w+), (.*)\)")


def _tensor(name: str, text: str) -> dict[str, Any]:
    """('input', 'NDArray (Float32, ? × 1 × 8 × 8)') -> name, shape [None, 1, 8, 8], dtype."""
    m = _TYPE.match(text)
    if m is None:
        return {"name": name, "shape": [], "dtype": text}
    dims = [d.strip() for d in m.group(2).split("×")] if m.group(2).strip() else []
    shape = [int(d) if d.isdigit() else None for d in dims]
    return {"name": name, "shape": shape, "dtype": m.group(1).lower()}
