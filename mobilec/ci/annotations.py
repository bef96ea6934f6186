"""GitHub Actions workflow commands (`::error file=…,line=…::…`) for a run's report.

With GITHUB_ACTIONS=true, the CLI prints these on stdout; GitHub then marks the recipe
line of each violated budget key in the pull request, and lists degraded or failed
artifacts as warnings. Format: https://docs.github.com/actions/reference/workflow-commands
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from mobilec.errors import MobilecError
from mobilec.recipe.yamlloc import load_yaml_text
from mobilec.report.schema import UNVERIFIED_MEANING

BUDGET_RULES = ("max_accuracy_drop", "max_size_bytes", "max_latency_ms")
WARN_STATUSES = ("failed", "failed-verification", "degraded")


def _escape_data(text: str) -> str:
    # the message: a newline would end the command; % starts an escape
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    # file=, line=, title= values: `,` separates properties and `:` ends them
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def command(level: str, message: str, *, file: str | None = None, line: int | None = None,
            title: str | None = None) -> str:
    """One workflow command line: level is error, warning or notice."""
    props = []
    if file:
        props.append(f"file={_escape_property(file)}")
    if line:
        props.append(f"line={int(line)}")
    if title:
        props.append(f"title={_escape_property(title)}")
    return f"::{level} {','.join(props)}::{_escape_data(message)}" if props \
        else f"::{level}::{_escape_data(message)}"


def _key_lines(recipe_text: str, recipe_path: str) -> dict[tuple[Any, ...], int]:
    """Line of every key path in the recipe, from the same loader that reports recipe errors."""
    try:
        return load_yaml_text(recipe_text, recipe_path).lines
    except MobilecError:  # the recipe ran, so it parsed; if not, fall back to a text search
        return {}


def _find_line(recipe_text: str, key: str) -> int | None:
    # The first `key:` inside a `budget:` block, by indentation; flow style `budget: {…}` too.
    lines = recipe_text.splitlines()
    for i, ln in enumerate(lines):
        if re.match(r"^budget\s*:", ln):
            if re.search(rf"\b{key}\s*:", ln):
                return i + 1
            for j in range(i + 1, len(lines)):
                nxt = lines[j]
                if nxt.strip() and not nxt.startswith((" ", "\t", "#")):
                    break
                if re.match(rf"^\s+{key}\s*:", nxt):
                    return j + 1
            return i + 1
    return None


def display_path(recipe_path: str | Path, workspace: str | None = None) -> str:
    """The recipe path as GitHub wants it in file=: relative to the checkout when inside it."""
    path = Path(recipe_path)
    root = Path(workspace or os.environ.get("GITHUB_WORKSPACE") or os.getcwd())
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except (ValueError, OSError):
        return path.as_posix()


def github_annotations(report: dict[str, Any], recipe_path: str, recipe_text: str,
                       workspace: str | None = None, strict: bool = False) -> list[str]:
    """One ::error per violated budget key (at that key's recipe line, every artifact that
    broke it in the message), one ::warning per failed, failed-verification or degraded
    artifact (at the recipe's `targets:` line), one ::notice per unverified artifact (a
    ::warning with --strict)."""
    file = display_path(recipe_path, workspace)
    located = _key_lines(recipe_text, recipe_path)
    out: list[str] = []
    budget = report.get("budget") or {}
    violations = [str(v) for v in budget.get("violations") or []]
    rules = list(dict.fromkeys([*(budget.get("limits") or {}), *BUDGET_RULES]))
    claimed: set[int] = set()
    for rule in rules:
        hits = [i for i, v in enumerate(violations) if i not in claimed and rule in v]
        if not hits:
            continue
        claimed.update(hits)
        line = located.get(("budget", rule)) or located.get(("budget",)) or \
            _find_line(recipe_text, rule)
        limit = (budget.get("limits") or {}).get(rule)
        title = f"mobilec budget: {rule}" + (f" = {limit}" if limit is not None else "")
        out.append(command("error", "; ".join(violations[i] for i in hits), file=file, line=line,
                           title=title))
    for i, v in enumerate(violations):  # a rule this module does not know: still an error
        if i not in claimed:
            out.append(command("error", v, file=file, line=located.get(("budget",)),
                               title="mobilec budget"))
    targets_line = located.get(("targets",))
    for a in report.get("artifacts") or []:
        status = a.get("status")
        if status in WARN_STATUSES:
            why = a.get("error") or a.get("note") or f"status {status}"
            out.append(command("warning", f"{a.get('path')}: {why}", file=file, line=targets_line,
                               title=f"mobilec: {a.get('path')} {status}"))
        elif status == "unverified":  # not a fault, but not a measured ok either: say so
            out.append(command("warning" if strict else "notice",
                               f"{a.get('path')}: {UNVERIFIED_MEANING}", file=file,
                               line=targets_line, title=f"mobilec: {a.get('path')} unverified"))
    for s in report.get("stages") or []:
        if s.get("status") == "failed":
            out.append(command("error", f"stage {s.get('name')} failed: {s.get('error') or ''}".rstrip(": "),
                               file=file, title=f"mobilec: {s.get('name')} failed"))
    return out
