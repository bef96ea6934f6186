"""report.html: self-contained, a table plus a size-vs-accuracy chart, open to new sections."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from conftest import compress, write_recipe

from mobilec.report import html as report_html
from mobilec.report.html import bar_chart_svg, lazy_section, register_section, render_html

EXTERNAL = re.compile(r"(src|href)\s*=|<link|<script|@import|url\(|https?://", re.I)


def _artifact(path: str, fmt: str, quant: str, size: int, acc: float | None, **kw: Any
              ) -> dict[str, Any]:
    row = {"path": path, "format": fmt, "target": "cpu", "role": "artifact", "quantization": quant,
           "delegate": "xnnpack", "size_bytes": size, "gzip_bytes": size and size // 2, "size_ratio": None,
           "accuracy": acc, "accuracy_drop": None if acc is None else round(0.99 - acc, 6),
           "fidelity": None, "latency_ms": {"median": 0.02}, "status": "ok", "error": None,
           "note": None}
    row.update(kw)
    return row


def synthetic_report() -> dict[str, Any]:
    return {
        "name": "digits<b>", "recipe": "r.yaml", "mobilec_version": "0", "exit_code": 1,
        "host": {"platform": "linux"},
        "model": {"path": "m.keras", "format": "keras", "params": 85066, "size_bytes": 1_000_000,
                  "accuracy": 0.99},
        "stages": [{"name": "quantize", "seconds": 1.0, "status": "ok",
                    "metrics": {"mode": "auto", "chosen": "int8", "max_accuracy_drop": 0.0,
                                "candidates": [
                                    {"mode": "int4", "format": "tflite", "size_bytes": 48_000,
                                     "accuracy": 0.985, "accuracy_drop": 0.005, "chosen": False},
                                    {"mode": "int8", "format": "tflite", "size_bytes": 93_000,
                                     "accuracy": 0.99, "accuracy_drop": 0.0, "chosen": True}]}}],
        "artifacts": [
            _artifact("cpu/d-float32.tflite", "tflite", "float32", 340_000, 0.99),
            _artifact("cpu/d-int8.tflite", "tflite", "int8", 93_000, 0.99,
                      note="slower than float32 on this host: 2.0x"),
            _artifact("android-nnapi/d-int8.tflite", "tflite", "int8", 93_000, 0.99),
            _artifact("cpu/d-int8.onnx", "onnx", "int8", 99_000, 0.98),
            _artifact("ios/d.mlpackage", "coreml", "float16", 170_000, None,
                      note="Core ML runs only on macOS"),
            _artifact("cpu/d-int4.onnx", "onnx", "int4", None, None, status="skipped",
                      error="quantization 'int4' cannot be applied to onnx"),
        ],
        "budget": {"passed": False, "violations": ["cpu/d-int8.onnx: accuracy drop 1.00 points > "
                                                   "max_accuracy_drop 0.00 points"],
                   "limits": {"max_accuracy_drop": 0.0}},
        "notes": ["no train data: calibration uses eval samples"],
    }


def test_page_is_self_contained_and_complete() -> None:
    page = render_html(synthetic_report())
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert not EXTERNAL.search(page), EXTERNAL.search(page)
    assert "digits&lt;b&gt;" in page and "digits<b>" not in page  # escaped
    for path in ("cpu/d-float32.tflite", "android-nnapi/d-int8.tflite", "ios/d.mlpackage"):
        assert path in page
    assert "budget violated" in page and "max_accuracy_drop 0.00 points" in page
    assert "slower than float32 on this host" in page
    assert "cannot be applied to onnx" in page
    assert "quantize auto: candidates" in page and "over budget" in page


def test_chart_plots_each_distinct_artifact_the_original_and_auto_candidates() -> None:
    svg, unplotted = report_html.size_accuracy_svg(synthetic_report())
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    # the int8 .tflite shared by two targets is one point; Core ML has no accuracy here
    titles = re.findall(r"<circle [^>]*><title>([^<]*)</title>", svg)
    assert len(titles) == 4
    assert any("cpu/d-int8.tflite, android-nnapi/d-int8.tflite" in t for t in titles)
    assert any("auto candidate int4" in t for t in titles)  # tried, not kept: hollow
    assert "int4 (auto, not kept)" in svg
    assert "original model: 976.6 KB, 99.00%" in svg
    assert "budget floor" in svg and "original accuracy" in svg
    assert unplotted == ["ios/d.mlpackage"]
    # x is log(size): the 93 KB point lies left of the 340 KB one, the same accuracy higher up
    xy = {t.split(":")[0]: c for t, c in zip(
        titles, re.findall(r'<circle cx="([\d.]+)" cy="([\d.]+)"[^>]*><title>', svg), strict=True)}
    f32 = xy["cpu/d-float32.tflite"]
    i8 = xy["cpu/d-int8.tflite, android-nnapi/d-int8.tflite"]
    onnx = xy["cpu/d-int8.onnx"]
    assert float(i8[0]) < float(onnx[0]) < float(f32[0])
    assert float(onnx[1]) > float(i8[1])  # lower accuracy is lower on the page


def test_sections_can_be_added_and_absent_ones_are_left_out(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    monkeypatch.setattr(report_html, "SECTIONS", list(report_html.SECTIONS))

    def layer_errors(report: dict[str, Any]) -> str | None:
        rows = report.get("layer_errors")
        if not rows:
            return None
        return "<h2>Layer errors</h2>" + bar_chart_svg([(r["name"], r["err"]) for r in rows],
                                                       unit=" dB")

    register_section(layer_errors)
    register_section(layer_errors)  # once only
    assert report_html.SECTIONS.count(layer_errors) == 1
    report = synthetic_report()
    assert "<h2>Layer errors</h2>" not in render_html(report)
    report["layer_errors"] = [{"name": "conv<1>", "err": 12.5}, {"name": "dense", "err": 3.0}]
    page = render_html(report)
    assert page.index("<h2>Layer errors</h2>") > page.index("<h2>Budget</h2>")
    assert page.count("<rect") >= 2 and "conv&lt;1&gt;" in page and "12.5 dB" in page
    lazy = lazy_section("mobilec.report.html", "budget_section")
    register_section(lazy, before=report_html.summary_section)
    register_section(lazy_section("mobilec.report.html", "budget_section"))
    assert sum(getattr(s, "lazy_key", None) is not None for s in report_html.SECTIONS) == 1
    assert render_html(report).index("<h2>Budget</h2>") < render_html(report).index("Size vs")


@pytest.mark.slow
def test_real_report_html(tmp_path: Path, demo_keras: Path) -> None:
    recipe = write_recipe(tmp_path, demo_keras, stages=[{"quantize": {"mode": "float16"}}],
                          output={"dir": str(tmp_path / "out"), "report": ["json", "md", "html"]})
    report = compress(recipe)
    page = (tmp_path / "out" / "report.html").read_text()
    assert not EXTERNAL.search(page)
    for a in report["artifacts"]:
        assert a["path"] in page
    svg, _ = report_html.size_accuracy_svg(report)
    # float32 and float16 for .tflite and .onnx: four points, all at the original's accuracy
    assert len(re.findall(r"<circle [^>]*><title>", svg)) == 4
    assert svg in page
