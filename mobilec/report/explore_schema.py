"""explore.json as a typed model (`mobilec schema --explore` prints its JSON Schema).

One entry per candidate artifact that `mobilec explore` built and measured, the float32
baselines included, with the recipe overrides that reproduce it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

CandidateStatus = Literal["baseline", "ok", "over-budget", "failed"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Candidate(_Model):
    id: str = Field(description="e.g. 'prune0.8+int8/tflite'; unique in the file.")
    overrides: dict[str, Any] = Field(description=(
        "Recipe overrides (`stages`) that build this artifact with `mobilec compress`."))
    sparsity: float | None = Field(description="prune sparsity; null: not pruned.")
    factorize: Literal["off", "auto"]
    format: str
    quantization: str
    size_bytes: int | None
    gzip_bytes: int | None
    accuracy: float | None
    accuracy_drop: float | None = Field(description="Against the original float model.")
    latency_ms: float | None = Field(description="Host median latency, one thread.")
    status: CandidateStatus = Field(description=(
        "baseline: the float32 original; ok: within budget.max_accuracy_drop; over-budget; "
        "failed: not built or not measured (see error)."))
    pareto_size: bool = Field(False, description="On the size-accuracy frontier.")
    pareto_latency: bool = Field(False, description="On the latency-accuracy frontier.")
    path: str | None = Field(None, description="The artifact in the explore cache.")
    cached: bool = Field(False, description="Reused from the content cache, not rebuilt.")
    seconds: float | None = Field(None, description="Time its run took (0 when cached).")
    error: str | None = None


class Stopped(_Model):
    reason: Literal["space exhausted", "max_candidates", "max_minutes", "interrupted"]
    detail: str


class ExploreReport(_Model):
    mobilec_version: str
    recipe: str
    name: str | None
    budget: dict[str, Any] = Field(description="The recipe's budget (max_accuracy_drop, ...).")
    reference_accuracy: float | None = Field(description="The original float model's accuracy.")
    float32_tflite_bytes: int | None = Field(description="Size of the original float32 .tflite.")
    space: dict[str, Any] = Field(description="sparsities, factorize, modes, formats searched.")
    limits: dict[str, Any] = Field(description="max_candidates, max_minutes.")
    stopped: Stopped
    seconds: float
    cache: dict[str, Any] = Field(description="dir, hits, misses (transforms and runs).")
    best: str | None = Field(description=(
        "id of the smallest (gzip) artifact within budget.max_accuracy_drop; null if none."))
    best_recipe: str | None = Field(description="explore-best.yaml, when there is a best.")
    candidates: list[Candidate]


def validated(doc: dict[str, Any]) -> dict[str, Any]:
    return ExploreReport.model_validate(doc).model_dump(mode="json")
