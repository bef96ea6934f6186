"""Ctrl-C and `kill` during each stage of a real `mobilec compress` subprocess: exit 130/143,
no partial artifact, no temp file (in the output dir or the system temp dir), no report."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import signal_at_stage, write_recipe

from mobilec.errors import EXIT_SIGINT, EXIT_SIGTERM
from mobilec.util.fs import TMP_PREFIX

pytestmark = pytest.mark.slow

# Seconds to wait after a stage's "started" line, so the signal lands inside the stage's work
# (load: TensorFlow's import and the model load; convert: the TFLite converter and tf2onnx;
# evaluate: LiteRT/onnxruntime over the eval set), not on its first line.
STAGES = {"load": 1.5, "convert": 0.4, "evaluate": 0.3}


@pytest.fixture(scope="module")
def long_eval_recipe(demo_keras: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model with 29k eval samples, so evaluate lasts seconds, not milliseconds."""
    from mobilec.sources.data import digits_split

    d = tmp_path_factory.mktemp("interrupt")
    _, ev = digits_split()
    np.savez(d / "eval.npz", x=np.tile(ev.x, (80, 1, 1, 1)), y=np.tile(ev.y, 80))
    return write_recipe(d, demo_keras, name="sig", stages=[{"quantize": {"mode": "int8"}}],
                        data={"source": "npz", "eval": str(d / "eval.npz"),
                              "eval_samples": 1_000_000, "calibration_samples": 100})


def _run_until(recipe: Path, out: Path, tmpdir: Path, stage: str, delay: float, sig: int
               ) -> tuple[int, str, float]:
    """compress, and `sig` `delay` s after '[mobilec] <stage>: started'."""
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONUNBUFFERED": "1"}
    return signal_at_stage(["compress", str(recipe), "--out", str(out)], stage, delay, sig,
                           env=env)


def _assert_no_partial_files(out: Path, tmpdir: Path) -> None:
    leftovers = [p for p in out.rglob("*") if p.name.startswith(TMP_PREFIX)] if out.exists() else []
    assert not leftovers, f"temp files left in the output dir: {leftovers}"
    # onnxruntime writes $TMPDIR/.ses (a session id it keeps across runs) when imported.
    in_tmp = sorted(p.name for p in tmpdir.iterdir() if p.name != ".ses")
    assert not in_tmp, f"files left in the system temp dir: {in_tmp}"
    assert not (out / "report.json").exists(), "an interrupted run must not write a report"
    # Artifacts placed before the signal are complete files (each went in with one rename).
    for art in out.rglob("*.tflite"):
        from ai_edge_litert.interpreter import Interpreter

        Interpreter(model_path=str(art)).allocate_tensors()
    for art in out.rglob("*.onnx"):
        import onnx

        onnx.checker.check_model(onnx.load(str(art)))


@pytest.mark.parametrize("stage", list(STAGES))
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_stage_leaves_nothing_partial(long_eval_recipe: Path, tmp_path: Path,
                                                    stage: str, sig: int) -> None:
    out, tmpdir = tmp_path / "out", tmp_path / "tmp"
    tmpdir.mkdir()
    code, stderr, took = _run_until(long_eval_recipe, out, tmpdir, stage, STAGES[stage], sig)
    expected = EXIT_SIGINT if sig == signal.SIGINT else EXIT_SIGTERM
    assert code == expected, f"exit {code}, expected {expected}:\n{stderr[-3000:]}"
    assert "Traceback" not in stderr, stderr[-3000:]
    assert "interrupted by" in stderr, stderr[-3000:]
    assert f"[mobilec] {stage}: ok" not in stderr, \
        f"the signal arrived after {stage} finished; raise its workload:\n{stderr[-2000:]}"
    assert took < 30, f"took {took:.1f}s to stop after the signal"
    _assert_no_partial_files(out, tmpdir)


def test_ctrl_c_during_quantization_aware_training(demo_keras: Path, tmp_path: Path) -> None:
    """quantize is a plan for PTQ modes (instant); with qat it fine-tunes for seconds."""
    recipe = write_recipe(tmp_path, demo_keras, name="qat",
                          stages=[{"quantize": {"mode": "qat", "epochs": 30}}])
    out, tmpdir = tmp_path / "out", tmp_path / "tmp"
    tmpdir.mkdir()
    code, stderr, took = _run_until(recipe, out, tmpdir, "quantize", 1.0, signal.SIGINT)
    assert code == EXIT_SIGINT, f"exit {code}:\n{stderr[-3000:]}"
    assert "Traceback" not in stderr and "[mobilec] quantize: ok" not in stderr, stderr[-3000:]
    assert took < 30, f"took {took:.1f}s to stop after the signal"
    _assert_no_partial_files(out, tmpdir)


def test_signal_inside_an_import_lands_after_it(tmp_path: Path) -> None:
    """A native extension's init crashes if the handler raises inside it (jaxlib's, under
    TensorFlow's import: SIGSEGV/SIGABRT, measured), so a signal that arrives inside an import
    is delivered again once the import is done; the module imports whole."""
    (tmp_path / "slowmod.py").write_text(
        "import os, signal, time\nos.kill(os.getpid(), signal.SIGTERM)\ntime.sleep(0.5)\nDONE = True\n")
    script = (
        "import sys, time\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        "from mobilec.util import signals\n"
        "from mobilec.errors import Interrupted\n"
        "signals.install()\n"
        "try:\n"
        "    import slowmod\n"
        "    time.sleep(5)\n"
        "except Interrupted as exc:\n"
        "    print('imported' if getattr(sys.modules.get('slowmod'), 'DONE', False) else 'cut',\n"
        "          exc.exit_code)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.split() == ["imported", str(EXIT_SIGTERM)], done.stdout + done.stderr
