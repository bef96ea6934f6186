"""`mobilec compare BASE NEW`: per-artifact deltas between two runs, and regression gates.

Artifacts are matched by (target, format, quantization). What is left over on both sides
is then paired by (target, format, role) when that pairing is unambiguous: a branch that
switches `quantize.mode` from int8 to int4 is compared with main's int8 artifact of the
same target and format, which is the question a reviewer asks ("is the model we ship
bigger or worse than on main?"). Anything still unpaired is listed as added or removed.

Gates (all optional): a size or latency increase as a fraction of the base value
(0.05 = 5%), an accuracy loss in absolute accuracy (0.005 = half a point). An artifact
that verified in the base run but failed (or degraded) in the new one is a regression
with or without gates. Exit code: 1 when there is any regression, else 0, as budgets do.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mobilec.ci import textfmt as fmt
from mobilec.errors import EXIT_BUDGET, EXIT_OK, MobilecError
from mobilec.report.schema import GOOD_STATUSES, UNVERIFIED_MEANING
from mobilec.util.fs import check_regular

# A run's artifact statuses that mean "this artifact is not usable".
BAD_STATUSES = frozenset({"failed", "failed-verification", "degraded"})
# Float noise in JSON round-trips must not trip a gate of 0.
EPS = 1e-9


# ---------------------------------------------------------------------------- loading

def load_report(path: str | Path) -> dict[str, Any]:
    """A report.json, or an output dir holding one."""
    path = Path(path)
    file = path / "report.json" if path.is_dir() else path
    check_regular(file, "the report", MobilecError)  # a FIFO would block the read forever
    if not file.exists():
        if path.is_dir():
            raise MobilecError("no report.json in this directory", where=str(path),
                               hint="pass a mobilec output dir (the --out of a compress run) "
                                    "or a report.json file; the run must write `report: [json]`")
        raise MobilecError("file not found", where=str(path),
                           hint="pass a report.json or the output dir of a compress run")
    try:
        report = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MobilecError(f"cannot read the report: {exc}", where=str(file),
                           hint="it should be the report.json a compress run wrote") from None
    if not isinstance(report, dict) or not isinstance(report.get("artifacts"), list):
        raise MobilecError("not a mobilec report (no 'artifacts' list)", where=str(file),
                           hint="pass the report.json of `mobilec compress`, not a zoo report")
    return report


# ---------------------------------------------------------------------------- metrics

@dataclass(frozen=True)
class Metric:
    key: str
    header: str
    short: str  # the change column's header in the narrowest table
    kind: str  # bytes | fraction | points | db | ms
    get: Callable[[dict[str, Any]], float | None]


def _nested(*keys: str) -> Callable[[dict[str, Any]], float | None]:
    def get(a: dict[str, Any]) -> float | None:
        value: Any = a
        for k in keys:
            value = value.get(k) if isinstance(value, dict) else None
        return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    return get


METRICS: tuple[Metric, ...] = (
    Metric("size_bytes", "size", "size", "bytes", _nested("size_bytes")),
    Metric("gzip_bytes", "gzip", "gzip", "bytes", _nested("gzip_bytes")),
    Metric("accuracy", "accuracy", "acc", "fraction", _nested("accuracy")),
    Metric("accuracy_drop", "drop", "drop", "points", _nested("accuracy_drop")),
    Metric("snr_db", "SNR", "SNR", "db", _nested("fidelity", "snr_db")),
    Metric("latency_median_ms", "latency", "ms", "ms", _nested("latency_ms", "median")),
)


@dataclass
class MetricDelta:
    base: float | None
    new: float | None

    @property
    def delta(self) -> float | None:
        return None if self.base is None or self.new is None else self.new - self.base

    @property
    def relative(self) -> float | None:
        d = self.delta
        return None if d is None or not self.base else d / abs(self.base)


@dataclass
class ArtifactDelta:
    target: str | None
    format: str
    base: dict[str, Any]
    new: dict[str, Any]
    metrics: dict[str, MetricDelta] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.new.get("path") or self.base.get("path"))

    @property
    def quant(self) -> str:
        b, n = self.base.get("quantization"), self.new.get("quantization")
        return str(n) if b == n else f"{b}→{n}"

    @property
    def status(self) -> str:
        b, n = self.base.get("status"), self.new.get("status")
        return str(n) if b == n else f"{b}→{n}"


@dataclass
class Comparison:
    base_label: str
    new_label: str
    matched: list[ArtifactDelta]
    added: list[dict[str, Any]]
    removed: list[dict[str, Any]]
    gates: dict[str, float]
    regressions: list[str]
    notes: list[str]

    @property
    def passed(self) -> bool:
        return not self.regressions

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.passed else EXIT_BUDGET


# ---------------------------------------------------------------------------- comparing

def _key(a: dict[str, Any]) -> tuple[Any, ...]:
    return (a.get("target"), a.get("format"), a.get("quantization"))


def _pair(base: list[dict[str, Any]], new: list[dict[str, Any]]
          ) -> tuple[list[tuple[dict[str, Any], dict[str, Any]]], list[dict[str, Any]], list[dict[str, Any]]]:
    pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []
    left_base = list(base)
    left_new: list[dict[str, Any]] = []
    for n in new:  # exact key first; duplicates pair in order
        match = next((b for b in left_base if _key(b) == _key(n)), None)
        if match is None:
            left_new.append(n)
        else:
            left_base.remove(match)
            pairs.append((match, n))

    def loose(a: dict[str, Any]) -> tuple[Any, ...]:
        return (a.get("target"), a.get("format"), a.get("role", "artifact"))

    for n in list(left_new):  # a changed quantization: pair only when unambiguous
        same_b = [b for b in left_base if loose(b) == loose(n)]
        same_n = [x for x in left_new if loose(x) == loose(n)]
        if len(same_b) == 1 and len(same_n) == 1:
            left_base.remove(same_b[0])
            left_new.remove(n)
            pairs.append((same_b[0], n))
    return pairs, left_new, left_base


def _check_gate(name: str, value: float | None) -> None:
    if value is not None and (not isinstance(value, (int, float)) or value < 0):
        raise MobilecError(f"{name} must be a number ≥ 0, got {value!r}",
                           hint="size and latency are fractions (0.05 = 5%); accuracy loss is "
                                "absolute accuracy (0.005 = 0.5 points)")


def compare(base: dict[str, Any], new: dict[str, Any], *, max_size_increase: float | None = None,
            max_accuracy_loss: float | None = None, max_latency_increase: float | None = None,
            base_label: str = "base", new_label: str = "new") -> Comparison:
    """Deltas of every artifact the two runs share, and the regressions the gates find."""
    _check_gate("max_size_increase", max_size_increase)
    _check_gate("max_accuracy_loss", max_accuracy_loss)
    _check_gate("max_latency_increase", max_latency_increase)
    gates = {k: float(v) for k, v in (("max_size_increase", max_size_increase),
                                      ("max_accuracy_loss", max_accuracy_loss),
                                      ("max_latency_increase", max_latency_increase)) if v is not None}
    pairs, added, removed = _pair(base.get("artifacts") or [], new.get("artifacts") or [])
    matched: list[ArtifactDelta] = []
    regressions: list[str] = []
    notes: list[str] = []
    for b, n in pairs:
        d = ArtifactDelta(n.get("target"), str(n.get("format")), b, n,
                          {m.key: MetricDelta(m.get(b), m.get(n)) for m in METRICS})
        matched.append(d)
        regressions += _regressions(d, gates)
        if b.get("status") == "ok" and n.get("status") == "unverified":  # a note, no regression
            notes.append(f"{d.name}: ok in {base_label}, unverified in {new_label} "
                         f"({UNVERIFIED_MEANING})")
        if b.get("status") == "ok" and n.get("status") == "skipped":
            notes.append(f"{d.name}: verified in {base_label}, skipped in {new_label}"
                         + (f" ({n['error']})" if n.get("error") else ""))
    if "max_accuracy_loss" in gates and not any(
            d.metrics["accuracy"].delta is not None for d in matched):
        notes.append("--max-accuracy-loss checked nothing: no artifact has an accuracy in both "
                     "runs (eval data without labels, or artifacts that cannot run here)")
    for key, what in (("sha256", "model"),):
        bm, nm = (base.get("model") or {}).get(key), (new.get("model") or {}).get(key)
        if bm and nm and bm != nm:
            notes.append(f"the input {what} differs: sha256 {bm[:12]} in {base_label}, "
                         f"{nm[:12]} in {new_label}")
    if base.get("recipe_sha256") and new.get("recipe_sha256") and \
            base["recipe_sha256"] != new["recipe_sha256"]:
        notes.append("the recipe differs between the two runs")
    return Comparison(base_label, new_label, matched, added, removed, gates, regressions, notes)


def _regressions(d: ArtifactDelta, gates: dict[str, float]) -> list[str]:
    out: list[str] = []
    bs, ns = d.base.get("status"), d.new.get("status")
    if bs in GOOD_STATUSES and ns in BAD_STATUSES:
        why = d.new.get("error") or d.new.get("note")
        was = "verified" if bs == "ok" else bs
        out.append(f"{d.name}: {was} in the base run, {ns} now" + (f" ({why})" if why else ""))
    size, acc, lat = d.metrics["size_bytes"], d.metrics["accuracy"], d.metrics["latency_median_ms"]
    limit = gates.get("max_size_increase")
    if limit is not None and size.relative is not None and size.relative > limit + EPS:
        out.append(f"{d.name}: size {fmt.value('bytes', size.base)} → {fmt.value('bytes', size.new)} "
                   f"({size.relative * 100:+.1f}%), more than the allowed +{limit * 100:.1f}%")
    limit = gates.get("max_accuracy_loss")
    if limit is not None and acc.delta is not None and -acc.delta > limit + EPS:
        out.append(f"{d.name}: accuracy {fmt.value('fraction', acc.base)} → "
                   f"{fmt.value('fraction', acc.new)} ({acc.delta * 100:+.2f} pt), a loss of more "
                   f"than the allowed {limit * 100:.2f} pt")
    limit = gates.get("max_latency_increase")
    if limit is not None and lat.relative is not None and lat.relative > limit + EPS:
        out.append(f"{d.name}: median latency {fmt.value('ms', lat.base)} → {fmt.value('ms', lat.new)} "
                   f"({lat.relative * 100:+.1f}%), more than the allowed +{limit * 100:.1f}%")
    return out


# ---------------------------------------------------------------------------- formatting

# Column sets, widest first: the text report takes the first that fits the terminal.
_LEAN = ("size_bytes", "accuracy", "snr_db", "latency_median_ms")  # drop = -Δaccuracy; gzip ~ size


def _table_rows(cmp: Comparison, keys: tuple[str, ...], values: bool) -> list[list[str]]:
    metrics = [m for m in METRICS if m.key in keys]
    rows = [["artifact", "quant"] + [m.header if values else f"Δ{m.short}" for m in metrics]
            + ["status"]]
    for d in cmp.matched:
        cells = [d.name, d.quant]
        for m in metrics:
            md = d.metrics[m.key]
            if not values:
                cells.append(fmt.short_change(m.kind, md.base, md.new))
            elif md.delta in (None, 0):
                cells.append(fmt.value(m.kind, md.new))
            else:
                cells.append(f"{fmt.value(m.kind, md.new)} ({fmt.short_change(m.kind, md.base, md.new)})")
        rows.append(cells + [d.status])
    return rows


def _artifact_blocks(cmp: Comparison, width: int) -> list[str]:
    """The narrowest form: one small table per artifact (metric, base, new, change)."""
    lines: list[str] = []
    for d in cmp.matched:
        head = d.name if d.base.get("path") == d.new.get("path") else \
            f"{d.base.get('path')} → {d.new.get('path')}"
        lines += [""] + fmt.wrap(f"{head} ({d.target or '-'}, {d.format}, {d.quant}, {d.status})", width)
        rows = [["", "base", "new", "change"]]
        rows += [[m.header, fmt.value(m.kind, d.metrics[m.key].base),
                  fmt.value(m.kind, d.metrics[m.key].new), fmt.change(m.kind, d.metrics[m.key].base, d.metrics[m.key].new)]
                 for m in METRICS]
        grid = fmt.grid(rows, indent="  ")
        if max(len(x) for x in grid) <= width:
            lines += grid
        else:  # narrower than a 4-column table: one metric a line, wrapped at spaces
            for r in rows[1:]:
                lines += fmt.wrap(f"{r[0]}: {r[1]} → {r[2]} ({r[3]})", width, indent="  ")
    return lines


def render_text(cmp: Comparison, width: int = 80) -> str:
    """Plain text that fits `width` columns. The widest table that fits (values and changes;
    then fewer columns; then changes only), else one small table per artifact. Numbers are
    never cut: only prose wraps, and only at spaces."""
    lines = fmt.wrap(f"compare {cmp.base_label} → {cmp.new_label}", width)
    all_keys = tuple(m.key for m in METRICS)
    if cmp.matched:
        for keys, values in ((all_keys, True), (_LEAN, True), (all_keys, False), (_LEAN, False)):
            rows = _table_rows(cmp, keys, values)
            fitted = fmt.fit_names(rows, width) if (keys, values) == (_LEAN, False) else rows
            if fitted is not None and max(len(x) for x in fmt.grid(fitted)) <= width:
                lines += [""] + fmt.grid(fitted)
                break
        else:
            lines += _artifact_blocks(cmp, width)
    else:
        lines += ["", "no artifact in common"]
    for title, items in ((f"only in {cmp.new_label}", cmp.added),
                         (f"only in {cmp.base_label}", cmp.removed)):
        if items:
            lines += [""] + fmt.wrap(f"{title}: " + ", ".join(
                f"{a.get('path')} ({a.get('quantization')}, {a.get('status')})" for a in items), width)
    if cmp.notes:
        lines.append("")
    for note in cmp.notes:
        lines += fmt.wrap(f"note: {note}", width)
    lines += [""] + fmt.wrap(_gates_text(cmp), width)
    if cmp.regressions:
        lines += fmt.wrap(f"{len(cmp.regressions)} regression(s):", width)
        for r in cmp.regressions:
            lines += fmt.wrap(f"- {r}", width, indent="  ")
    else:
        lines.append("no regression")
    return "\n".join(lines) + "\n"


def _gates_text(cmp: Comparison) -> str:
    g = cmp.gates
    if not g:
        return "gates: none set (only artifacts that stopped verifying count as regressions)"
    parts = []
    if "max_size_increase" in g:
        parts.append(f"size increase at most {g['max_size_increase'] * 100:.1f}%")
    if "max_accuracy_loss" in g:
        parts.append(f"accuracy loss at most {g['max_accuracy_loss'] * 100:.2f} pt")
    if "max_latency_increase" in g:
        parts.append(f"latency increase at most {g['max_latency_increase'] * 100:.1f}%")
    return "gates: " + ", ".join(parts)


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(cmp: Comparison) -> str:
    """GitHub-flavoured markdown for a PR comment or $GITHUB_STEP_SUMMARY."""
    verdict = "no regression" if cmp.passed else f"{len(cmp.regressions)} regression(s)"
    mark = "✅" if cmp.passed else "❌"
    lines = [f"### {mark} mobilec compare: {verdict}", "",
             f"`{_md(cmp.base_label)}` → `{_md(cmp.new_label)}` · {_md(_gates_text(cmp))}", ""]
    if cmp.regressions:
        lines += [f"- **{_md(r)}**" for r in cmp.regressions] + [""]
    if cmp.matched:
        headers = ["artifact", "quant"] + [m.header for m in METRICS] + ["status"]
        lines += ["| " + " | ".join(headers) + " |", "|---|---|" + "---:|" * len(METRICS) + "---|"]
        for d in cmp.matched:
            cells = [f"`{_md(d.name)}`", _md(d.quant)]
            for m in METRICS:
                md = d.metrics[m.key]
                if md.delta in (None, 0):
                    cells.append(fmt.value(m.kind, md.new))
                else:
                    cells.append(f"{fmt.value(m.kind, md.base)} → {fmt.value(m.kind, md.new)} "
                                 f"({fmt.short_change(m.kind, md.base, md.new)})")
            lines.append("| " + " | ".join(cells + [_md(d.status)]) + " |")
    else:
        lines.append("_no artifact in common_")
    for title, items in ((f"only in {cmp.new_label}", cmp.added),
                         (f"only in {cmp.base_label}", cmp.removed)):
        if items:
            lines += ["", f"**{_md(title)}**: " + ", ".join(
                f"`{_md(str(a.get('path')))}` ({a.get('quantization')}, {a.get('status')})"
                for a in items)]
    if cmp.notes:
        lines += [""] + [f"- {_md(n)}" for n in cmp.notes]
    return "\n".join(lines) + "\n"


def as_dict(cmp: Comparison) -> dict[str, Any]:
    """JSON for `mobilec compare --json`."""
    def side(a: dict[str, Any]) -> dict[str, Any]:
        return {k: a.get(k) for k in ("path", "target", "format", "quantization", "status")}

    return {
        "base": cmp.base_label, "new": cmp.new_label, "gates": dict(cmp.gates),
        "artifacts": [{
            "target": d.target, "format": d.format, "base": side(d.base), "new": side(d.new),
            "metrics": {k: {"base": md.base, "new": md.new, "delta": md.delta,
                            "relative": md.relative} for k, md in d.metrics.items()},
        } for d in cmp.matched],
        "added": [side(a) for a in cmp.added],
        "removed": [side(a) for a in cmp.removed],
        "notes": list(cmp.notes),
        "regressions": list(cmp.regressions),
        "passed": cmp.passed,
        "exit_code": cmp.exit_code,
    }
