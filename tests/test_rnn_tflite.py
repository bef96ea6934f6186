"""Recurrent Keras models reach TFLite with builtin ops only (tflite_rnn).

The standard routes fail on LSTM/GRU ("'tf.TensorListReserve' op requires element_shape
to be static"); the keras-unrolled route (no loop at all, so int8 calibrates) and the fixed-batch route
(batch 1: static list shapes) convert them. Real models,
real conversions, nothing mocked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import artifact, write_recipe

from mobilec.api import compress
from mobilec.formats.tflite import list_ops

pytestmark = pytest.mark.slow
RNG = np.random.default_rng(0)
STEPS, FEATURES, CLASSES = 10, 4, 3


def tf_keras() -> Any:
    from mobilec.util.tfenv import import_tf_keras

    return import_tf_keras()


def compress_tflite(tmp_path: Path, model: Path, data: dict[str, np.ndarray]) -> dict[str, Any]:
    np.savez(tmp_path / "d.npz", y=RNG.integers(0, CLASSES, 64), **data)
    stages = [{"quantize": {"mode": "int8"}}, {"convert": {"formats": ["tflite"]}}]
    return compress(write_recipe(tmp_path, model, stages=stages,
                                 data={"source": "npz", "train": "d.npz", "eval": "d.npz"}))


def verified(report: dict[str, Any], mode: str, route: str) -> dict[str, Any]:
    a = artifact(report, "tflite", mode)
    assert a["status"] == "ok", (a["error"], a["routes_failed"])
    assert a["verification"]["samples"] > 0, a["verification"]
    assert a["route"] == route, (a["route"], a["routes_failed"])
    return a


def series(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """An LSTM feeding a GRU: both recurrent kinds in one model, one compress."""
    k = tf_keras()
    x = k.Input((STEPS, FEATURES), name="series")
    h = k.layers.LSTM(8, return_sequences=True)(x)
    h = k.layers.GRU(6)(h)
    path = tmp_path / "rnn.h5"
    k.Model(x, k.layers.Dense(CLASSES, name="logits")(h)).save(path)
    return path, {"series": RNG.normal(size=(64, STEPS, FEATURES)).astype("float32")}


def test_lstm_and_gru_ship_float32_and_int8_unrolled(tmp_path: Path) -> None:
    """Unrolled, not the fused UNIDIRECTIONAL_SEQUENCE_LSTM of a batch-1 trace (that op keeps
    its state in variable tensors, carried from one invocation into the next), and not a GRU's
    WHILE loop (the int8 calibrator crashes on WHILE loops)."""
    model, data = series(tmp_path)
    report = compress_tflite(tmp_path, model, data)
    for mode in ("float32", "int8"):
        ops = list_ops(tmp_path / "out" / verified(report, mode, "keras-unrolled")["path"])
        assert "WHILE" not in ops and "UNIDIRECTIONAL_SEQUENCE_LSTM" not in ops, ops
    assert artifact(report, "tflite", "float32")["fidelity"]["top1_agreement"] == 1.0


def test_a_savedmodel_gru_converts_at_batch_1_and_int8_is_refused_not_a_crash(
        tmp_path: Path) -> None:
    """No Keras model to unroll: fixed-batch keeps the WHILE loop; float32 ships, int8 is
    refused with a reason instead of a SIGSEGV in the calibrator."""
    import tensorflow as tf

    k = tf_keras()
    x = k.Input((STEPS, FEATURES), name="series")
    m = k.Model(x, k.layers.Dense(CLASSES)(k.layers.GRU(6)(x)))
    tf.saved_model.save(m, str(tmp_path / "sm"))
    data = {"series": RNG.normal(size=(64, STEPS, FEATURES)).astype("float32")}
    report = compress_tflite(tmp_path, tmp_path / "sm", data)
    verified(report, "float32", "fixed-batch")
    a = artifact(report, "tflite", "int8")
    assert a["status"] == "failed"
    assert any(f["route"] == "fixed-batch" and "WHILE" in f["reason"]
               for f in a["routes_failed"]), a["routes_failed"]


def test_an_lstm_of_any_length_is_refused_rather_than_shipped_stateful(
        tmp_path: Path) -> None:
    """A sequence length of None cannot unroll; at batch 1 the converter fuses the LSTM into
    UNIDIRECTIONAL_SEQUENCE_LSTM, whose state carries from one invocation into the next (a
    drift small enough to pass verification on random weights): refused with a reason."""
    k = tf_keras()
    x = k.Input((None, FEATURES), name="series")
    k.Model(x, k.layers.Dense(CLASSES)(k.layers.LSTM(6)(x))).save(tmp_path / "any.h5")
    data = {"series": RNG.normal(size=(64, STEPS, FEATURES)).astype("float32")}
    report = compress_tflite(tmp_path, tmp_path / "any.h5", data)
    a = artifact(report, "tflite", "float32")
    assert a["status"] == "failed"
    reasons = {f["route"]: f["reason"] for f in a["routes_failed"]}
    assert "unroll" in reasons["keras-unrolled"], reasons
    assert "state carries over" in reasons["fixed-batch"], reasons
