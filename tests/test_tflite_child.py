"""The TFLite converter run in a child process (mobilec.formats.tflite_child): a real
conversion comes back as a .tflite that matches its SavedModel, and a converter that
crashes (here: a child that sends itself SIGSEGV) becomes a ConversionError naming the
signal instead of taking the test process down."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mobilec.errors import ConversionError, UnsupportedError
from mobilec.formats.tflite_child import CRASH_ENV, convert_isolated
from mobilec.util.tfenv import import_tf

RNG = np.random.default_rng(0)
X = RNG.normal(size=(16, 6)).astype(np.float32)


@pytest.fixture(scope="module")
def small_savedmodel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A two-layer MLP as a plain SavedModel, and its outputs on X."""
    tf = import_tf()

    class MLP(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w1 = tf.Variable(RNG.normal(size=(6, 8)).astype(np.float32))
            self.w2 = tf.Variable(RNG.normal(size=(8, 3)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec([1, 6], tf.float32, name="x")])
        def serve(self, x: object) -> dict[str, object]:
            return {"y": tf.matmul(tf.nn.relu(tf.matmul(x, self.w1)), self.w2)}

    model = MLP()
    path = tmp_path_factory.mktemp("tflite_child") / "mlp"
    tf.saved_model.save(model, str(path), signatures={"serving_default": model.serve})
    expected = np.concatenate([model.serve(X[i:i + 1])["y"].numpy() for i in range(len(X))])
    return path, expected


def _run(model: bytes) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model, num_threads=1)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    rows = []
    for i in range(len(X)):
        it.set_tensor(inp["index"], X[i:i + 1])
        it.invoke()
        rows.append(it.get_tensor(out["index"]).copy())
    return np.concatenate(rows)


@pytest.mark.parametrize("mode", ["float32", "int8"])
def test_child_conversion_verifies(small_savedmodel: tuple[Path, np.ndarray], mode: str,
                                   tmp_path: Path) -> None:
    path, expected = small_savedmodel
    model = convert_isolated(path, mode, tmp_path, graph="a test SavedModel",
                             calibration=lambda: (["x"], [X]))
    got = _run(model)
    if mode == "float32":
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    else:  # int8 weights and activations: close, and the same argmax almost everywhere
        scale = np.abs(expected).max()
        assert np.abs(got - expected).max() < 0.1 * scale
        assert (got.argmax(1) == expected.argmax(1)).mean() >= 0.8
    assert not list(tmp_path.glob("tflite-child-*")), "the child's scratch folder is removed"


def test_crashing_converter_becomes_a_conversion_error(
        small_savedmodel: tuple[Path, np.ndarray], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CRASH_ENV, "SIGSEGV")
    with pytest.raises(ConversionError, match=r"crashed \(SIGSEGV\) on a test SavedModel"):
        convert_isolated(small_savedmodel[0], "float32", tmp_path, graph="a test SavedModel",
                         calibration=lambda: (["x"], [X]))
    # int8: the crash users meet (a recurrent loop under the calibrator) says what to ship
    with pytest.raises(ConversionError) as raised:
        convert_isolated(small_savedmodel[0], "int8", tmp_path, graph="a test SavedModel",
                         calibration=lambda: (["x"], [X]))
    assert "float16 or dynamic .tflite" in (raised.value.hint or "")


def test_converter_error_in_the_child_comes_back_as_its_message(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match=r"TFLite converter failed \(float32\)"):
        convert_isolated(tmp_path / "no-such-savedmodel", "float32", tmp_path,
                         graph="a missing SavedModel", calibration=lambda: ([], []))


def test_unknown_mode_is_refused_before_a_child_starts(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedError, match="not available for .tflite"):
        convert_isolated(tmp_path, "int3", tmp_path, graph="g", calibration=lambda: ([], []))
