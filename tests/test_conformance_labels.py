"""The conformance corpus' eval labels (issue 24, Measures): made on the class output, 10 %
moved off the model's own decision; CONFORMANCE.md counts the multi-output entries whose
accuracy mobilec read from that output, and --resume reruns an entry whose labels changed.
Pure numpy: no model is built here (the corpus builders call the same function)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest


def _outputs(n: int = 200) -> tuple[list[np.ndarray], list[str]]:
    rng = np.random.default_rng(1)
    return ([rng.normal(size=(n, 4)), rng.normal(size=(n, 1)), rng.normal(size=(n, 3))],
            ["boxes", "age", "classes"])


def test_labels_are_the_class_outputs_decisions_with_a_tenth_moved() -> None:
    from conformance_archs import LABEL_NOISE, class_labels

    outs, names = _outputs()
    y, about = class_labels(outs, names, pick=2)
    own = outs[2].argmax(1)
    assert y.dtype == np.int64 and y.min() >= 0 and y.max() < 3
    assert np.mean(y != own) == pytest.approx(LABEL_NOISE, abs=0.005)  # exactly 20 of 200
    assert about["index"] == 2 and about["output"] == "classes" and about["classes"] == 3
    assert about["accuracy"] == pytest.approx(0.9, abs=0.005)
    assert [o["shape"] for o in about["outputs"]] == [[None, 4], [None, 1], [None, 3]]
    # on any other output the labels score far below (what CONFORMANCE.md tells apart)
    assert np.mean(outs[0].argmax(1) == y) < 0.5
    # no output of class-score shape: no labels; several and no pick: the builder must say
    assert class_labels([np.zeros((5, 1)), np.zeros((5, 8, 3))], ["a", "b"]) is None
    with pytest.raises(ValueError, match="label_output"):
        class_labels(outs, names)


FACE = [{"name": n, "shape": [None, w]} for n, w in (("boxes", 4), ("age", 1), ("classes", 3))]
DETECTOR = [{"name": "boxes", "shape": [None, 64, 4]}, {"name": "scores", "shape": [None, 64, 3]}]


def _cell(source: str, chosen: int | None, source_acc: float | None,
          labels: dict[str, Any] | None, outputs: list[dict[str, Any]] = FACE) -> dict[str, Any]:
    from conformance import cell

    choice = None if chosen is None else {"name": outputs[chosen]["name"], "index": chosen,
                                          "chosen_by": "source-accuracy", "reason": "r"}
    return cell({"model": "face", "source": source, "labels": labels}, "tflite", "int8", "ok",
                accuracy=source_acc, model={"accuracy": source_acc, "label_output": choice,
                                            "outputs": outputs})


def test_conformance_counts_entries_read_from_the_class_output() -> None:
    from conformance_report import label_count, markdown, multi_output_entries, totals

    labels = {"output": "classes", "index": 2, "classes": 3, "noise": 0.1, "accuracy": 0.9,
              "outputs": []}
    cells = [_cell("keras", 2, 0.9, labels),  # right output
             _cell("onnx", 0, 0.31, labels),  # another output: the accuracy gives it away
             _cell("h5", None, None, None),  # a class output but no labels (an old corpus)
             _cell("export", None, None, None, DETECTOR)]  # no class-score output: n/a
    records = {r["source"]: r for r in multi_output_entries(cells)}
    assert records["keras"]["on_class"] is True and records["onnx"]["on_class"] is False
    assert records["h5"]["on_class"] is False and records["export"]["on_class"] is None
    assert label_count(cells) == {"multi_output": 4, "with_class_output": 3,
                                  "read_from_class_output": 1}
    meta = {"mobilec_version": "x", "date": "d", "host": "h", "models": 1, "entries": 4,
            "seconds": 60.0, "totals": totals(cells)}
    text = markdown(cells, meta, [("tflite", "int8")])
    assert "read from the class output: **1/3**" in text and "**NOT the class output**" in text
    assert "- tflite: 4 ok, 0 unverified, 0 degraded" in text


def test_resume_reruns_an_entry_whose_labels_changed(tmp_path: Path) -> None:
    from conformance import reusable

    result = tmp_path / "int8.result.json"
    assert not reusable(result, {})
    result.write_text(json.dumps({"run": "int8"}))  # made before the corpus had labels
    assert reusable(result, {"labels": None})  # no class output: nothing changed
    assert not reusable(result, {"labels": {"index": 0, "accuracy": 0.9}})
    result.write_text(json.dumps({"run": "int8", "labels": {"index": 0, "accuracy": 0.9}}))
    assert reusable(result, {"labels": {"index": 0, "accuracy": 0.9}})


def test_conformance_counts_entries_whose_aimodels_are_verified() -> None:
    """Issue 26's bar per entry: both .aimodel float cells verified; .pt2 entries apart."""
    from conformance_report import coreai_share

    def cell(model: str, source: str, q: str, status: str, top1: float | None) -> dict[str, Any]:
        return {"model": model, "source": source, "format": "coreai", "quantization": q,
                "status": status, "top1_agreement": top1, "snr_db": 60.0}

    cells = [cell("a", "pt2", "float32", "ok", 1.0), cell("a", "pt2", "float16", "ok", 1.0),
             cell("b", "pt2", "float32", "ok", 1.0),
             cell("b", "pt2", "float16", "failed-verification", 0.5),
             cell("c", "keras", "float32", "ok", 0.995), cell("c", "keras", "float16", "ok", 0.99),
             cell("d", "onnx", "float32", "failed", None)]
    share = coreai_share(cells)
    assert share is not None
    assert (share["torch_verified"], share["torch_entries"]) == (1, 2)
    assert (share["verified"], share["entries"], share["verified_pct"]) == (2, 4, 50.0)
    assert share["not_verified"] == ["b/pt2", "d/onnx"]
    assert coreai_share([]) is None
