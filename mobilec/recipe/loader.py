"""Loading a recipe: YAML with line numbers, validation errors that name file:line and key,
--set overrides, relative paths resolved against the recipe file. Never imports TensorFlow.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, Union

from pydantic import BaseModel, ValidationError

from mobilec.errors import RecipeError
from mobilec.recipe.schema import STAGE_ORDER, Recipe
from mobilec.recipe.yamlloc import Loc, LocatedYaml, format_loc, load_yaml_file, load_yaml_text

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


def apply_overrides(data: dict[str, Any], overrides: list[str] | dict[str, Any],
                    applied: dict[tuple[Any, ...], str] | None = None) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides to raw recipe data (values are YAML-typed).

    A path may start with a stage name (`quantize.mode=float16`): it then addresses
    that stage, adding it in canonical order when the recipe lacks it. `applied`, when
    given, gets each key's location in the data (list indices as ints) -> its --set name,
    so errors about it point at the command line, not at the recipe file.
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
        loc: list[Any] = []
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if isinstance(node, list):
                if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
                    raise RecipeError(f"--set {label}: '{part}' is not an index of a list of {len(node)}")
                loc.append(int(part) % len(node))
            else:
                loc.append(part)
            if isinstance(node, list):
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
        if applied is not None:
            applied[tuple(loc)] = label
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

    if recipe.model.path is not None:
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
        applied: dict[tuple[Any, ...], str] = {}
        data = apply_overrides(data, overrides, applied)
        doc = LocatedYaml(data, doc.lines, doc.filename, overridden=applied)
    _check_stage_shapes(data, doc)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as exc:
        _raise_validation(exc, doc)
    if recipe.name is None:
        recipe.name = default_name
    _resolve_paths(recipe, base_dir, doc)
    recipe._source = doc.filename
    recipe._doc = doc
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
