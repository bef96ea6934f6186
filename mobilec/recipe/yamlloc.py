"""YAML loading that keeps line numbers, so every recipe error can name its line.

Only `yaml.SafeLoader` is used. Alias expansion is bounded: a "billion laughs"
document is refused instead of being expanded into memory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mobilec.errors import RecipeError, first_line
from mobilec.util.fs import check_regular

MAX_NODES = 100_000
MAX_BYTES = 1_000_000
MAX_DEPTH = 64  # a recipe is about 4 levels deep

Loc = tuple[Any, ...]


def format_loc(loc: Loc) -> str:
    """('stages', 1, 'quantize', 'mode') -> 'stages[1].quantize.mode'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


class LocatedYaml:
    """A parsed YAML document plus the line of every key and item in it."""
    def __init__(self, data: Any, lines: dict[Loc, int], filename: str,
                 overridden: dict[Loc, str] | None = None):
        self.data = data
        self.lines = lines
        self.filename = filename
        # Keys set by --set (location -> the key as typed): they have no line in the file.
        self.overridden = overridden or {}

    def set_by(self, loc: Loc) -> str | None:
        """The --set key that gave `loc` (or one of its parents) its value, if any."""
        loc = tuple(loc)
        for depth in range(len(loc), 0, -1):
            if loc[:depth] in self.overridden:
                return self.overridden[loc[:depth]]
        return None

    def line_of(self, loc: Loc) -> int | None:
        loc = tuple(loc)
        while loc:
            if loc in self.lines:
                return self.lines[loc]
            loc = loc[:-1]
        return self.lines.get(())

    def where(self, loc: Loc) -> str:
        key = self.set_by(loc)
        if key is not None:
            return f"--set {key}"
        line = self.line_of(loc)
        return f"{self.filename}:{line}" if line else self.filename


def load_yaml_text(text: str, filename: str) -> LocatedYaml:
    if len(text.encode("utf-8", "replace")) > MAX_BYTES:
        raise RecipeError(f"file is larger than {MAX_BYTES} bytes; a recipe is a short YAML file",
                          where=filename)
    try:
        # The reader checks for unprintable characters as soon as it is built.
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as exc:
        raise RecipeError(f"malformed YAML: {first_line(exc, 200)}", where=filename,
                          hint="a recipe is plain UTF-8 text without control characters") from None
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise RecipeError("YAML is nested too deeply", where=filename) from None
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = f":{mark.line + 1}" if mark else ""
            problem = exc.problem or exc.context or "malformed YAML"
            raise RecipeError(f"malformed YAML: {problem}", where=f"{filename}{line}",
                              hint="check indentation and quoting near that line") from None
        except yaml.YAMLError as exc:
            raise RecipeError(f"malformed YAML: {exc}", where=filename) from None
        if node is None:
            return LocatedYaml(None, {(): 1}, filename)
        lines: dict[Loc, int] = {}
        count = [0]

        def construct(n: yaml.Node) -> Any:
            # SafeConstructor raises assorted built-in errors on tagged or date-like scalars
            # (`!!int 1.5` ValueError, `!!int ''` IndexError, 2001-13-45 ValueError).
            try:
                return loader.construct_object(n, deep=True)
            except Exception as exc:  # noqa: BLE001 - all of them mean "bad value here"
                raise RecipeError(f"cannot read value: {first_line(exc, 200)}",
                                  where=f"{filename}:{n.start_mark.line + 1}") from None

        def build(n: yaml.Node, path: Loc, ancestors: frozenset[int] = frozenset()) -> Any:
            count[0] += 1
            if count[0] > MAX_NODES:
                raise RecipeError(
                    f"document expands to more than {MAX_NODES} nodes (YAML alias bomb?)",
                    where=filename, hint="recipes do not need anchors that expand this much")
            if id(n) in ancestors or len(path) > MAX_DEPTH:
                # `&a [*a]` is a legal YAML cycle; expanding it would never end.
                raise RecipeError("an alias refers to itself, or the YAML is nested too deeply",
                                  where=f"{filename}:{n.start_mark.line + 1}")
            ancestors = ancestors | {id(n)}
            lines.setdefault(path, n.start_mark.line + 1)
            if isinstance(n, yaml.MappingNode):
                try:
                    loader.flatten_mapping(n)  # `<<:` merge keys
                except yaml.YAMLError as exc:
                    raise RecipeError(f"bad merge key (<<): {first_line(exc, 200)}",
                                      where=f"{filename}:{n.start_mark.line + 1}") from None
                result: dict[Any, Any] = {}
                for key_node, value_node in n.value:
                    key = construct(key_node) if isinstance(key_node, yaml.ScalarNode) else []
                    if not isinstance(key, (str, int, float, bool)) and key is not None:
                        raise RecipeError("mapping keys must be plain scalars",
                                          where=f"{filename}:{key_node.start_mark.line + 1}")
                    if key in result:
                        raise RecipeError(f"duplicate key '{key}' in {format_loc(path) or 'the document'}",
                                          where=f"{filename}:{key_node.start_mark.line + 1}",
                                          hint="each key may appear once; remove one of them")
                    lines[path + (key,)] = key_node.start_mark.line + 1
                    result[key] = build(value_node, path + (key,), ancestors)
                return result
            if isinstance(n, yaml.SequenceNode):
                return [build(item, path + (i,), ancestors) for i, item in enumerate(n.value)]
            return construct(n)

        return LocatedYaml(build(node, ()), lines, filename)
    finally:
        loader.dispose()


def load_yaml_file(path: Path) -> LocatedYaml:
    path = Path(path)
    if not path.exists():
        raise RecipeError("file not found", where=str(path),
                          hint="check the path; `mobilec init` writes a starter recipe")
    if path.is_dir():
        raise RecipeError("is a directory, expected a YAML file", where=str(path))
    check_regular(path, "the recipe", RecipeError)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise RecipeError(f"cannot read: {exc.strerror}", where=str(path)) from None
    if len(raw) > MAX_BYTES:
        raise RecipeError(f"file is larger than {MAX_BYTES} bytes; a recipe is a short YAML file",
                          where=str(path))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RecipeError("not UTF-8 text; is this really a YAML recipe?", where=str(path)) from None
    return load_yaml_text(text, str(path))
