"""The zoo: which models a batch converts, with which recipe, into which directories.

A zoo comes from a zoo file (`mobilec batch ZOO.yaml`) or from the command line
(`mobilec batch --recipe base.yaml MODEL_OR_DIR…`). Either way it becomes a list
of `Job`s, each with its own validated Recipe and its own output directory.
Nothing here imports TensorFlow: planning a batch (and a fully cached re-run)
stays fast.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mobilec.errors import MobilecError, RecipeError
from mobilec.recipe.loader import apply_overrides, recipe_from_doc
from mobilec.recipe.schema import Recipe
from mobilec.recipe.yamlloc import LocatedYaml, format_loc, load_yaml_file

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5", ".onnx")
RESERVED_NAMES = ("zoo-report.json", "zoo-report.md", "zoo-report.html")  # the batch's own files
# A folder holding one of these is mobilec output, not models to convert.
OUTPUT_MARKERS = ("report.json", "mobilec.lock.json", "zoo-report.json")
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
Executor = Literal["local", "ray"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ZooModel(_Strict):
    path: str = Field(description="Model file, SavedModel dir, or a folder of models; "
                                  "relative to the zoo file.")
    set_: dict[str, Any] = Field(default_factory=dict, alias="set",
                                 description="Recipe overrides for this model, e.g. quantize.mode: float16.")
    name: str | None = Field(None, pattern=NAME_PATTERN, description="Output folder name.")


class ZooFile(_Strict):
    version: Literal[1] = 1
    recipe: str | dict[str, Any] = Field(description="Base recipe file (relative to the zoo) or inline.")
    models: list[ZooModel | str] = Field(min_length=1)
    set_: dict[str, Any] = Field(default_factory=dict, alias="set",
                                 description="Recipe overrides for every model.")
    executor: Executor = "local"
    workers: int | None = Field(None, ge=1, le=1024)
    timeout: float | None = Field(None, gt=0, description="Seconds per model.")
    address: str | None = Field(None, description="Ray cluster address (executor: ray).")
    out: str | None = Field(None, description="Output folder; default ./mobilec-out/<zoo name>.")


@dataclass
class ModelRef:
    """One model as the user listed it (after folder expansion)."""
    path: Path                      # resolved
    overrides: dict[str, Any] = field(default_factory=dict)
    name: str | None = None         # explicit output folder name


@dataclass
class Zoo:
    source: str                     # zoo file, or "<command line>"
    base_dir: Path                  # relative model paths resolve here
    recipe_doc: LocatedYaml         # the base recipe, unvalidated (its model comes per job)
    recipe_dir: Path                # relative paths inside the recipe resolve here
    models: list[ModelRef]
    overrides: dict[str, Any] = field(default_factory=dict)
    executor: Executor = "local"
    workers: int | None = None
    timeout: float | None = None
    address: str | None = None
    out: Path | None = None
    name: str = "zoo"


@dataclass
class Job:
    """One model to convert: its recipe, where it goes, what it is called."""
    index: int
    name: str                       # output folder name (safe: one path component)
    model: Path
    out_dir: Path
    recipe: Recipe | None
    error: str | None = None        # set when the model cannot even be planned

    def spec(self) -> dict[str, Any]:
        """What a worker needs to run this job: plain JSON, so it crosses any process or host."""
        assert self.recipe is not None
        return {"name": self.name, "recipe": self.recipe.model_dump(mode="json"),
                "source": self.recipe.source, "recipe_sha256": self.recipe.sha256}


# ----------------------------------------------------------------------------- loading

def load_zoo(path: str | Path) -> Zoo:
    path = Path(path)
    doc = load_yaml_file(path)
    if not isinstance(doc.data, dict):
        raise RecipeError("a zoo file is a mapping with 'recipe' and 'models'", where=doc.where(()),
                          hint="see `batch` in the README for an example")
    try:
        zoo = ZooFile.model_validate(doc.data)
    except ValidationError as exc:
        _raise_zoo_error(exc, doc)
    base = path.resolve().parent
    if isinstance(zoo.recipe, dict):
        recipe_doc = LocatedYaml(zoo.recipe, _sub_lines(doc, ("recipe",)), doc.filename)
        recipe_dir = base
    else:
        recipe_path = _resolve(zoo.recipe, base)
        recipe_doc = load_yaml_file(recipe_path)
        recipe_dir = recipe_path.parent
    models: list[ModelRef] = []
    for i, entry in enumerate(zoo.models):
        item = ZooModel(path=entry) if isinstance(entry, str) else entry
        target = _resolve(item.path, base)
        if _is_model_folder(target):
            if item.name:
                raise RecipeError(f"models.{i}.name: '{target}' is a folder of models; a name "
                                  "applies to one model", where=doc.where(("models", i, "name")))
            models += [ModelRef(p, dict(item.set_)) for p in expand_folder(target)]
        else:
            models.append(ModelRef(target, dict(item.set_), item.name))
    return Zoo(source=str(path), base_dir=base, recipe_doc=recipe_doc, recipe_dir=recipe_dir,
               models=models, overrides=dict(zoo.set_), executor=zoo.executor,
               workers=zoo.workers, timeout=zoo.timeout, address=zoo.address,
               out=_resolve(zoo.out, base) if zoo.out else None, name=_safe(path.stem) or "zoo")


def zoo_from_models(recipe: str | Path, models: list[str]) -> Zoo:
    """`mobilec batch --recipe base.yaml MODEL_OR_DIR…`: paths resolve against the cwd."""
    recipe_path = Path(recipe).resolve()
    recipe_doc = load_yaml_file(recipe_path)
    cwd = Path.cwd()
    refs: list[ModelRef] = []
    for m in models:
        target = _resolve(m, cwd)
        refs += [ModelRef(p) for p in expand_folder(target)] if _is_model_folder(target) \
            else [ModelRef(target)]
    if not refs:
        raise MobilecError("no models found", where=", ".join(models),
                           hint=f"a folder is searched for {', '.join(MODEL_SUFFIXES)} files and "
                                "SavedModel directories")
    return Zoo(source="<command line>", base_dir=cwd, recipe_doc=recipe_doc,
               recipe_dir=recipe_path.parent, models=refs,
               name=(_safe(recipe_path.stem) or "batch") + "-batch")


def _resolve(p: str | Path, base: Path) -> Path:
    path = Path(p).expanduser()
    return (path if path.is_absolute() else base / path).resolve()


def _is_model_folder(path: Path) -> bool:
    """A plain folder (not a SavedModel) whose models the batch should take one by one."""
    return path.is_dir() and not (path / "saved_model.pb").exists() \
        and not (path / "saved_model.pbtxt").exists()


def expand_folder(folder: Path) -> list[Path]:
    """Every model in a folder tree: model files by suffix, SavedModel dirs (not descended)."""
    found: list[Path] = []

    def walk(d: Path) -> None:
        if any((d / marker).exists() for marker in OUTPUT_MARKERS):
            return  # a mobilec output folder: its .onnx/.tflite are results, not models
        for p in sorted(d.iterdir()):
            if p.name.startswith("."):
                continue  # our own temp/cache entries, editors' files
            if p.is_dir():
                if (p / "saved_model.pb").exists() or (p / "saved_model.pbtxt").exists():
                    found.append(p.resolve())
                else:
                    walk(p)
            elif p.suffix.lower() in MODEL_SUFFIXES:
                found.append(p.resolve())

    walk(folder)
    return found


def _sub_lines(doc: LocatedYaml, prefix: tuple[Any, ...]) -> dict[tuple[Any, ...], int]:
    """Line numbers of an inline recipe, re-rooted so recipe errors point into the zoo file."""
    n = len(prefix)
    return {k[n:]: v for k, v in doc.lines.items() if k[:n] == prefix}


def _raise_zoo_error(exc: ValidationError, doc: LocatedYaml) -> None:
    lines: list[str] = []
    for err in exc.errors():
        raw = tuple(err["loc"])
        if err["type"] == "string_type" and raw[:1] == ("models",):
            continue  # the `str` member of `ZooModel | str`; the mapping's own error says more
        # pydantic inserts union member names ("ZooModel") into the location: drop them
        keep = raw[:-1] if err["type"] == "extra_forbidden" else raw
        loc = tuple(p for p in keep if isinstance(p, int) or p in _ALL_KEYS)
        if err["type"] == "extra_forbidden":
            parent = ZooModel if loc[:1] == ("models",) else ZooFile
            choices = [f.alias or n for n, f in parent.model_fields.items()]
            close = difflib.get_close_matches(str(raw[-1]), choices, n=1, cutoff=0.6)
            text = f"unknown key '{raw[-1]}'" + (
                f"; did you mean '{close[0]}'?" if close else f"; allowed: {', '.join(choices)}")
            loc = (*loc, raw[-1])
        else:
            text = err["msg"].removeprefix("Value error, ")
        line = f"{doc.where(loc)}: {format_loc(loc) or 'zoo'}: {text}"
        if line not in lines:
            lines.append(line)
    raise RecipeError("\n".join(lines[:8]) or str(exc),
                      hint="a zoo file has: recipe, models (path, set, name), set, executor, "
                           "workers, timeout, address, out")


_ALL_KEYS = {f.alias or n for m in (ZooFile, ZooModel) for n, f in m.model_fields.items()}


# ----------------------------------------------------------------------------- planning

def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip(".-_")[:100]


def job_name(model: Path, base: Path) -> str:
    """Output folder name from the model path: one safe path component, never `..` or absolute.

    Inside the zoo's folder the relative path is kept (a/b.onnx -> a__b.onnx), so
    same-named models in different sub-folders stay apart; outside it, the file name.
    """
    try:
        parts = model.relative_to(base).parts
    except ValueError:
        parts = (model.name,)
    name = _safe("__".join(p for p in parts if p not in ("", ".", "..", "/")))
    return name or "model"


def plan_jobs(zoo: Zoo, out_dir: Path, cli_overrides: list[str] | None = None) -> list[Job]:
    """One Job per model: the base recipe with zoo, model and command-line overrides on top.

    Raises RecipeError (exit 2) when a recipe is invalid for any model: a typo in
    the zoo should stop the batch before hours of conversion, not after.
    """
    jobs: list[Job] = []
    taken: set[str] = set(RESERVED_NAMES)
    for i, ref in enumerate(zoo.models):
        name = ref.name or job_name(ref.path, zoo.base_dir)
        salt = 0
        while name in taken:
            # Same name twice (same file with other overrides, or same-named files elsewhere):
            # suffix a digest of what differs, so the folder is stable across re-runs.
            digest = hashlib.sha256(json.dumps([str(ref.path), ref.overrides, salt], sort_keys=True,
                                               default=str).encode()).hexdigest()[:8]
            name = f"{(ref.name or job_name(ref.path, zoo.base_dir))[:90]}-{digest}"
            salt += 1
        taken.add(name)
        job_dir = out_dir / name
        data = zoo.recipe_doc.data if isinstance(zoo.recipe_doc.data, dict) else {}
        for layer in (zoo.overrides, ref.overrides):
            data = apply_overrides(data, layer) if layer else data
        if cli_overrides:
            data = apply_overrides(data, cli_overrides)
        model_spec = data.get("model") if isinstance(data.get("model"), dict) else {}
        # The model comes from the zoo. The output folder is the batch's to choose (the job
        # writes to a staging folder first), so the recipe, its sha256 and the cache key
        # do not depend on --out.
        data = {**data, "model": {**model_spec, "path": str(ref.path)},
                "output": {**(data.get("output") or {}), "dir": None}}
        named = any("name" in layer for layer in (zoo.overrides, ref.overrides)) or any(
            o.split("=", 1)[0].strip() == "name" for o in cli_overrides or [])
        if not named:
            # A base recipe's own name would give every model the same artifact names.
            data["name"] = _safe(ref.path.stem if ref.path.suffix else ref.path.name) or "model"
        doc = LocatedYaml(data, zoo.recipe_doc.lines, zoo.recipe_doc.filename)
        try:
            recipe = recipe_from_doc(doc, base_dir=zoo.recipe_dir, default_name=name)
        except RecipeError as exc:
            raise RecipeError(f"model {ref.path} ({name}): {exc.message}",
                              where=zoo.source, hint=exc.hint) from None
        jobs.append(Job(index=i, name=name, model=ref.path, out_dir=job_dir, recipe=recipe))
    return jobs
