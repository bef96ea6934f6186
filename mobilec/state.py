"""ModelState: the one object every stage takes and returns."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mobilec.formats import FORMATS
from mobilec.recipe.schema import ConvertConfig, Recipe
from mobilec.sources.batch import first_n, sample_shape, synthetic_inputs
from mobilec.sources.data import Dataset
from mobilec.sources.labels import LabelOutput
from mobilec.util.metrics import accuracy


@dataclass
class TensorSpec:
    name: str
    shape: list[int | None]
    dtype: str = "float32"
    # The dim the samples go along (`state` [2, batch, 128]: 1); None for a rank-0 input, one
    # value for the whole batch. mobilec's data holds every input samples first
    # (sources/batch.py: to_model / from_model move them where the model takes them).
    batch_axis: int | None = 0

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "shape": self.shape, "dtype": self.dtype}
        if self.batch_axis != 0:  # the usual batch-first input says nothing more
            out["batch_axis"] = self.batch_axis
        return out

    def sample_shape(self) -> list[int | None]:
        """The shape of one sample: the batch dim left out (a scalar's is [])."""
        return sample_shape(self.shape, self.batch_axis)


@dataclass
class SourceInfo:
    path: Path
    format: str
    sha256: str
    size_bytes: int
    params: int | None = None


@dataclass
class QuantPlan:
    """What the quantize stage decided; each format applies it its own way."""
    mode: str  # float32 | dynamic | float16 | int8 | int8-io | int16x8 | int4 | palettize | qat
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Artifact:
    path: Path
    format: str
    quantization: str
    target: str | None = None  # None for a float32 baseline no target asked for
    role: str = "artifact"  # artifact | baseline | candidate
    delegate: str | None = None
    fallback: str | None = None
    # ok | unverified (no runtime here; structure checked, built from a verified graph) |
    # degraded | failed | failed-verification | skipped
    status: str = "ok"
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    input_layout: str | None = None
    # Applied to the recipe's (model-layout) data before this artifact runs.
    input_transpose: tuple[int, ...] | None = None
    io_quant: dict[str, Any] | None = None  # int8-io: scale/zero-point per input and output
    precision: str | None = None  # what the weights hold, e.g. "int8 weights, float16 compute"
    metrics: dict[str, Any] = field(default_factory=dict)  # filled by evaluate
    # Report fields a format, the verifier or the delegate planner fills (typed, not a bag).
    route: str | None = None  # the conversion route that produced the shipped file
    routes_failed: list[dict[str, Any]] = field(default_factory=list)  # {route, reason}
    verification: dict[str, Any] | None = None  # fidelity against the converter's input
    kept_float: list[str] | None = None  # keep_float: layers left in float
    quantizer: str | None = None  # the tool that quantized, when not the converter itself
    coreml: dict[str, Any] | None = None  # kind, deployment target, compute units
    delegation: dict[str, Any] | None = None  # ExecuTorch: delegated vs. portable ops
    not_run_reason: str | None = None  # why this host cannot execute the artifact
    # The intermediate graphs it was built from, each verified against the source
    # (formats/intermediate.py): {graph, samples, top1_agreement, snr_db, max_abs_err[, accuracy]}.
    built_from: list[dict[str, Any]] | None = None
    op_compat: dict[str, Any] | None = None
    inputs: list[dict[str, Any]] | None = None  # the file's own inputs: name, shape, dtype
    outputs: list[dict[str, Any]] | None = None  # the file's own outputs: name, shape, dtype
    # {inputs|outputs: {name in this file: the source's name}} where a format renamed them
    io_names: dict[str, dict[str, str]] | None = None
    io_dtypes: list[str] | None = None  # tensors this file takes or gives in another dtype
    delegate_manifest: str | None = None  # path of <artifact>.delegate.json
    slower_than_float32: float | None = None
    manifest: dict[str, Any] | None = None  # the delegate manifest being assembled (not reported)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class StageResult:
    name: str
    status: str = "ok"  # ok | failed | skipped
    seconds: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class ModelState:
    recipe: Recipe
    out_dir: Path
    work_dir: Path
    options: dict[str, Any] = field(default_factory=dict)  # CLI options: no_eval, unsafe, …
    source: SourceInfo | None = None
    # The live model. tf_keras model when the source is Keras; otherwise None and
    # `graph_dir` (a SavedModel) and/or `onnx_path` hold it.
    keras_model: Any = None
    graph_dir: Path | None = None
    onnx_path: Path | None = None
    # PyTorch sources: the torch.export ExportedProgram (re-exported from its module, so
    # ExecuTorch lowering sees a fresh graph) and the eager module it came from.
    torch_program: Any = None
    torch_module: Any = None
    torch_batch: int | None = None  # a program exported at a fixed batch runs that many at once
    # quantize qat on a PyTorch source: the trained PT2E QAT graph the .pte qat is converted
    # from (the other formats quantize torch_module, the float model it fine-tuned).
    torch_qat: Any = None
    # ... and, when a Core ML artifact is planned, the finalized coremltools LinearQuantizer
    # model its int8 is converted from (training/coreml_qat.py; None: weight-quantized).
    coreml_qat: Any = None
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    input_layout: str = "NHWC"
    # Input dims the model leaves dynamic that only the data fixed ({input: {dim: name}}):
    # every conversion uses the data's size, formats that keep dynamic dims (.onnx) reopen them.
    open_dims: dict[str, dict[int, str]] = field(default_factory=dict)
    data: Dataset | None = None
    # Outputs of the model as loaded, on the eval inputs: the yardstick for fidelity.
    reference: list[np.ndarray] | None = None
    reference_accuracy: float | None = None
    # Which output the labels belong to (decided once, at load, on the source model).
    label_output: LabelOutput | None = None
    plan: QuantPlan | None = None
    artifacts: list[Artifact] = field(default_factory=list)
    stages: list[StageResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    model_version: int = 0  # bumped when a stage replaces the model (invalidates exports)
    started: float = field(default_factory=time.time)
    # Memo of results derived from the current model (conversions, sessions), keyed by
    # model_version where it matters; cleared when a stage replaces the model. Never a way
    # to pass configuration between stages: that lives in the recipe or the plan.
    memo: dict[Any, Any] = field(default_factory=dict)
    # The TensorFlow form an ONNX source was bridged to (onnx2tf), once converted.
    tf_bridge: Any = None

    @property
    def eval_x(self) -> np.ndarray | None:
        return None if self.data is None or self.data.eval is None else self.data.eval.x

    @property
    def eval_y(self) -> np.ndarray | None:
        return None if self.data is None or self.data.eval is None else self.data.eval.y

    def label_accuracy(self, outs: list[np.ndarray]) -> float | None:
        """Accuracy of a model's outputs on the eval labels, read from the output the labels
        belong to (every stage asks here; None without labels or a label output)."""
        index = None if self.label_output is None else self.label_output.index
        if index is None or self.eval_y is None:
            return None
        return accuracy(outs[index], self.eval_y)

    def eval_accuracy(self, runner: Callable[[Any], list[np.ndarray]]) -> float | None:
        """Accuracy of `runner` (a model as a function of its inputs) on the eval data, from
        the label output, rounded as the report gives it; None without eval labels."""
        if self.eval_x is None or self.eval_y is None:
            return None
        acc = self.label_accuracy(runner(self.eval_x))
        return None if acc is None else round(acc, 6)

    def sample_inputs(self, n: int) -> Any:
        """Up to n model inputs to run: eval data, else calibration data, else seeded
        stand-ins of the inputs' shapes and dtypes (at most 16: they only prove it runs)."""
        calib = None if self.data is None or self.data.calibration is None \
            else self.data.calibration.x
        x = self.eval_x if self.eval_x is not None else calib
        return first_n(x, n) if x is not None else synthetic_inputs(self.inputs, min(n, 16))

    def replace_model(self, keras_model: Any) -> None:
        """A stage produced a new model (pruned, distilled, …)."""
        self.keras_model = keras_model
        self.torch_qat = None
        self.coreml_qat = None
        self.graph_dir = None
        self.onnx_path = None
        self.model_version += 1
        self.memo.clear()

    def replace_torch_model(self, program: Any, module: Any) -> None:
        """A training stage produced a new PyTorch model: its re-exported program and the
        eager (or `ep.module()`) module it came from. Every format is rebuilt from it."""
        self.torch_program = program
        self.torch_module = module
        self.replace_model(None)

    @property
    def convert_config(self) -> ConvertConfig:
        return self.recipe.stage("convert") or ConvertConfig()

    def artifact_name(self, fmt: str, quant: str, unverified: bool = False) -> str:
        suffix = FORMATS[fmt].suffix
        if fmt == "coreml" and self.convert_config.coreml.kind == "mlmodel":
            suffix = ".mlmodel"
        return f"{self.recipe.name}-{quant}{'.unverified' if unverified else ''}{suffix}"

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)
