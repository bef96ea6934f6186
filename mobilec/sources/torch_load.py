"""Loading a PyTorch source into the ModelState: a `.pt2` (checked, never running code
from the file) or a factory in user code (only with --trust-code), exported with
torch.export and re-exported from its module, which ExecuTorch lowering needs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mobilec.errors import ModelLoadError
from mobilec.sources.pytorch import (
    count_params,
    describe_io,
    eval_mode,
    export_program,
    load_factory,
    load_pt2,
    reexport,
)
from mobilec.state import ModelState


def load_pt2_source(state: ModelState, path: Path) -> None:
    program = reexport(load_pt2(path))
    _set_torch(state, program, program.module())


def load_module_source(state: ModelState) -> None:
    spec = state.recipe.model
    recipe = state.recipe
    base = Path(recipe.source).resolve().parent if recipe.source != "<recipe>" else Path.cwd()
    module, examples = load_factory(spec.module or "", bool(state.options.get("trust_code")),
                                    base)
    module = eval_mode(module)
    if examples is None:
        if spec.input_shape is None:
            raise ModelLoadError("a PyTorch module needs example inputs to be exported",
                                 where=f"model.module {spec.module!r}",
                                 hint="set model.input_shape (and model.input_dtype), or let the "
                                      "factory return (module, example_inputs)")
        examples = (np.zeros(spec.input_shape, dtype=spec.input_dtype),)
    program = export_program(module, tuple(examples), dynamic_batch=spec.dynamic_batch)
    _set_torch(state, program, module)
    if state.source is not None:
        state.source.params = count_params(module)


def _set_torch(state: ModelState, program: object, module: object) -> None:
    state.torch_program = program
    state.torch_module = module
    state.inputs, state.outputs = describe_io(program)
    # Export fixes every dim but a declared dynamic batch: the data's batch is free, and a
    # fixed-batch program (guards on the batch) is run that many samples at a time.
    batch = state.inputs[0].shape[0] if state.inputs and state.inputs[0].shape else None
    state.torch_batch = batch if isinstance(batch, int) else None
    for spec in state.inputs:
        if spec.shape:
            spec.shape[0] = None
    state.input_layout = "NCHW" if state.inputs and len(state.inputs[0].shape) == 4 else "ND"
    if state.source is not None and state.source.params is None:
        state.source.params = count_params(module)
