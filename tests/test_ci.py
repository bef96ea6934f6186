"""CI outputs: compare with regression gates, JUnit XML, GitHub annotations, the lockfile,
and terminal tables that fit 80/100/160 columns without cutting a header or a number.

Fast tests use small report dicts; the `slow` ones run the demo model twice for real
(int8 and int4) and check the same things on those reports.
"""

from __future__ import annotations

import copy
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import compress, write_recipe

from mobilec.ci.annotations import github_annotations
from mobilec.ci.compare import as_dict, compare, load_report, render_markdown, render_text
from mobilec.ci.junit import junit_xml, write_junit
from mobilec.ci.lockfile import (
    LOCK_NAME,
    build_lock,
    check_locked,
    read_lock,
    recipe_inputs,
    write_lock,
)
from mobilec.errors import EXIT_USAGE, MobilecError, UnsupportedError
from mobilec.report.table import artifact_cells

XSD = Path(__file__).parent / "data" / "junit.xsd"
NUMBER = re.compile(r"[-+]?\d[\d,]*(?:\.\d+)?")


# ---------------------------------------------------------------------------- small reports

def art(path: str, quant: str, *, fmt: str = "tflite", target: str | None = "cpu", size: int | None = 100_000,
        acc: float | None = 0.98, drop: float | None = 0.01, snr: float | None = 35.0,
        ms: float | None = 0.25, status: str = "ok", error: str | None = None,
        role: str = "artifact") -> dict[str, Any]:
    return {"path": path, "format": fmt, "target": target, "role": role, "quantization": quant,
            "delegate": "xnnpack", "fallback": None, "size_bytes": size, "gzip_bytes": None if size is None else size * 9 // 10,
            "size_ratio": None if size is None else 3.5, "accuracy": acc, "accuracy_drop": drop,
            "fidelity": None if snr is None else {"top1_agreement": 0.99, "max_abs_err": 0.01,
                                                  "snr_db": snr},
            "latency_ms": None if ms is None else {"median": ms, "p90": ms * 1.2},
            "status": status, "error": error, "note": None}


def report(*artifacts: dict[str, Any], violations: list[str] | None = None,
           limits: dict[str, Any] | None = None, name: str = "digits") -> dict[str, Any]:
    return {"mobilec_version": "0.1.0", "recipe": "recipe.yaml", "recipe_sha256": "ab" * 32,
            "name": name,
            "model": {"path": "m.keras", "format": "keras", "sha256": "cd" * 32, "params": 10,
                      "size_bytes": 1000, "accuracy": 0.99},
            "stages": [{"name": "load", "seconds": 1.5, "status": "ok", "metrics": {}},
                       {"name": "convert", "seconds": 2.25, "status": "ok", "metrics": {}}],
            "artifacts": list(artifacts),
            "budget": {"passed": not violations, "violations": violations or [],
                       "limits": limits or {}},
            "notes": [], "exit_code": 1 if violations else 0}


def int8_report() -> dict[str, Any]:
    return report(art("cpu/m-float32.tflite", "float32", size=340_000, drop=0.0, snr=140.0),
                  art("cpu/m-int8.tflite", "int8", size=92_000, acc=0.9944, drop=-0.0028, snr=44.9,
                      ms=0.004),
                  art("cpu/m-int8.onnx", "int8", fmt="onnx", size=97_000, acc=0.9944, snr=45.0))


def int4_report(acc: float = 0.9861) -> dict[str, Any]:
    return report(art("cpu/m-float32.tflite", "float32", size=340_000, drop=0.0, snr=140.0),
                  art("cpu/m-int4.tflite", "int4", size=48_000, acc=acc, drop=0.9917 - acc, snr=29.2,
                      ms=0.060),
                  art("cpu/m-int4.onnx", "int4", fmt="onnx", size=None, acc=None, drop=None, snr=None,
                      ms=None, status="skipped", error="quantization 'int4' cannot be applied to onnx"))


# ---------------------------------------------------------------------------- compare

def test_compare_identical_runs_has_no_regression():
    base = int8_report()
    cmp = compare(base, copy.deepcopy(base), max_size_increase=0, max_accuracy_loss=0,
                  max_latency_increase=0)
    assert cmp.regressions == [] and cmp.exit_code == 0
    assert not cmp.added and not cmp.removed and len(cmp.matched) == 3
    assert all(md.delta in (0, None) for d in cmp.matched for md in d.metrics.values())
    assert "no regression" in render_text(cmp, 80)


def test_compare_int8_vs_int4_pairs_the_changed_quantization_and_gates_accuracy():
    cmp = compare(int8_report(), int4_report(), max_accuracy_loss=0)
    by_name = {d.name: d for d in cmp.matched}
    d = by_name["cpu/m-int4.tflite"]
    assert d.quant == "int8→int4"
    assert d.metrics["size_bytes"].delta == 48_000 - 92_000
    assert d.metrics["accuracy"].delta == pytest.approx(0.9861 - 0.9944)
    assert d.metrics["snr_db"].delta == pytest.approx(29.2 - 44.9)
    assert by_name["cpu/m-int4.onnx"].status == "ok→skipped"
    assert cmp.exit_code == 1
    assert len(cmp.regressions) == 1 and "cpu/m-int4.tflite" in cmp.regressions[0]
    assert "-0.83 pt" in cmp.regressions[0]
    assert any("skipped" in n for n in cmp.notes)  # reported, not a regression
    # no gates: a quantization change that costs accuracy is shown, not failed
    assert compare(int8_report(), int4_report()).exit_code == 0
    # a gate the loss stays within
    assert compare(int8_report(), int4_report(), max_accuracy_loss=0.01).exit_code == 0


def test_compare_size_and_latency_gates_are_fractions():
    base = int8_report()
    new = copy.deepcopy(base)
    new["artifacts"][1]["size_bytes"] = int(92_000 * 1.10)
    new["artifacts"][1]["latency_ms"]["median"] = 0.004 * 1.5
    assert compare(base, new, max_size_increase=0.2, max_latency_increase=0.6).regressions == []
    cmp = compare(base, new, max_size_increase=0.05, max_latency_increase=0.25)
    assert len(cmp.regressions) == 2
    assert "+10.0%" in cmp.regressions[0] and "5.0%" in cmp.regressions[0]
    assert "+50.0%" in cmp.regressions[1]


def test_compare_an_artifact_that_stopped_verifying_is_a_regression_without_gates():
    base = int8_report()
    new = copy.deepcopy(base)
    new["artifacts"][2].update(status="failed-verification", error="SNR 3.1 dB < 20")
    cmp = compare(base, new)
    assert cmp.exit_code == 1 and "failed-verification" in cmp.regressions[0]
    assert "SNR 3.1 dB < 20" in cmp.regressions[0]


def test_compare_lists_added_and_removed_artifacts():
    base = int8_report()
    new = copy.deepcopy(base)
    new["artifacts"].pop(2)
    new["artifacts"].append(art("android-gpu/m-float16.tflite", "float16", target="android-gpu"))
    cmp = compare(base, new)
    assert [a["path"] for a in cmp.added] == ["android-gpu/m-float16.tflite"]
    assert [a["path"] for a in cmp.removed] == ["cpu/m-int8.onnx"]
    text = render_text(cmp, 100)
    assert "only in new: android-gpu/m-float16.tflite" in text and "only in base: cpu/m-int8.onnx" in text


def test_compare_rejects_negative_gates():
    with pytest.raises(MobilecError, match="max_size_increase"):
        compare(int8_report(), int8_report(), max_size_increase=-0.1)


@pytest.mark.parametrize("width", [60, 80, 100, 160])
def test_compare_text_fits_the_width_and_keeps_numbers_whole(width: int):
    cmp = compare(int8_report(), int4_report(), max_accuracy_loss=0, max_size_increase=0.05,
                  base_label="main", new_label="branch")
    text = render_text(cmp, width)
    assert all(len(line) <= width for line in text.splitlines()), text
    # the table (whichever form fits) shows the size change of the int4 model in full
    assert "-47.8%" in text
    assert "…" not in "\n".join(line for line in text.splitlines() if not line.startswith("…"))


def test_compare_markdown_and_json():
    cmp = compare(int8_report(), int4_report(), max_accuracy_loss=0, base_label="main",
                  new_label="pr")
    md = render_markdown(cmp)
    assert md.startswith("### ❌ mobilec compare: 1 regression(s)")
    assert "| artifact | quant | size | gzip | accuracy | drop | SNR | latency | status |" in md
    assert "89.8 KB → 46.9 KB (-47.8%)" in md
    data = json.loads(json.dumps(as_dict(cmp)))
    assert data["exit_code"] == 1 and data["passed"] is False
    row = next(a for a in data["artifacts"] if a["new"]["path"] == "cpu/m-int4.tflite")
    assert row["base"]["quantization"] == "int8"
    assert row["metrics"]["size_bytes"]["delta"] == -44_000
    ok = render_markdown(compare(int8_report(), int8_report()))
    assert ok.startswith("### ✅ mobilec compare: no regression")


def test_load_report_takes_a_file_or_an_output_dir(tmp_path: Path):
    (tmp_path / "report.json").write_text(json.dumps(int8_report()))
    assert load_report(tmp_path)["name"] == "digits"
    assert load_report(tmp_path / "report.json")["name"] == "digits"
    with pytest.raises(MobilecError, match="no report.json") as exc:
        load_report(tmp_path / "..")
    assert exc.value.exit_code == EXIT_USAGE
    with pytest.raises(MobilecError, match="file not found"):
        load_report(tmp_path / "nope.json")
    (tmp_path / "zoo.json").write_text(json.dumps({"models": []}))
    with pytest.raises(MobilecError, match="not a mobilec report"):
        load_report(tmp_path / "zoo.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(MobilecError, match="cannot read the report"):
        load_report(tmp_path / "bad.json")


# ---------------------------------------------------------------------------- JUnit

def _validate_xsd(xml: str) -> None:
    """Against tests/data/junit.xsd when xmlschema is installed (pip install xmlschema)."""
    try:
        import xmlschema
    except ImportError:
        return
    xmlschema.XMLSchema(str(XSD)).validate(xml)


def _junit_structure(xml: str) -> ET.Element:
    root = ET.fromstring(xml.encode())
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert len(suites) == 1
    suite = suites[0]
    for attr in ("name", "tests", "failures", "errors", "skipped", "time"):
        assert attr in suite.attrib, attr
    cases = suite.findall("testcase")
    assert int(suite.get("tests")) == len(cases)
    assert int(suite.get("failures")) == sum(1 for c in cases if c.find("failure") is not None)
    assert int(suite.get("errors")) == sum(1 for c in cases if c.find("error") is not None)
    assert int(suite.get("skipped")) == sum(1 for c in cases if c.find("skipped") is not None)
    for c in cases:
        assert {"classname", "name", "time"} <= set(c.attrib)
        float(c.get("time"))
        for f in c.findall("failure") + c.findall("error"):
            assert f.get("message") and f.get("type")
    _validate_xsd(xml)
    return suite


def test_junit_one_case_per_artifact_stage_and_budget_rule():
    limits = {"max_accuracy_drop": 0.01, "max_size_bytes": 95_000}
    r = report(art("cpu/m-float32.tflite", "float32", size=340_000, drop=0.0),
               art("cpu/m-int8.tflite", "int8", size=92_000, drop=0.02),
               art("cpu/m-int8.onnx", "int8", fmt="onnx", status="failed-verification",
                   error='SNR 3.1 dB < min_snr_db 20 & "top-1" <0.9>'),
               art("cpu/m-int4.onnx", "int4", fmt="onnx", status="skipped", error="not for onnx"),
               violations=["cpu/m-float32.tflite: size 340000 bytes > max_size_bytes 95000",
                           "cpu/m-int8.tflite: accuracy drop 2.00 points > max_accuracy_drop 1.00 points"],
               limits=limits)
    suite = _junit_structure(junit_xml(r, "recipes/demo.yaml"))
    cases = suite.findall("testcase")
    names = [(c.get("classname"), c.get("name")) for c in cases]
    assert ("mobilec.digits.stage", "load") in names
    assert ("mobilec.digits.verify.cpu", "cpu/m-int8.onnx") in names
    # budget rules x the two verified artifacts
    budget = [c for c in cases if ".budget." in c.get("classname")]
    assert len(budget) == 4
    failing = [c for c in budget if c.find("failure") is not None]
    assert len(failing) == 2  # one failing case per violation
    assert {(c.get("classname"), c.get("name")) for c in failing} == {
        ("mobilec.digits.budget.max_size_bytes", "cpu/m-float32.tflite"),
        ("mobilec.digits.budget.max_accuracy_drop", "cpu/m-int8.tflite")}
    bad = next(c for c in cases if c.get("name") == "cpu/m-int8.onnx").find("failure")
    assert bad.get("type") == "failed-verification"
    assert bad.get("message") == 'SNR 3.1 dB < min_snr_db 20 & "top-1" <0.9>'  # escaped, round-trips
    skipped = next(c for c in cases if c.get("name") == "cpu/m-int4.onnx").find("skipped")
    assert skipped.get("message") == "not for onnx"
    assert suite.get("failures") == "3" and suite.get("skipped") == "1"
    assert float(suite.get("time")) == pytest.approx(3.75)


def test_junit_survives_control_characters_and_a_failed_stage(tmp_path: Path):
    r = report(art("cpu/m-int8.tflite", "int8", status="failed", error="converter said \x00\x1b[31mno\x07"))
    r["stages"].append({"name": "evaluate", "seconds": 0.1, "status": "failed",
                        "error": "onnxruntime: bad <graph>"})
    xml = junit_xml(r, "r.yaml")
    suite = _junit_structure(xml)
    err = [c for c in suite.findall("testcase") if c.find("error") is not None]
    assert len(err) == 1 and err[0].find("error").get("message") == "onnxruntime: bad <graph>"
    path = write_junit(tmp_path / "sub" / "junit.xml", xml)
    assert path.read_text() == xml
    assert not [p for p in path.parent.iterdir() if p.name != "junit.xml"]  # no temp left


def test_junit_xsd_rejects_what_ci_systems_reject():
    """The schema is not a rubber stamp: a case without classname does not validate."""
    xmlschema = pytest.importorskip("xmlschema")
    schema = xmlschema.XMLSchema(str(XSD))
    good = junit_xml(int8_report(), "r.yaml")
    assert schema.is_valid(good)
    assert not schema.is_valid(good.replace('classname="', 'class="', 1))
    assert not schema.is_valid(good.replace('tests="', 'tests="x', 1))


# ---------------------------------------------------------------------------- annotations

RECIPE_TEXT = """\
# demo
version: 1
name: digits
model:
  path: m.keras
stages:
  - quantize: {mode: int8}
targets: [cpu]
budget:
  max_accuracy_drop: 0.01   # one point
  max_size_bytes: 95000
output:
  dir: out
"""


def test_annotations_point_at_the_budget_key_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipes").mkdir()
    recipe = tmp_path / "recipes" / "demo, v2.yaml"  # a comma must be escaped in file=
    recipe.write_text(RECIPE_TEXT)
    r = report(art("cpu/m-int8.tflite", "int8", size=92_000, drop=0.02),
               art("cpu/m-float32.tflite", "float32", size=340_000),
               art("cpu/m-int8.onnx", "int8", fmt="onnx", status="failed-verification",
                   error="SNR 3.1 dB\nbelow 20"),
               violations=["cpu/m-int8.tflite: accuracy drop 2.00 points > max_accuracy_drop 1.00 points",
                           "cpu/m-float32.tflite: size 340000 bytes > max_size_bytes 95000"],
               limits={"max_accuracy_drop": 0.01, "max_size_bytes": 95000})
    lines = github_annotations(r, str(recipe), RECIPE_TEXT)
    errors = [x for x in lines if x.startswith("::error ")]
    warnings = [x for x in lines if x.startswith("::warning ")]
    assert len(errors) == 2 and len(warnings) == 1
    assert errors[0].startswith("::error file=recipes/demo%2C v2.yaml,line=10,"
                                "title=mobilec budget%3A max_accuracy_drop = 0.01::")
    assert "cpu/m-int8.tflite: accuracy drop 2.00 points" in errors[0]
    assert ",line=11," in errors[1] and "max_size_bytes" in errors[1]
    assert ",line=8," in warnings[0]  # the targets: line
    assert "SNR 3.1 dB%0Abelow 20" in warnings[0]  # a newline would end the command
    assert all("\n" not in x for x in lines)


def test_annotations_without_the_key_in_the_recipe_point_at_budget_or_nothing():
    r = report(art("cpu/m.tflite", "int8", ms=3.0),
               violations=["cpu/m.tflite: median latency 3.000 ms > max_latency_ms 1.0"],
               limits={"max_latency_ms": 1.0})
    (line,) = github_annotations(r, "/elsewhere/r.yaml", RECIPE_TEXT)  # set by --set
    assert ",line=9," in line  # the budget: block
    (line,) = github_annotations(r, "r.yaml", "version: 1\nmodel: {path: m.keras}\n")
    assert line.startswith("::error file=r.yaml,title=")


# ---------------------------------------------------------------------------- lockfile

def _inputs(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE_TEXT)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "eval.npz").write_bytes(b"eval-v1")
    (tmp_path / "m.keras").write_bytes(b"model-bytes")
    sm = tmp_path / "saved"
    (sm / "variables").mkdir(parents=True)
    (sm / "saved_model.pb").write_bytes(b"pb")
    (sm / "variables" / "v.index").write_bytes(b"idx")
    return recipe, {"model": tmp_path / "m.keras", "data.eval": tmp_path / "data" / "eval.npz",
                    "model.savedmodel": sm}


def test_lock_records_versions_hashes_seeds_and_host(tmp_path: Path):
    recipe, files = _inputs(tmp_path)
    lock = build_lock(recipe, "ab" * 32, files, {"numpy": 0})
    assert lock["mobilec"] == "0.1.0"
    assert "numpy" in lock["tools"] and "pytest" not in lock["tools"]
    assert lock["inputs"]["data.eval"]["path"] == "data/eval.npz"
    assert len(lock["inputs"]["data.eval"]["sha256"]) == 64
    assert lock["inputs"]["model.savedmodel"]["kind"] == "dir"
    assert lock["seeds"] == {"numpy": 0} and {"platform", "python", "machine"} <= set(lock["host"])
    path = write_lock(tmp_path, lock)
    assert path.name == LOCK_NAME == "mobilec.lock.json"
    assert read_lock(path) == json.loads(json.dumps(lock))
    check_locked(path, build_lock(recipe, "ab" * 32, files, {"numpy": 0}))  # same: no error


def test_locked_run_with_a_changed_data_file_names_it_and_both_hashes(tmp_path: Path):
    recipe, files = _inputs(tmp_path)
    lock = build_lock(recipe, "ab" * 32, files, {"numpy": 0})
    path = write_lock(tmp_path, lock)
    (tmp_path / "data" / "eval.npz").write_bytes(b"eval-v2")
    (tmp_path / "saved" / "variables" / "v.index").write_bytes(b"idx2")
    now = build_lock(recipe, "ab" * 32, files, {"numpy": 1})
    now["tools"]["numpy"] = "0.0.1"
    now["tools"].pop("onnx", None)
    lock_tools = read_lock(path)["tools"]
    with pytest.raises(UnsupportedError) as exc:
        check_locked(path, now)
    err = exc.value
    assert err.exit_code == 2
    old_h, new_h = lock["inputs"]["data.eval"]["sha256"], now["inputs"]["data.eval"]["sha256"]
    assert (f"data file data/eval.npz changed: sha256 {old_h[:12]}… in the lock, "
            f"{new_h[:12]}… now") in err.message
    assert "model file saved changed" in err.message
    assert f"numpy {lock_tools['numpy']} in the lock, 0.0.1 now" in err.message
    assert "seed numpy: 0 in the lock, 1 now" in err.message
    if "onnx" in lock_tools:
        assert f"onnx {lock_tools['onnx']} in the lock, not installed now" in err.message
    assert f"numpy=={lock_tools['numpy']}" in err.hint


def test_locked_refuses_a_missing_or_foreign_lock(tmp_path: Path):
    with pytest.raises(UnsupportedError, match="lock file not found"):
        check_locked(tmp_path / LOCK_NAME, {})
    (tmp_path / "x.json").write_text(json.dumps({"artifacts": []}))
    with pytest.raises(UnsupportedError, match="not a mobilec.lock.json"):
        check_locked(tmp_path / "x.json", {})


def test_recipe_inputs_lists_model_and_data_files(tmp_path: Path):
    from mobilec.recipe.loader import load_recipe

    (tmp_path / "m.keras").write_bytes(b"x")
    (tmp_path / "train.npz").write_bytes(b"t")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"version": 1, "model": {"path": "m.keras"},
                                      "data": {"source": "npz", "train": "train.npz"}}))
    files = recipe_inputs(load_recipe(recipe))
    assert files == {"model": tmp_path / "m.keras", "data.train": tmp_path / "train.npz"}


# ---------------------------------------------------------------------------- terminal tables

def _render(renderable: Any, width: int) -> str:
    from rich.console import Console

    console = Console(width=width, record=True, color_system=None, force_terminal=False,
                      file=open("/dev/null", "w"))  # noqa: SIM115 - closed with the console
    console.print(renderable)
    text = console.export_text()
    console.file.close()
    return text


def _check_table(text: str, width: int, rep: dict[str, Any]) -> None:
    lines = text.splitlines()
    assert all(len(line.rstrip()) <= width for line in lines), text
    header = lines[0]
    assert "…" not in header, header
    for a in rep["artifacts"]:
        for cell in artifact_cells(a)[1:]:
            if NUMBER.search(cell) and cell in text:  # every number shown is shown whole
                assert f"{cell}…" not in text
    for match in re.finditer(r"\S*…\S*", text):  # an ellipsis only ever in a path
        assert not NUMBER.fullmatch(match.group().strip("…")), match.group()


LONG = report(art("android-nnapi/mobilenet_v3_small_imagenet-int8-io.tflite", "int8-io",
                  target="android-nnapi", size=2_654_321, drop=0.0123, snr=31.4),
              art("ios-coreml/mobilenet_v3_small_imagenet-float16.mlpackage", "float16",
                  fmt="coreml", target="ios-coreml", size=5_000_111, acc=None, drop=None, snr=None,
                  ms=None),
              art("cpu/mobilenet_v3_small_imagenet-int8.onnx", "int8", fmt="onnx",
                  status="failed-verification", error="SNR 3.1 dB"))


@pytest.mark.parametrize("width", [80, 100, 160])
def test_artifact_table_fits_and_cuts_nothing(width: int):
    from mobilec.report.terminal import artifact_table

    for rep in (int8_report(), int4_report(), LONG):
        text = _render(artifact_table(rep, width), width)
        _check_table(text, width, rep)
        header = text.splitlines()[0].split()
        if width < 120:
            assert header == ["artifact", "quant", "size", "smaller", "drop", "SNR", "dB", "status"]
        for a in rep["artifacts"]:
            cells = artifact_cells(a)
            for i in ((2, 4, 6, 8, 10) if width < 120 else (2, 4, 6, 7, 8, 10, 11)):
                assert cells[i] in text, (cells[i], text)
            # a status may break after its hyphen ("failed-" / "verification"), never inside
            assert all(part in text for part in cells[12].split("-"))
        # the path is never lost: whole, or folded at its slash
        for a in rep["artifacts"]:
            assert a["path"].split("/")[-1][:10] in text.replace("\n", "")


def test_artifact_table_without_artifacts_renders_its_headers():
    """A stage that failed before convert leaves no artifact: the table still renders (it
    raised TypeError from max() of the widths, turning the run's own error into a crash)."""
    from mobilec.report.terminal import artifact_table

    for width in (80, 160):
        assert "artifact" in _render(artifact_table({"artifacts": []}, width), width)


def test_artifact_table_wide_shows_every_column():
    from mobilec.report.terminal import FULL_HEADERS, artifact_table

    for width in (80, 160):
        text = _render(artifact_table(LONG, width, wide=True), width)
        for h in FULL_HEADERS:
            assert h in text
        for a in LONG["artifacts"]:
            for cell in artifact_cells(a)[1:-1]:
                assert cell in text
            assert all(part in text for part in a["status"].split("-"))
        assert all(len(line.rstrip()) <= width for line in text.splitlines())


@pytest.mark.parametrize("width", [80, 100, 160])
def test_targets_table_fits_and_wraps_constraints_below(width: int):
    from mobilec.policy.targets import describe
    from mobilec.report.terminal import targets_table

    rows = describe()
    text = _render(targets_table(rows, width), width)
    assert "…" not in text
    assert all(len(line.rstrip()) <= width for line in text.splitlines())
    flat = " ".join(text.split())
    for r in rows:
        assert r["target"] in text
        assert " ".join(r["constraints"].split()) in flat  # below the table, whole
    assert text.splitlines()[0].split()[:4] == ["target", "artifacts", "quant", "delegate"]


# ---------------------------------------------------------------------------- real runs

@pytest.fixture(scope="session")
def demo_runs(demo_keras: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The demo model compressed twice for real: int8 (within budget) and int4 with a size
    budget its int4 .tflite (about 48 KB) breaks; the float32 baselines are not budgeted."""
    d = tmp_path_factory.mktemp("ci_runs")
    recipe = write_recipe(d, demo_keras, name="digits", stages=[{"quantize": {"mode": "int8"}}],
                          budget={"max_accuracy_drop": 0.01})
    r8 = compress(recipe, out=d / "int8")
    r4 = compress(recipe, out=d / "int4",
                  overrides=["quantize.mode=int4", "budget.max_size_bytes=40000"])
    return {"recipe": recipe, "int8": r8, "int4": r4, "dir": d}


def _tflite(rep: dict[str, Any], quant: str) -> dict[str, Any]:
    return next(a for a in rep["artifacts"] if a["format"] == "tflite" and a["quantization"] == quant)


@pytest.mark.slow
def test_real_compare_int8_vs_int4(demo_runs: dict[str, Any]):
    d = demo_runs["dir"]
    base, new = load_report(d / "int8"), load_report(d / "int4" / "report.json")
    same = compare(base, load_report(d / "int8"), max_accuracy_loss=0, max_size_increase=0)
    assert same.exit_code == 0 and same.regressions == []
    cmp = compare(base, new, max_accuracy_loss=0, base_label="int8", new_label="int4")
    t8, t4 = _tflite(base, "int8"), _tflite(new, "int4")
    lost = t4["accuracy"] < t8["accuracy"]  # on the demo's 360 eval digits int4 may lose none
    assert (cmp.exit_code == 1) == lost
    assert any("accuracy" in r for r in cmp.regressions) == lost
    pair = next(x for x in cmp.matched if x.name == t4["path"])
    assert pair.quant == "int8→int4"
    assert pair.metrics["size_bytes"].delta == t4["size_bytes"] - t8["size_bytes"] < 0
    for width in (80, 100, 160):
        text = render_text(cmp, width)
        assert all(len(line) <= width for line in text.splitlines()), text
        assert "int8→int4" in text
    assert t4["path"] in render_markdown(cmp)


@pytest.mark.slow
def test_real_junit_and_annotations(demo_runs: dict[str, Any]):
    recipe: Path = demo_runs["recipe"]
    r4 = demo_runs["int4"]
    assert r4["exit_code"] == 1 and r4["budget"]["violations"]
    suite = _junit_structure(junit_xml(r4, str(recipe)))
    failing = [c for c in suite.findall("testcase")
               if c.find("failure") is not None and ".budget." in c.get("classname")]
    assert len(failing) == len(r4["budget"]["violations"])
    ok = _junit_structure(junit_xml(demo_runs["int8"], str(recipe)))
    assert ok.get("failures") == "0" and ok.get("errors") == "0"

    text = recipe.read_text()
    size_line = None  # --set added the key: the annotation points at `budget:`
    budget_line = next(i for i, ln in enumerate(text.splitlines(), 1) if ln.startswith("budget:"))
    lines = github_annotations(r4, str(recipe), text)
    errors = [x for x in lines if x.startswith("::error")]
    assert len(errors) == 1 and "max_size_bytes" in errors[0]
    assert f",line={size_line or budget_line}," in errors[0]
    assert f"file={recipe.name}" in errors[0] or f"file={recipe.as_posix()}" in errors[0]


@pytest.mark.slow
def test_real_tables_at_80_100_160(demo_runs: dict[str, Any]):
    from mobilec.report.terminal import artifact_table

    for rep in (demo_runs["int8"], demo_runs["int4"]):
        for width in (80, 100, 160):
            text = _render(artifact_table(rep, width), width)
            _check_table(text, width, rep)
            assert "…" not in text.splitlines()[0]


# ---------------------------------------------------------------------------- unverified

def _unverified_report() -> dict[str, Any]:
    ml = art("ios-coreml/m-float16.mlpackage", "float16", fmt="coreml", target="ios-coreml",
             acc=None, drop=None, snr=None, ms=None, status="unverified")
    ml["built_from"] = [{"graph": "onnx2tf's TensorFlow graph", "samples": 128,
                         "top1_agreement": 1.0, "snr_db": 131.2, "max_abs_err": 1e-6}]
    return report(art("cpu/m-float32.tflite", "float32", drop=0.0, snr=140.0), ml)


def test_unverified_is_told_apart_from_ok_everywhere(tmp_path: Path):
    """JUnit: a skipped case saying `unverified:` (a failure with --strict), never a pass;
    exit 0 unless strict (3); annotations: a notice; compare: ok -> unverified is a note."""
    from mobilec.batch.report import build_zoo_report
    from mobilec.report.build import exit_code
    from mobilec.report.markdown import render_markdown as report_md
    from mobilec.report.schema import UNVERIFIED_MEANING, Report

    r = _unverified_report()
    assert exit_code(r) == 0 and exit_code(r, strict=True) == 3
    suite = _junit_structure(junit_xml(r, "recipe.yaml"))
    case = next(c for c in suite.findall("testcase") if c.get("name").endswith(".mlpackage"))
    skipped = case.find("skipped")
    assert skipped is not None and skipped.get("message").startswith("unverified: structure")
    assert "onnx2tf's TensorFlow graph: SNR 131.2 dB" in skipped.get("message")
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["unverified_artifacts"] == "ios-coreml/m-float16.mlpackage"
    strict = _junit_structure(junit_xml(r, "recipe.yaml", strict=True))
    case = next(c for c in strict.findall("testcase") if c.get("name").endswith(".mlpackage"))
    assert case.find("failure").get("type") == "unverified"
    notes = github_annotations(r, "recipe.yaml", "targets: [ios-coreml]\n")
    assert any(n.startswith("::notice ") and "unverified" in n for n in notes)
    assert not any(n.startswith(("::warning", "::error")) for n in notes)
    base = copy.deepcopy(r)
    base["artifacts"][1]["status"] = "ok"
    cmp = compare(base, r)
    assert cmp.exit_code == 0 and any("ok in base, unverified in new" in n for n in cmp.notes)
    back = compare(r, report(r["artifacts"][0], {**r["artifacts"][1], "status": "failed",
                                                   "error": "onnx2tf's graph differs"}))
    assert back.exit_code == 1 and "unverified in the base run, failed now" in back.regressions[0]
    md = report_md({**r, "host": {"platform": "Linux"}})
    assert "| unverified |" in md and UNVERIFIED_MEANING in md
    zoo = build_zoo_report([{"name": "m", "status": "ok", "report": r}], zoo="z.yaml",
                           out_dir=tmp_path, executor="local", workers=1, wall_s=1.0)
    assert zoo["totals"]["artifacts_ok"] == 1 and zoo["totals"]["artifacts_unverified"] == 1
    schema = json.dumps(Report.model_json_schema())
    assert '"unverified"' in schema and "built_from" in schema
