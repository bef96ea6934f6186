"""report.json as a typed model. `build_report` fills it; `mobilec schema --report`
prints its JSON Schema; CI tools (compare, JUnit) read reports through it.

Free-form parts stay free-form on purpose: stage metrics differ per stage, and
op-compatibility / delegation / verification details differ per format.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer

ArtifactStatus = Literal["ok", "unverified", "degraded", "failed", "failed-verification",
                         "skipped"]
#: Statuses of an artifact the run stands behind (exit 0; `--strict` exits 3 on unverified).
GOOD_STATUSES = ("ok", "unverified")
#: What `unverified` means: said the same way in report.json's schema, report.md/html, the
#: terminal table and JUnit (a <skipped> case whose message starts "unverified:").
UNVERIFIED_MEANING = ("structure checked; numerics verified on the graph it was built from, "
                      "not on the file (no runtime for it on this host)")
STATUS_HELP = ("ok: run here and verified against the source. unverified: "
               + UNVERIFIED_MEANING + ". degraded: verified, but below the quality floor. "
               "failed-verification: runs, differs from the source (shipped as "
               "*.unverified.*). failed: nothing built. skipped: not applicable.")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Tensor(_Model):
    name: str
    shape: list[int | None]
    dtype: str = "float32"
    batch_axis: int | None = Field(
        0, description="The dim samples go along, when not the first (`state` [2, batch, 128]: "
                       "1); null for a rank-0 input, one value for the whole batch.")

    @model_serializer(mode="wrap")
    def _batch_first_says_nothing(self, handler: Any) -> dict[str, Any]:
        out = handler(self)
        if out.get("batch_axis") == 0:  # only an input that differs carries the field
            del out["batch_axis"]
        return out


class LabelOutput(_Model):
    name: str | None = Field(description="The output's name; null when none carries the labels.")
    index: int | None
    chosen_by: Literal["recipe", "only-fit", "source-accuracy", "none"] = Field(
        description="data.label_output; the only class-score output the labels fit; the one "
                    "of several the source model scores best on; none (accuracy is null).")
    reason: str
    candidates: list[dict[str, Any]] = Field(
        default_factory=list, description="source-accuracy: each fitting output's accuracy.")


class ModelInfo(_Model):
    path: str
    format: str | None
    sha256: str | None
    params: int | None
    size_bytes: int | None
    accuracy: float | None = Field(None, description="The source model on data.eval (labels).")
    label_output: LabelOutput | None = Field(
        None, description="The output accuracy is read from, and why (null without labels).")
    inputs: list[Tensor] = Field(default_factory=list)
    outputs: list[Tensor] = Field(default_factory=list)


class DataInfo(_Model):
    source: str
    train_samples: int
    eval_samples: int
    calibration_samples: int
    labels: bool


class StageRow(_Model):
    name: str
    seconds: float
    status: Literal["ok", "failed", "skipped", "interrupted"]
    metrics: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None


class Latency(_Model):
    median: float | None = None
    p90: float | None = None
    runs: int | None = None


class ArtifactRow(_Model):
    path: str
    format: str
    target: str | None
    role: Literal["artifact", "baseline", "candidate"]
    quantization: str
    precision: str | None = None
    delegate: str | None = None
    fallback: str | None = None
    size_bytes: int | None = None
    gzip_bytes: int | None = None
    size_ratio: float | None = Field(None, description="float32 size / this size, same format.")
    accuracy: float | None = None
    accuracy_drop: float | None = None
    fidelity: dict[str, Any] | None = Field(
        None, description="Against the model converted (the source, or what distill, "
                          "factorize or prune made of it; `against` says which): "
                          "top1_agreement, max_abs_err, snr_db, per-output figures.")
    latency_ms: Latency | None = None
    op_compat: dict[str, Any] | None = None
    input_layout: str | None = None
    inputs: list[dict[str, Any]] | None = Field(
        None, description="The file's own inputs (name, shape, dtype): a dim an .onnx or .pte "
                          "keeps dynamic is null or its symbolic name.")
    outputs: list[dict[str, Any]] | None = Field(
        None, description="The file's own outputs (name, shape, dtype).")
    io_names: dict[str, dict[str, str]] | None = Field(
        None, description="Where this file names an input or output differently from the "
                          "source model (and so from the other artifacts): {inputs|outputs: "
                          "{name in this file: the source's name}}; absent when all agree. "
                          "The loader snippet says the same.")
    io_dtypes: list[str] | None = Field(
        None, description="Each input or output this file takes or gives in another dtype "
                          "than the source model (float16 or int8 I/O), as a sentence; the "
                          "loader snippet says the same.")
    io_quant: dict[str, Any] | None = None
    route: str | None = Field(None, description="The conversion route that made this file.")
    routes_failed: list[dict[str, Any]] = Field(
        default_factory=list, description="Routes tried before it: {route, reason}.")
    verification: dict[str, Any] | None = None
    delegate_manifest: str | None = None
    slower_than_float32: float | None = None
    kept_float: list[str] | None = None
    quantizer: str | None = None
    coreml: dict[str, Any] | None = None
    delegation: dict[str, Any] | None = None
    built_from: list[dict[str, Any]] | None = Field(
        None, description="The intermediate graphs this file was built from (onnx2tf's "
                          "TensorFlow graph, a bridge .onnx, a decomposed ExportedProgram), "
                          "each verified against the source first: graph, samples, "
                          "top1_agreement, snr_db, max_abs_err; a QAT model the file is "
                          "converted from (Core ML qat) also its eval accuracy.")
    status: ArtifactStatus = Field(description=STATUS_HELP)
    error: str | None = None
    note: str | None = None


class Budget(_Model):
    passed: bool
    violations: list[str] = Field(default_factory=list)
    limits: dict[str, Any] = Field(default_factory=dict)
    not_measured: list[str] = Field(default_factory=list,
                                    description="rules an artifact could not be judged by "
                                                "(--no-eval, no labels, no runtime): neither "
                                                "passed nor failed")


class Host(_Model):
    platform: str
    python: str
    machine: str


class Report(_Model):
    mobilec_version: str
    recipe: str
    recipe_sha256: str
    name: str | None
    output_dir: str = Field(description="Where this run wrote its artifacts.")
    model: ModelInfo
    data: DataInfo | None
    stages: list[StageRow]
    artifacts: list[ArtifactRow]
    budget: Budget
    notes: list[str] = Field(default_factory=list)
    host: Host
    exit_code: int = Field(description="0 ok (unverified artifacts included), 1 budget violated "
                                       "or an artifact degraded, 2 usage, 3 a stage or an "
                                       "artifact failed (or, with --strict, an artifact is "
                                       "unverified).")


def validated(report: dict[str, Any]) -> dict[str, Any]:
    """The report as report.json holds it: checked against the model, every field present."""
    return Report.model_validate(report).model_dump(mode="json")
