"""The recipe's schema (pydantic models). Never imports TensorFlow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mobilec.formats import FORMATS
from mobilec.policy.modes import RECIPE_MODES
from mobilec.policy.targets import TARGETS
from mobilec.sources.detect import MAX_INPUT_ELEMENTS

SCHEMA_VERSION = 1

# The enumerations come from the tables they describe: a new mode, target or format is a
# row there, and the schema (and `mobilec schema`) follows.
QuantMode = Literal[RECIPE_MODES]  # type: ignore[valid-type]
QUANT_MODES: tuple[str, ...] = RECIPE_MODES
TargetName = Literal[tuple(TARGETS)]  # type: ignore[valid-type]
FormatName = Literal[tuple(FORMATS)]  # type: ignore[valid-type]
ModelFormat = Literal["auto", "keras", "h5", "savedmodel", "onnx", "pt2"]
STAGE_ORDER = ("distill", "factorize", "prune", "quantize", "convert")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSpec(Strict):
    path: Path | None = Field(
        None, description="Model file (.keras, .h5, .onnx, .pt2) or SavedModel directory; "
                          "relative to the recipe.")
    module: str | None = Field(
        None, pattern=r"^[^:]+:[A-Za-z_][A-Za-z0-9_]*$",
        description="PyTorch: 'package.module:factory' or 'file.py:factory' returning an "
                    "nn.Module (or (module, example_inputs)). Runs your code: needs --trust-code.")
    format: ModelFormat = Field("auto", description="Detected from content when 'auto'.")
    input_shape: list[int] | None = Field(
        None, description="Fixes dynamic dimensions, batch first, e.g. [1, 8, 8, 1]; for a "
                          "PyTorch module, the example input's shape.")
    inputs: dict[str, list[int]] | None = Field(
        None, description="Per-input shapes, batch first, keyed by input name, e.g. {input: [1, "
                          "512], state: [2, 1, 128]}; fixes those inputs' dynamic dims.")
    input_dtype: Literal["float32", "float16", "int64", "int32", "bool"] = Field(
        "float32", description="PyTorch module: the example input's dtype.")
    dynamic_batch: bool = Field(
        False, description="PyTorch: export the batch dimension as torch.export.Dim.")

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.path is None) == (self.module is None):
            raise ValueError("give exactly one of model.path and model.module")
        return self

    @property
    def where(self) -> str:
        """How error messages name the model."""
        return str(self.path) if self.path is not None else str(self.module)

    @field_validator("input_shape")
    @classmethod
    def _positive(cls, v: list[int] | None) -> list[int] | None:
        if v is not None:
            _check_shape(v)
        return v

    @field_validator("inputs")
    @classmethod
    def _positive_each(cls, v: dict[str, list[int]] | None) -> dict[str, list[int]] | None:
        for name, shape in (v or {}).items():
            try:
                _check_shape(shape)
            except ValueError as exc:
                raise ValueError(f"input '{name}': {exc}") from None
        return v

    @model_validator(mode="after")
    def _one_shape_key(self) -> ModelSpec:
        if self.inputs is not None and self.input_shape is not None:
            raise ValueError("give model.input_shape (one input) or model.inputs (per input), "
                             "not both")
        return self


def _check_shape(v: list[int]) -> None:
    if not v or any(d < 1 for d in v):
        raise ValueError("every dimension must be a positive integer")
    total = 1
    for d in v:
        total *= d
    if total > MAX_INPUT_ELEMENTS:
        raise ValueError(f"declares {total} elements per input; that is not a mobile model")


class DataSpec(Strict):
    source: Literal["digits", "npz", "images"] = Field(
        "npz", description="digits: built-in offline dataset; npz: arrays x (and y); images: class folders")
    train: Path | None = Field(None, description="Fine-tuning and calibration data.")
    eval: Path | None = Field(None, description="Accuracy and fidelity only; never trained on.")
    calibration_samples: int = Field(200, ge=1, le=100_000)
    eval_samples: int = Field(500, ge=1, le=1_000_000)
    layout: Literal["auto", "NHWC", "NCHW"] = Field(
        "auto", description="Layout of the data's images; auto follows the model's input.")
    image_size: list[int] | None = Field(None, description="images source: [height, width].")
    python: str | None = Field(
        None, description="'module:function' returning (x, y); runs only because the recipe asks.")
    label_output: str | int | None = Field(
        None, description="The model output the labels y belong to (name or index); default: "
                          "the one classifier-shaped output the labels fit, else the one the "
                          "source model scores best on.")

    @model_validator(mode="after")
    def _needs_files(self) -> DataSpec:
        if self.source in ("npz", "images") and self.train is None and self.eval is None:
            raise ValueError(f"source '{self.source}' needs 'train' and/or 'eval'")
        return self


class StudentWidth(Strict):
    width: float = Field(gt=0, le=1, description="Channel/unit multiplier for the student.")


class DistillConfig(Strict):
    student: Path | StudentWidth = Field(
        default_factory=lambda: StudentWidth(width=0.5),
        description="A student model file, or {width: w} to build a narrower copy.")
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.7, ge=0, le=1, description="Weight of the soft (teacher) loss.")
    epochs: int = Field(5, ge=1, le=1000)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(1e-3, gt=0)


class FactorizeConfig(Strict):
    rank: float | Literal["auto"] | None = Field(
        None, description="Fraction of full rank to keep (0-1], or 'auto': per-layer ranks chosen "
                          "from measured sensitivity within the accuracy budget.")
    energy: float | None = Field(None, gt=0, le=1, description="Fraction of spectrum energy to keep.")
    min_share: float = Field(0.02, ge=0, lt=1, description=(
        "Leave a layer alone when factorizing it saves less than this share of the model's "
        "parameters."))
    skip: list[str] = Field(default_factory=list, description="Layer names never factorized.")
    skip_edges: bool = Field(True, description=(
        "Leave the first layer and the layers that produce the outputs alone (they save little "
        "and cost the most accuracy)."))
    max_drop: float | None = Field(None, ge=0, le=1, description=(
        "rank auto: accuracy drop this stage may spend (default: budget.max_accuracy_drop, "
        "else 0.01)."))
    epochs: int = Field(0, ge=0, le=1000)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(1e-4, gt=0)

    @field_validator("rank")
    @classmethod
    def _fraction(cls, v: float | str | None) -> float | str | None:
        if isinstance(v, (int, float)) and not 0 < v <= 1:
            raise ValueError("rank must be a fraction in (0, 1] or 'auto'")
        return v

    @model_validator(mode="after")
    def _one_of(self) -> FactorizeConfig:
        if self.rank is not None and self.energy is not None:
            raise ValueError("give either 'rank' or 'energy', not both")
        if self.rank is None and self.energy is None:
            self.__dict__["energy"] = 0.95
        return self


class PruneConfig(Strict):
    structure: Literal["unstructured", "channels"] = Field(
        "unstructured", description="unstructured: magnitude sparsity (zeros; smaller gzip). "
        "channels: whole channels/filters (and attention heads) removed with their dependents "
        "(a smaller, faster model).")
    sparsity: float | None = Field(None, gt=0, lt=1, description=(
        "unstructured: target fraction of zero weights (default 0.5)."))
    ratio: float | None = Field(None, gt=0, lt=1, description=(
        "channels: fraction of the channels of each prunable layer removed (default 0.5)."))
    schedule: Literal["constant", "polynomial"] = Field(
        "constant", description="unstructured only (channels are removed once, then fine-tuned).")
    block: int = Field(1, ge=1, le=16, description=(
        "unstructured: zero runs of this many consecutive weights along each kernel's "
        "input-channel axis (the innermost axis of the file's OHWI Conv and [out, in] Dense "
        "weights), chosen by the mean |w| of the run. The sparsity is the same, but where the "
        "zeros are costs fewer bits, so the gzip size is smaller (sparsity 0.5 + int8 on the "
        "digits CNNs: 0.63x int8 alone at block 4, 0.72x at block 1). The file stays dense: "
        "mobilec does not convert with TFLite's EXPERIMENTAL_SPARSITY, whose FullyConnected "
        "kernels take 1x4 (float) / 1x16 (int8) blocks along the same axis."))
    epochs: int = Field(2, ge=1, le=1000)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(1e-4, gt=0)

    @model_validator(mode="after")
    def _keys_of_structure(self) -> PruneConfig:
        if self.structure == "channels":
            if self.block != 1:
                raise ValueError("'block' is for structure: unstructured (runs of zero weights); "
                                 "structure: channels removes whole channels")
            if self.sparsity is not None:
                raise ValueError("'sparsity' is for structure: unstructured; structure: channels "
                                 "takes 'ratio' (the fraction of channels removed)")
            self.__dict__["ratio"] = 0.5 if self.ratio is None else self.ratio
        else:
            if self.ratio is not None:
                raise ValueError("'ratio' is for structure: channels; unstructured pruning takes "
                                 "'sparsity' (the fraction of zero weights)")
            self.__dict__["sparsity"] = 0.5 if self.sparsity is None else self.sparsity
        return self


class QuantizeConfig(Strict):
    mode: QuantMode = Field("int8", description="How weights (and activations) are quantized.")
    bits: Literal[2, 4, 6, 8] = Field(4, description="palettize: bits per weight (k-means LUT).")
    epochs: int = Field(1, ge=1, le=1000, description="qat: fine-tuning epochs.")
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(1e-4, gt=0)
    candidates: list[QuantMode] | None = Field(
        None, description="auto: modes to try, smallest first (default int4,int8,int16x8,float16).")
    keep_float: Literal["auto"] | list[str] | None = Field(
        None, description="int8: 'auto' or layer names/regexes to keep in float.")
    equalize: Literal["auto", True, False] = Field(
        False, description="Cross-layer equalization before int8: 'auto' applies it when the "
                           "calibration data shows a channel range imbalance and keeps it only "
                           "if accuracy improves.")

    @field_validator("candidates")
    @classmethod
    def _no_auto(cls, v: list[str] | None) -> list[str] | None:
        if v and "auto" in v:
            raise ValueError("'auto' cannot be its own candidate")
        return v


class CoreMLConfig(Strict):
    kind: Literal["mlpackage", "mlmodel"] = "mlpackage"
    minimum_deployment_target: Literal["iOS13", "iOS14", "iOS15", "iOS16", "iOS17", "iOS18"] = "iOS16"
    compute_units: Literal["ALL", "CPU_ONLY", "CPU_AND_GPU", "CPU_AND_NE"] = "ALL"


class ConvertConfig(Strict):
    formats: list[FormatName] | None = Field(None, description="Default: from targets.")
    opset: int = Field(17, ge=13, le=21, description="ONNX opset for tf2onnx; the PyTorch (dynamo) exporter uses at least 18.")
    coreml: CoreMLConfig = Field(default_factory=CoreMLConfig)


class StageEntry(Strict):
    """One item of `stages:`: a mapping with exactly one key."""
    distill: DistillConfig | None = None
    factorize: FactorizeConfig | None = None
    prune: PruneConfig | None = None
    quantize: QuantizeConfig | None = None
    convert: ConvertConfig | None = None

    @property
    def name(self) -> str:
        return next(k for k in STAGE_ORDER if getattr(self, k) is not None)

    @property
    def config(self) -> Strict:
        return getattr(self, self.name)


class VerifyConfig(Strict):
    min_top1_agreement: float = Field(0.99, ge=0, le=1)
    min_snr_db: float = Field(20.0)
    channel_axis: int | None = Field(
        None, description="Output axis whose every index is a channel for the per-channel SNR "
                          "(default: the smallest non-batch axis).")
    quantized_floor: Literal["on", "off"] = Field(
        "on", description="Without a budget, a quantized artifact that loses > 5 points (or "
                          "< 10 dB SNR on an output channel) is 'degraded' and the run exits 1.")


class BudgetConfig(Strict):
    max_accuracy_drop: float | None = Field(None, ge=0, le=1, description="Absolute, vs the original.")
    max_size_bytes: int | None = Field(None, ge=1)
    max_latency_ms: float | None = Field(None, gt=0, description="Host median latency.")


class ExploreConfig(Strict):
    """`mobilec explore`: the bounded search over prune x factorize x quantize x format."""
    max_candidates: int = Field(12, ge=1, le=1000, description=(
        "Artifacts to build and measure at most (the float32 baselines come free)."))
    max_minutes: float = Field(15.0, gt=0, description="No new candidate starts after this.")
    sparsities: list[float] = Field(default_factory=lambda: [0.5, 0.8, 0.9], description=(
        "Prune sparsities to try (no pruning is always a choice)."))
    factorize: list[Literal["off", "auto"]] = Field(
        default_factory=lambda: ["off", "auto"], description="factorize choices (auto: rank auto).")
    modes: list[QuantMode] | None = Field(None, description=(
        "Quantization modes, smallest first (default: quantize.candidates of an auto recipe, "
        "else int4, int8, int16x8, float16)."))
    formats: list[FormatName] | None = Field(
        None, description="Default: convert.formats, else the targets' formats.")
    prune: PruneConfig | None = Field(None, description=(
        "How candidates prune (the search sets the sparsity); default: the recipe's prune "
        "stage, else polynomial, 8 epochs, learning rate 1e-3."))
    cache_dir: Path | None = Field(None, description=(
        "Content cache of transformed models and candidate runs (default: <out>/cache)."))

    @field_validator("sparsities")
    @classmethod
    def _sparsities(cls, v: list[float]) -> list[float]:
        if any(not 0 < s < 1 for s in v):
            raise ValueError("each sparsity must be in (0, 1)")
        return sorted(set(v))

    @field_validator("modes")
    @classmethod
    def _modes(cls, v: list[str] | None) -> list[str] | None:
        if v and "auto" in v:
            raise ValueError("'auto' is not a mode to explore; list the modes")
        return v


class OutputConfig(Strict):
    dir: Path | None = Field(None, description="Default: ./mobilec-out/<name>.")
    report: list[Literal["json", "md", "html"]] = Field(default_factory=lambda: ["json", "md", "html"])


class MetadataConfig(Strict):
    author: str | None = None
    version: str | None = None
    description: str | None = None
    license: str | None = None


class Recipe(Strict):
    version: Literal[1] = Field(1, description="Recipe schema version.")
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$",
                             description="Artifact base name; default: recipe file stem.")
    model: ModelSpec
    data: DataSpec | None = None
    stages: list[StageEntry] = Field(default_factory=list)
    targets: list[TargetName] = Field(default_factory=lambda: ["cpu"], min_length=1)
    verify: VerifyConfig = Field(default_factory=VerifyConfig)
    budget: BudgetConfig | None = None
    output: OutputConfig = Field(default_factory=OutputConfig)
    metadata: MetadataConfig = Field(default_factory=MetadataConfig)
    explore: ExploreConfig | None = Field(None, description="`mobilec explore` only.")

    # Not part of the schema: where the recipe came from.
    _source: str = "<recipe>"
    _sha256: str = ""
    _doc: Any = None  # the LocatedYaml it came from, so later checks can name file:line


    @model_validator(mode="after")
    def _stage_order(self) -> Recipe:
        seen: list[str] = []
        for entry in self.stages:
            name = entry.name
            if name in seen:
                raise ValueError(f"stage '{name}' appears twice; each stage may appear once")
            if seen and STAGE_ORDER.index(name) < STAGE_ORDER.index(seen[-1]):
                raise ValueError(f"stage '{name}' must come before '{seen[-1]}' "
                                 f"(order: {' -> '.join(STAGE_ORDER)})")
            seen.append(name)
        return self

    # -- convenience -----------------------------------------------------
    def stage(self, name: str) -> Any:
        for entry in self.stages:
            if entry.name == name:
                return entry.config
        return None

    @property
    def source(self) -> str:
        return self._source

    @property
    def sha256(self) -> str:
        return self._sha256

    def where(self, *loc: str | int) -> str:
        """'recipe.yaml:12' (or '--set key') for a key path checked after validation, e.g.
        against the model."""
        return self._doc.where(loc) if self._doc is not None else self._source

    def effective_json(self) -> str:
        """Canonical JSON of the validated recipe (used for caching and the report)."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)
