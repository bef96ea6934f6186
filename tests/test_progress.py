"""The one progress API (mobilec.util.progress): stage lines, and steps from inside a stage."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from conftest import run_cli, write_recipe

from mobilec.util import progress
from mobilec.util.progress import Progress


def test_steps_go_to_the_active_display_and_nowhere_without_one() -> None:
    stream = io.StringIO()
    shown = Progress(stream=stream)
    progress.step("before any display")  # no display: a no-op, not an error
    with progress.active(shown):
        shown.stage_start("convert")
        progress.step("tflite int8 via keras: building")
        with progress.task("onnx float32"):
            pass
        with pytest.raises(ValueError), progress.task("coreml"):
            raise ValueError("converter crashed")
        progress.epoch("training", 2, 5, loss=0.123456, accuracy=0.98)
        shown.stage_end("convert", 1.0, "ok")
    progress.step("after the run")
    text = stream.getvalue()
    assert "before any display" not in text and "after the run" not in text
    assert "convert: tflite int8 via keras: building" in text
    assert "onnx float32: done in" in text and "coreml: failed in" in text
    assert "convert: training: epoch 2/5 loss 0.1235 accuracy 0.98" in text


def test_a_quiet_display_prints_nothing() -> None:
    stream = io.StringIO()
    with progress.active(Progress(quiet=True, stream=stream)):
        progress.step("x")
        progress.epoch("training", 1, 1, loss=1.0)
    assert stream.getvalue() == ""


@pytest.mark.slow
def test_convert_shows_each_route_and_training_each_epoch(demo_keras: Path, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, demo_keras, name="p",
                          stages=[{"prune": {"sparsity": 0.5, "epochs": 2}},
                                  {"convert": {"formats": ["tflite"]}}])
    res = run_cli("compress", str(recipe), "--no-eval")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "prune: training: epoch 1/2 loss" in res.stderr
    assert "prune: training: epoch 2/2 loss" in res.stderr
    assert "convert: tflite float32 via" in res.stderr and "verified" in res.stderr
