"""The float32 .onnx of a PyTorch source (torch.onnx dynamo exporter, one file), made once
per model version: the `.onnx` artifacts start from it, and so does the ONNX bridge to
TensorFlow (onnx2tf) that the TFLite formats take when litert_torch cannot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mobilec.formats.torch_routes import torch_to_onnx
from mobilec.sources.batch import batch_axes, to_model
from mobilec.state import ModelState


def example_inputs(state: ModelState) -> tuple[Any, ...]:
    """One sample to export with, as a tuple of inputs, each as the model takes it (a batch
    of one on its batch dim; a rank-0 input its value)."""
    return tuple(to_model(state.sample_inputs(1), batch_axes(state.inputs)))


def torch_float32_onnx(state: ModelState) -> Path:
    key = ("torch_float32_onnx", state.model_version)
    if key not in state.memo:
        dest = state.work_dir / f"torch-float32-v{state.model_version}.onnx"
        state.memo[key] = torch_to_onnx(state.torch_program, example_inputs(state), dest,
                                        opset=state.convert_config.opset)
    return state.memo[key]
