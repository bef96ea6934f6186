"""`--junit FILE`: the run as JUnit XML, which CI systems show as test results.

One <testsuite> per run. Test cases:
- one per stage (a failed stage is an <error>: nothing after it ran);
- one per artifact: its verification (status ok passes; skipped is <skipped>; failed,
  failed-verification or degraded is a <failure> whose message is the artifact's error);
  `unverified` (no runtime here ran the file: Core ML off macOS) is a <skipped> whose message
  starts "unverified:" and says what was checked, so a JUnit reader never counts it as a
  pass; with --strict it is a <failure> of type "unverified". The suite's properties list
  the unverified artifacts (`unverified_artifacts`);
- one per budget rule and artifact the rule applies to (each violation is a <failure>),
  so a CI page lists "max_accuracy_drop: cpu/digits-int8.tflite" as a failed test.

The layout follows the schema Jenkins, GitLab and GitHub test reporters read
(testsuites > testsuite[name, tests, failures, errors, skipped, time] > testcase[classname,
name, time] > failure[message, type]); tests/data/junit.xsd holds it.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from mobilec.errors import MobilecError
from mobilec.report.schema import GOOD_STATUSES, UNVERIFIED_MEANING
from mobilec.util.fs import atomic_write_text, check_regular

BAD_STATUSES = ("failed", "failed-verification", "degraded")
# Budget rule -> the words its violation message uses (report/budget.py writes the rule's
# key into every message, so a violation is attributed to its rule and artifact).
BUDGET_RULES = ("max_accuracy_drop", "max_size_bytes", "max_latency_ms")


def _xml_safe(text: Any) -> str:
    """XML 1.0 cannot hold most control characters, even escaped: drop them (ElementTree
    escapes <, >, & and quotes itself). A converter's message may carry any byte."""
    s = "" if text is None else str(text)
    return "".join(c for c in s if c in "\t\n\r" or (ord(c) >= 0x20 and c not in "\ufffe\uffff"))


def _case(suite: ET.Element, classname: str, name: str, seconds: float = 0.0) -> ET.Element:
    return ET.SubElement(suite, "testcase", {"classname": _xml_safe(classname),
                                             "name": _xml_safe(name), "time": f"{seconds:.3f}"})


def _fail(case: ET.Element, tag: str, message: str, kind: str, detail: str | None = None) -> None:
    el = ET.SubElement(case, tag, {"message": _xml_safe(message), "type": _xml_safe(kind)})
    if detail:
        el.text = _xml_safe(detail)


def junit_xml(report: dict[str, Any], recipe_path: str, strict: bool = False) -> str:
    """The report as a JUnit XML document (a string, UTF-8 declared). `strict`: the run's
    --strict (an unverified artifact is a failure, not a skip)."""
    name = str(report.get("name") or Path(recipe_path).stem)
    suite_name = f"mobilec {name}"
    root = ET.Element("testsuites", {"name": _xml_safe(suite_name)})
    suite = ET.SubElement(root, "testsuite", {"name": _xml_safe(suite_name)})
    props = ET.SubElement(suite, "properties")
    for key, value in (("recipe", recipe_path), ("recipe_sha256", report.get("recipe_sha256")),
                       ("mobilec_version", report.get("mobilec_version")),
                       ("model", (report.get("model") or {}).get("path")),
                       ("model_sha256", (report.get("model") or {}).get("sha256")),
                       ("exit_code", report.get("exit_code")),
                       ("unverified_artifacts", ", ".join(
                           str(a.get("path")) for a in report.get("artifacts") or []
                           if a.get("status") == "unverified") or None)):
        if value is not None:
            ET.SubElement(props, "property", {"name": key, "value": _xml_safe(value)})

    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    prefix = f"mobilec.{name}"

    for stage in report.get("stages") or []:
        case = _case(suite, f"{prefix}.stage", str(stage.get("name")), float(stage.get("seconds") or 0))
        counts["tests"] += 1
        if stage.get("status") == "failed":
            _fail(case, "error", stage.get("error") or "stage failed", "StageError")
            counts["errors"] += 1
        elif stage.get("status") == "skipped":
            ET.SubElement(case, "skipped", {"message": "stage skipped"})
            counts["skipped"] += 1

    artifacts = report.get("artifacts") or []
    for a in artifacts:
        target = a.get("target") or a.get("role") or "-"
        case = _case(suite, f"{prefix}.verify.{target}", str(a.get("path")))
        counts["tests"] += 1
        status = a.get("status")
        reason = a.get("error") or a.get("note")
        if status == "skipped":
            ET.SubElement(case, "skipped", {"message": _xml_safe(reason or "skipped")})
            counts["skipped"] += 1
        elif status == "unverified" and not strict:
            ET.SubElement(case, "skipped", {"message": _xml_safe(_unverified(a))})
            counts["skipped"] += 1
        elif status == "unverified":
            _fail(case, "failure", _unverified(a) + " (--strict)", "unverified",
                  _verification_detail(a))
            counts["failures"] += 1
        elif status != "ok":
            _fail(case, "failure", reason or f"artifact status {status}", str(status),
                  _verification_detail(a))
            counts["failures"] += 1

    budget = report.get("budget") or {}
    limits = budget.get("limits") or {}
    violations = [str(v) for v in budget.get("violations") or []]
    used: set[int] = set()
    checked = [a for a in artifacts if a.get("role", "artifact") == "artifact"
               and a.get("status") in GOOD_STATUSES]
    for rule in limits:
        if not checked:
            case = _case(suite, f"{prefix}.budget", str(rule))
            ET.SubElement(case, "skipped", {"message": "no verified artifact to check"})
            counts["tests"] += 1
            counts["skipped"] += 1
            continue
        for a in checked:
            path = str(a.get("path"))
            case = _case(suite, f"{prefix}.budget.{rule}", path)
            counts["tests"] += 1
            hits = [i for i, v in enumerate(violations)
                    if i not in used and v.startswith(f"{path}:") and rule in v]
            unmeasured = [v for v in budget.get("not_measured") or []
                          if v.startswith(f"{path}:") and rule in v]
            if hits:
                used.update(hits)
                _fail(case, "failure", "; ".join(violations[i] for i in hits), "BudgetViolation",
                      f"{rule} = {limits[rule]}")
                counts["failures"] += 1
            elif unmeasured:  # not a pass: the number was never taken
                ET.SubElement(case, "skipped", {"message": _xml_safe(unmeasured[0])})
                counts["skipped"] += 1
    # A violation of a rule this module does not know yet must not vanish from the results.
    for i, v in enumerate(violations):
        if i not in used:
            case = _case(suite, f"{prefix}.budget", v.split(":", 1)[0])
            _fail(case, "failure", v, "BudgetViolation")
            counts["tests"] += 1
            counts["failures"] += 1

    total = sum(float(s.get("seconds") or 0) for s in report.get("stages") or [])
    attrs = {k: str(v) for k, v in counts.items()}
    suite.attrib.update({**attrs, "time": f"{total:.3f}", "hostname": _xml_safe(platform.node() or "localhost"),
                         "timestamp": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")})
    # <testsuites> has no `skipped` in the Jenkins/Surefire schema: only these three
    root.attrib.update({k: attrs[k] for k in ("tests", "failures", "errors")})
    root.set("time", f"{total:.3f}")
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _unverified(a: dict[str, Any]) -> str:
    graphs = "; ".join(f"{g.get('graph')}: SNR {g.get('snr_db')} dB" for g in
                       a.get("built_from") or [])
    return f"unverified: {UNVERIFIED_MEANING}" + (f" ({graphs})" if graphs else "")


def _verification_detail(a: dict[str, Any]) -> str | None:
    ver = a.get("verification") or a.get("fidelity")
    lines = []
    if isinstance(ver, dict):
        lines.append("verification: " + ", ".join(f"{k}={v}" for k, v in ver.items()
                                                   if not isinstance(v, (dict, list))))
    failed = a.get("routes_failed")
    if failed:
        lines.append(f"routes failed: {failed}")
    return "\n".join(lines) or None


def written_by_mobilec(path: Path) -> bool:
    """An earlier `--junit` output: XML whose <testsuites> mobilec named."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    return head.startswith(b"<?xml") and b'<testsuites name="mobilec ' in head


def check_junit_target(path: str | Path, force: bool = False) -> None:
    """exit 2 when `path` holds something other than an earlier mobilec JUnit file."""
    path = Path(path)
    if not os.path.lexists(path) or force:
        return
    check_regular(path, "the --junit file")
    if path.is_dir() or not written_by_mobilec(path):
        raise MobilecError("--junit would overwrite a file that mobilec did not write",
                           where=str(path), hint="name a new file for --junit (or pass "
                                                 "--force to overwrite it)")


def write_junit(path: str | Path, xml: str, force: bool = False) -> Path:
    """Write the JUnit file in one rename (a CI step never reads half a file). A file there
    that an earlier --junit did not write (a model, the recipe, anything) is never replaced
    unless forced: exit 2 instead."""
    path = Path(path)
    check_junit_target(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, xml)
    return path
