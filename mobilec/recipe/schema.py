"""The recipe: schema (pydantic), loading with line-numbered errors, --set overrides,
and the up-front plan check (target x quantization x format) that fails before
anything slow runs. Never imports TensorFlow.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mobilec.sources.detect import MAX_INPUT_ELEMENTS
from mobilec.errors import RecipeError
from mobilec.recipe.yamlloc import Loc, LocatedYaml, format_loc, load_yaml_file, load_yaml_text

SCHEMA_VERSION = 1

QuantMode = Literal["dynamic", "float16", "int8", "int8-io", "int16x8", "int4", "palettize", "qat",
                    "auto"]
QUANT_MODES: tuple[str, ...] = typing.get_args(QuantMode)
TargetName = Literal["android-nnapi", "android-gpu", "ios-coreml", "cpu"]
FormatName = Literal["tflite", "onnx", "coreml"]
ModelFormat = Literal["auto", "keras", "h5", "savedmodel", "onnx"]
STAGE_ORDER = ("distill", "factorize", "prune", "quantize", "convert")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSpec(Strict):
    path: Path = Field(description="Model file or SavedModel directory; relative to the recipe.")
    format: ModelFormat = Field("auto", description="Detected from content when 'auto'.")
    input_shape: list[int] | None = Field(
        None, description="Fixes dynamic dimensions, batch first, e.g. [1, 8, 8, 1].")

    @field_validator("input_shape")
    @classmethod
    def _positive(cls, v: list[int] | None) -> list[int] | None:
        if v is not None:
            if not v or any(d < 1 for d in v):
                raise ValueError("every dimension must be a positive integer")
            total = 1
            for d in v:
                total *= d
            if total > MAX_INPUT_ELEMENTS:
                raise ValueError(f"declares {total} elements per input; that is not a mobile model")
        return v


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
    rank: float | None = Field(None, gt=0, le=1, description="Fraction of full rank to keep.")
    energy: float | None = Field(None, gt=0, le=1, description="Fraction of spectrum energy to keep.")
    epochs: int = Field(0, ge=0, le=1000)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(1e-4, gt=0)

    @model_validator(mode="after")
    def _one_of(self) -> FactorizeConfig:
        if self.rank is not None and self.energy is not None:
            raise ValueError("give either 'rank' or 'energy', not both")
        if self.rank is None and self.energy is None:
            self.__dict__["energy"] = 0.95
        return self


class PruneConfig(Strict):
    sparsity: float = Field(0.5, gt=0, lt=1, description="Target fraction of zero weights.")
    schedule: Literal["constant", "polynomial"] = "constant"
    epochs: int = Field(2, ge=1, le=1000)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(1e-4, gt=0)


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
    opset: int = Field(17, ge=13, le=21, description="ONNX opset for tf2onnx.")
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


class BudgetConfig(Strict):
    max_accuracy_drop: float | None = Field(None, ge=0, le=1, description="Absolute, vs the original.")
    max_size_bytes: int | None = Field(None, ge=1)
    max_latency_ms: float | None = Field(None, gt=0, description="Host median latency.")


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

    # Not part of the schema: where the recipe came from.
    _source: str = "<recipe>"
    _sha256: str = ""

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

    def effective_json(self) -> str:
        """Canonical JSON of the validated recipe (used for caching and the report)."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True)


# --------------------------------------------------------------------------
# Error formatting

def _unwrap_models(annotation: Any) -> list[type[BaseModel]]:
    """Every BaseModel class reachable through Optional/Union/list in an annotation."""
    found: list[type[BaseModel]] = []
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType, list):
        for arg in typing.get_args(annotation):
            found.extend(_unwrap_models(arg))
    return found


def _model_at(loc: Loc) -> type[BaseModel] | None:
    model: type[BaseModel] | None = Recipe
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        if field is None:
            # pydantic inserts union member names into loc; skip them
            continue
        models = _unwrap_models(field.annotation)
        model = models[-1] if models else None
    return model


def _clean_loc(loc: Loc, keep_last: bool = False) -> Loc:
    """Drop pydantic's union-member tags (e.g. 'StudentWidth', 'literal['auto']').

    keep_last keeps a final unknown key (the subject of an extra_forbidden error).
    """
    out: list[Any] = []
    model: type[BaseModel] | None = Recipe
    for i, part in enumerate(loc):
        if keep_last and i == len(loc) - 1:
            out.append(part)
            break
        if isinstance(part, int):
            out.append(part)
            continue
        if model is not None and part in model.model_fields:
            out.append(part)
            models = _unwrap_models(model.model_fields[part].annotation)
            model = models[-1] if models else None
        elif model is None and out and not isinstance(part, str):
            out.append(part)
    return tuple(out)


def _describe(err: dict[str, Any], loc: Loc) -> str:
    kind = err["type"]
    value = err.get("input")
    if kind == "extra_forbidden":
        key = loc[-1] if loc else "?"
        parent = _model_at(loc[:-1])
        choices = list(parent.model_fields) if parent else []
        close = difflib.get_close_matches(str(key), choices, n=1, cutoff=0.6)
        hint = f"; did you mean '{close[0]}'?" if close else (
            f"; allowed: {', '.join(choices)}" if choices else "")
        return f"unknown key '{key}'{hint}"
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        expected = expected.replace("'", "").replace(" or ", ", ")
        return f"{value!r} is not one of {expected}"
    if kind == "missing":
        return "required key is missing"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if kind in ("model_type", "model_attributes_type", "dict_type") or "dictionary" in msg:
        return f"expected a mapping, got {type(value).__name__} {value!r}"
    return f"{msg} (got {value!r})" if value is not None and not isinstance(value, dict) else msg


def _raise_validation(exc: ValidationError, doc: LocatedYaml) -> typing.NoReturn:
    errors = exc.errors()
    # Report the most specific error first; unions produce one error per member.
    seen: set[str] = set()
    lines: list[str] = []
    first_where = None
    for err in errors:
        loc = _clean_loc(tuple(err["loc"]), keep_last=err["type"] == "extra_forbidden")
        text = _describe(err, loc)
        key = f"{loc}:{text}"
        if key in seen:
            continue
        seen.add(key)
        where = doc.where(loc)
        first_where = first_where or where
        path = format_loc(loc) or "recipe"
        lines.append(f"{where}: {path}: {text}")
    raise RecipeError("\n".join(lines[:8]) + ("" if len(lines) <= 8 else f"\n… and {len(lines) - 8} more"),
                      hint="`mobilec schema` prints every key with its type")


def _check_stage_shapes(data: dict[str, Any], doc: LocatedYaml) -> None:
    """Friendlier messages than pydantic's for the list-of-single-key-mappings shape."""
    stages = data.get("stages")
    if stages is None:
        return
    if not isinstance(stages, list):
        raise RecipeError("stages: expected a list like `- quantize: {mode: int8}`",
                          where=doc.where(("stages",)))
    for i, item in enumerate(stages):
        loc = ("stages", i)
        if isinstance(item, str):
            item = {item: None}
            stages[i] = item
        if not isinstance(item, dict) or len(item) != 1:
            raise RecipeError(f"{format_loc(loc)}: each stage is a mapping with exactly one key, "
                              f"one of {', '.join(STAGE_ORDER)}", where=doc.where(loc))
        (name, cfg), = item.items()
        if name not in STAGE_ORDER:
            close = difflib.get_close_matches(str(name), STAGE_ORDER, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise RecipeError(f"{format_loc(loc)}: unknown stage '{name}'{hint} "
                              f"(stages: {', '.join(STAGE_ORDER)})", where=doc.where(loc + (name,)))
        if cfg is None:
            item[name] = {}


# --------------------------------------------------------------------------
# Overrides

def _parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise RecipeError(f"--set {text!r}: expected KEY=VALUE, e.g. stages.1.quantize.mode=float16")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise RecipeError(f"--set {text!r}: empty key")
    try:
        # The same bounded loader as recipe files: no alias bombs through --set either.
        value = load_yaml_text(raw, f"--set {key}").data if raw.strip() else ""
    except RecipeError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides to raw recipe data (values are YAML-typed).

    A path may start with a stage name (`quantize.mode=float16`): it then addresses
    that stage, adding it in canonical order when the recipe lacks it.
    """
    data = copy.deepcopy(data) if data is not None else {}
    items = overrides.items() if isinstance(overrides, dict) else (
        _parse_override(o) for o in overrides)
    for parts, value in items:
        if isinstance(parts, str):
            parts = parts.split(".")
        label = ".".join(parts)
        if parts[0] in STAGE_ORDER:
            stages = data.setdefault("stages", [])
            if not isinstance(stages, list):  # e.g. an earlier `--set stages=`
                raise RecipeError(f"--set {label}: 'stages' is not a list here "
                                  f"(it is {type(stages).__name__} {stages!r:.40})")
            index = next((i for i, s in enumerate(stages) if isinstance(s, dict) and parts[0] in s), None)
            if index is None:
                index = sum(1 for s in stages if isinstance(s, dict) and next(iter(s), None) in STAGE_ORDER
                            and STAGE_ORDER.index(next(iter(s))) < STAGE_ORDER.index(parts[0]))
                stages.insert(index, {parts[0]: {}})
            parts = ["stages", str(index), *parts]
        node: Any = data
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if isinstance(node, list):
                if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
                    raise RecipeError(f"--set {label}: '{part}' is not an index of a list of {len(node)}")
                if last:
                    node[int(part)] = value
                else:
                    if node[int(part)] is None:
                        node[int(part)] = {}
                    node = node[int(part)]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    if not isinstance(node.get(part), (dict, list)):
                        node[part] = {}
                    node = node[part]
            else:
                raise RecipeError(f"--set {label}: cannot set '{part}' inside a {type(node).__name__}")
    return data


# --------------------------------------------------------------------------
# Loading

def _resolve_paths(recipe: Recipe, base: Path, doc: LocatedYaml | None = None) -> None:
    def fix(p: Path | None, loc: Loc) -> Path | None:
        if p is None:
            return None
        # A NUL byte, an unknown ~user or an over-long name fail here, not deep in a stage.
        try:
            p = Path(p).expanduser()
            return p if p.is_absolute() else (base / p).resolve()
        except (ValueError, RuntimeError, OSError) as exc:
            raise RecipeError(f"{format_loc(loc)}: not a usable path ({exc})",
                              where=doc.where(loc) if doc else None) from None

    recipe.model.path = fix(recipe.model.path, ("model", "path"))
    if recipe.data is not None:
        recipe.data.train = fix(recipe.data.train, ("data", "train"))
        recipe.data.eval = fix(recipe.data.eval, ("data", "eval"))
    d = recipe.stage("distill")
    if d is not None and isinstance(d.student, Path):
        d.student = fix(d.student, ("stages",))
    if recipe.output.dir is not None:
        recipe.output.dir = fix(recipe.output.dir, ("output", "dir"))


def recipe_from_doc(doc: LocatedYaml, *, base_dir: Path, default_name: str,
                    overrides: list[str] | dict[str, Any] | None = None) -> Recipe:
    data = doc.data
    if data is None:
        raise RecipeError("the recipe is empty", where=doc.filename,
                          hint="`mobilec init` writes a commented starter recipe")
    if not isinstance(data, dict):
        raise RecipeError(f"expected a mapping of keys (version, model, stages, …), got "
                          f"{type(data).__name__}", where=doc.where(()))
    if overrides:
        data = apply_overrides(data, overrides)
    _check_stage_shapes(data, doc)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        _raise_validation(exc, doc)
    if recipe.name is None:
        recipe.name = default_name
    _resolve_paths(recipe, base_dir, doc)
    recipe._source = doc.filename
    recipe._sha256 = hashlib.sha256(
        json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
    return recipe


def load_recipe(path: str | Path, overrides: list[str] | dict[str, Any] | None = None) -> Recipe:
    """Load and validate a recipe file. Raises RecipeError with file:line for every problem."""
    path = Path(path)
    doc = load_yaml_file(path)
    stem = "".join(c if c.isalnum() or c in "._-" else "-" for c in path.stem).lstrip("._-") or "model"
    return recipe_from_doc(doc, base_dir=path.resolve().parent, default_name=stem, overrides=overrides)


def load_recipe_text(text: str, *, base_dir: Path, filename: str = "<recipe>",
                     overrides: list[str] | None = None) -> Recipe:
    doc = load_yaml_text(text, filename)
    return recipe_from_doc(doc, base_dir=base_dir, default_name=Path(filename).stem or "model",
                           overrides=overrides)


def json_schema() -> dict[str, Any]:
    schema = Recipe.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "mobilec recipe (version 1)"
    return schema
