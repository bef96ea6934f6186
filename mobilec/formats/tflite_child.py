"""The TFLite converter's settings for each quantization mode, and one conversion of a
SavedModel run in a child process.

Why a child: the converter is native code, and on a third-party graph (onnx2tf's
SavedModel of a 2-layer GRU) its int8 calibrator died with SIGSEGV, taking mobilec and every
other artifact of the run with it. In a child the crash fails one route. The price is a
TensorFlow import (~5 s) per conversion, so only graphs mobilec did not write go there.

The settings live here, once, for both the in-process converter and the child.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from mobilec.errors import ConversionError, ConverterCrash, UnsupportedError
from mobilec.sources.batch import match_names
from mobilec.util.child import last_error_line, run_child, signal_name
from mobilec.util.tfenv import import_tf

#: Modes whose converter needs a representative dataset, and every mode `configure` knows.
CALIBRATED_MODES = ("int8", "int8-io", "int16x8")
MODES = ("float32", "float16", "dynamic", "qat", *CALIBRATED_MODES)
CONVERT_TIMEOUT_S = 3600
#: Test-only: a signal name (e.g. "SIGSEGV") the child sends itself just before it
#: converts, to prove a crashing converter becomes a ConversionError
#: (tests/test_tflite_child.py). Never set in normal runs.
CRASH_ENV = "MOBILEC_TEST_TFLITE_CHILD_SIGNAL"

Dataset = Callable[[], Iterator[Any]]


def configure(conv: Any, mode: str, dataset: Callable[[], Dataset]) -> None:
    """Set `conv` up for `mode`; `dataset()` gives the representative dataset (asked only
    by the modes that calibrate, so a float build needs no data)."""
    check_mode(mode)
    tf = import_tf()
    if mode == "float16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif mode in ("dynamic", "qat"):
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    elif mode in ("int8", "int8-io"):
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = dataset()
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if mode == "int8-io":
            conv.inference_input_type = tf.int8
            conv.inference_output_type = tf.int8
    elif mode == "int16x8":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = dataset()
        conv.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise UnsupportedError(f"quantization '{mode}' is not available for .tflite")


def run_converter(conv: Any, mode: str) -> bytes:
    """conv.convert(), its many exception types turned into one ConversionError."""
    try:
        return conv.convert()
    except Exception as exc:  # noqa: BLE001 - converter errors are many types
        text = str(exc).strip().splitlines()
        msg = next((ln for ln in text if "error" in ln.lower()), text[0] if text else repr(exc))
        raise ConversionError(f"TFLite converter failed ({mode}): {msg[:400]}") from exc


def calibration_gen(names: list[str], parts: list[np.ndarray]) -> Dataset:
    """A representative dataset: one sample at a time, each input in the converter's layout."""

    def gen() -> Iterator[Any]:
        for i in range(len(parts[0])):
            if len(parts) == 1:
                yield [parts[0][i:i + 1]]
            else:  # by name: the converter orders a signature's inputs its own way
                yield _ByName({n: a[i:i + 1] for n, a in zip(names, parts, strict=True)})

    return gen


class _ByName(dict):
    """Calibration inputs keyed by the model's input names, found also under the names the
    converter's signature gives them (`serving_default_tokens:0` for `tokens`)."""

    def __missing__(self, key: str) -> Any:
        hit = match_names([key], list(self))[0]
        if hit is None:
            raise KeyError(key)
        return dict.__getitem__(self, hit)


# ------------------------------------------------------------------------ the child route


def convert_isolated(saved_model: Path, mode: str, work_dir: Path, *, graph: str,
                     calibration: Callable[[], tuple[list[str], list[np.ndarray]]]) -> bytes:
    """from_saved_model(saved_model) converted in `mode` in a child process. `graph` names
    the SavedModel's maker in messages; `calibration()` gives (input names, arrays), asked
    only by the modes that calibrate. A crash becomes a ConversionError naming the signal."""
    check_mode(mode)  # before a child is started for nothing
    work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tflite-child-", dir=work_dir) as tmp:
        job = {"saved_model": str(saved_model), "mode": mode, "names": [],
               "calibration": None, "out": str(Path(tmp) / "model.tflite"),
               "error": str(Path(tmp) / "error.json")}
        if mode in CALIBRATED_MODES:
            names, parts = calibration()
            job["names"], job["calibration"] = names, str(Path(tmp) / "calibration.npz")
            np.savez(job["calibration"], *[np.ascontiguousarray(a) for a in parts])
        job_path = Path(tmp) / "job.json"
        job_path.write_text(json.dumps(job))
        proc = run_child("mobilec.formats.tflite_child:child_main", [str(job_path)],
                         timeout_s=CONVERT_TIMEOUT_S,
                         what=f"the TFLite converter ({mode}) on {graph}")
        crash = signal_name(proc.returncode)
        if crash is not None:
            raise ConverterCrash(
                f"TFLite converter crashed ({crash}) on {graph} ({mode})",
                hint="TFLite's calibrator is known to crash on recurrent (WHILE-loop) graphs "
                     "(tensorflow#75140): ship the float16 or dynamic .tflite, or the int8 "
                     ".onnx/.pte" if mode in CALIBRATED_MODES else
                     "a crash inside TensorFlow's converter; rerun with -v for its log")
        error = Path(job["error"])
        if error.exists():
            raised = json.loads(error.read_text())
            kind = UnsupportedError if raised["kind"] == "UnsupportedError" else ConversionError
            raise kind(raised["message"])
        if proc.returncode != 0 or not Path(job["out"]).exists():
            raise ConversionError(f"TFLite converter failed ({mode}) on {graph}: "
                                  f"{last_error_line(proc.stderr)}")
        return Path(job["out"]).read_bytes()


def child_main(argv: list[str]) -> None:
    """Child process entry: one conversion as job.json describes it; the .tflite (or the
    error, as {kind, message}) is written where the job says."""
    job = json.loads(Path(argv[0]).read_text())
    try:
        tf = import_tf()
        conv = tf.lite.TFLiteConverter.from_saved_model(job["saved_model"])
        configure(conv, job["mode"], lambda: calibration_gen(job["names"], _arrays(job)))
        crash = os.environ.get(CRASH_ENV)
        if crash:
            os.kill(os.getpid(), signal.Signals[crash])
        Path(job["out"]).write_bytes(run_converter(conv, job["mode"]))
    except (ConversionError, UnsupportedError) as exc:
        _write_error(job, type(exc).__name__, exc.message)
    except Exception as exc:  # noqa: BLE001 - e.g. a SavedModel the converter cannot load
        _write_error(job, "ConversionError", f"TFLite converter failed ({job['mode']}): "
                                             f"{str(exc).strip()[:400] or repr(exc)}")


def _arrays(job: dict[str, Any]) -> list[np.ndarray]:
    with np.load(job["calibration"]) as z:
        return [z[f"arr_{i}"] for i in range(len(z.files))]


def _write_error(job: dict[str, Any], kind: str, message: str) -> None:
    Path(job["error"]).write_text(json.dumps({"kind": kind, "message": message}))
    raise SystemExit(2)

