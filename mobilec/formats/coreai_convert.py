"""PyTorch -> Core AI program: torch.export, coreai_torch's decomposition table,
`TorchConverter().add_exported_program(ep).to_coreai()`, then the quantize plan applied
the Core AI way (coreai-opt):

- float16: coreai-opt's FP16 cast pass on the ExportedProgram (weights, compute and I/O in
  float16; ops that would overflow stay float32 behind casts);
- dynamic (int8 weights): `quantize_weights` int8, symmetric, per output channel;
- int4: `quantize_weights` int4, symmetric, blocks of 32 along the input channels;
- palettize: `palettize_weights`, k-means lookup table of 2**bits entries per tensor.

The weight passes work on the converted program (data-free) and leave constants under
WEIGHT_THRESHOLD elements (biases, a first 3x3 conv) in float.

The program is exported with a dynamic batch when the model traces that way (the runtime
then takes a whole chunk per call), else at batch 1 (what a phone runs).
"""

from __future__ import annotations

import contextlib
import re
import sys
from pathlib import Path
from typing import Any

from mobilec.errors import MobilecError, UnsupportedError
from mobilec.formats.coreai_rewrites import exact_avg_pools
from mobilec.sources.pytorch import export_program

WEIGHT_THRESHOLD = 1024
INT4_BLOCK = 32
MODES = ("float32", "float16", "dynamic", "int4", "palettize")


def precision_text(mode: str, bits: int = 4) -> str:
    small = f"tensors < {WEIGHT_THRESHOLD} elements stay float32"
    return {
        "float32": "float32 weights and compute",
        "float16": "float16 weights, compute and I/O (coreai-opt FP16 cast)",
        "dynamic": f"int8 weights (symmetric, per output channel; {small}), float32 compute",
        "int4": f"int4 weights (symmetric, blocks of {INT4_BLOCK}; {small}), float32 compute",
        "palettize": f"{bits}-bit palettized weights (k-means lookup table per tensor; {small}),"
                     " float32 compute",
    }[mode]


def export_decomposed(module: Any, example: tuple[Any, ...],
                      dynamic_batch: bool | list[int | None] = True) -> tuple[Any, bool]:
    """The module exported (dynamic batch if asked and it traces so, else at the example's
    batch; a list: each input's batch dim) and decomposed with coreai_torch's table; and
    whether the batch is dynamic."""
    ep = None
    if dynamic_batch:
        with contextlib.suppress(MobilecError):  # then at the example's batch
            ep = export_program(module, example, dynamic_batch=dynamic_batch)
    dynamic = ep is not None
    if ep is None:
        ep = export_program(module, example)
    return decompose(ep), dynamic


def decompose(ep: Any) -> Any:
    """A new ExportedProgram in the ops coreai-torch converts, and converts as PyTorch
    computes them (formats/coreai_rewrites.py); `ep` is left as it is."""
    import coreai_torch

    program = ep.run_decompositions(coreai_torch.get_decomp_table())
    exact_avg_pools(program)
    return program


def batch_is_dynamic(ep: Any, axes: list[int | None]) -> bool:
    """Whether every input of `ep` with a batch dim (`axes`, one per input) takes any batch
    there from 1 up: a symbolic size whose range starts at 1 (a .pt2 traced with
    Dim("batch") may start at 2, and a phone runs one sample)."""
    nodes = {n.name: n for n in ep.graph.nodes}
    names = list(ep.graph_signature.user_inputs)
    if len(names) != len(axes) or all(k is None for k in axes):
        return False
    for name, k in zip(names, axes, strict=True):
        if k is None:
            continue
        val = nodes[name].meta.get("val") if name in nodes else None
        shape = getattr(val, "shape", ())
        if len(shape) <= k or isinstance(shape[k], int):
            return False
        bound = ep.range_constraints.get(getattr(shape[k], "node", None) and shape[k].node.expr)
        if bound is None or int(bound.lower) > 1:
            return False
    return True


def convert(ep: Any, mode: str, bits: int = 4, input_names: list[str] | None = None,
            output_names: list[str] | None = None) -> Any:
    """The Core AI program of a decomposed ExportedProgram, compressed for `mode`; its
    function's inputs and outputs take the source model's names when they fit."""
    import coreai_torch

    if mode not in MODES:
        raise UnsupportedError(f"Core AI artifacts are {', '.join(MODES)}, not {mode}",
                               where="stages.quantize.mode")
    if mode == "float16":
        from coreai_opt.casting import cast_fp32_to_fp16

        ep = cast_fp32_to_fp16(ep)
    with _quiet():
        converter = coreai_torch.TorchConverter(mode=coreai_torch.TorchConverter.Mode.RELEASE)
        program = converter.add_exported_program(
            ep, input_names=_names(input_names, len(ep.graph_signature.user_inputs)),
            output_names=_names(output_names, len(ep.graph_signature.user_outputs))
        ).to_coreai()
    return compress(program, mode, bits)


def _names(names: list[str] | None, count: int) -> list[str] | None:
    """The source's tensor names as identifiers ('serving_default_x:0' -> ...x_0), or None
    (the converter's own) when they do not match the program one to one."""
    if not names or len(names) != count:
        return None
    clean = [re.sub(r"\W", "_", n).strip("_") or f"t{i}" for i, n in enumerate(names)]
    return clean if len(set(clean)) == len(clean) else None


def compress(program: Any, mode: str, bits: int = 4) -> Any:
    """coreai-opt's data-free weight passes on a converted program."""
    if mode in ("float32", "float16"):
        return program
    from coreai_opt.coreai_utils import (
        CompressionGranularity,
        DType,
        palettize_weights,
        quantize_weights,
    )

    with _quiet():
        if mode == "dynamic":
            return quantize_weights(program, DType.INT8,
                                    granularity=CompressionGranularity.PER_CHANNEL,
                                    weight_num_threshold=WEIGHT_THRESHOLD)
        if mode == "int4":
            return quantize_weights(program, DType.INT4,
                                    granularity=CompressionGranularity.PER_BLOCK,
                                    block_size=INT4_BLOCK, weight_num_threshold=WEIGHT_THRESHOLD)
        # One k-means worker: its default pool of 4 forked processes deadlocked under
        # torch's threads (measured: a hang with no CPU use), and this machine has 2 cores.
        return palettize_weights(program, None, n_bits=bits,
                                 granularity=CompressionGranularity.PER_TENSOR,
                                 weight_num_threshold=WEIGHT_THRESHOLD, num_kmeans_workers=1)


def save(program: Any, dest: Path) -> None:
    """save_asset into `dest` (a directory named *.aimodel; save_asset takes a Path only)."""
    with _quiet():
        program.save_asset(Path(dest))


@contextlib.contextmanager
def _quiet() -> Any:
    # coreai-torch prints a progress banner on stdout; mobilec's --json needs stdout clean.
    with contextlib.redirect_stdout(sys.stderr):
        yield
