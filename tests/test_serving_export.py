"""The TFLite converter gets a SavedModel of the serving function only (not a full tf_keras
SavedModel): the .tflite must be the same model as from_keras_model makes, in every mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mobilec.formats.tflite_convert import convert_tflite


@pytest.fixture(scope="module")
def loaded_state(demo_keras: Path, tmp_path_factory: pytest.TempPathFactory):
    from conftest import write_recipe

    from mobilec.recipe.loader import load_recipe
    from mobilec.stages import get_stage
    from mobilec.state import ModelState

    d = tmp_path_factory.mktemp("serving")
    recipe = load_recipe(write_recipe(d, demo_keras))
    state = ModelState(recipe=recipe, out_dir=d / "out", work_dir=d, options={})
    get_stage("load")(state, None)
    return state


def _describe(model: bytes, x: np.ndarray) -> tuple[list[str], list[str], dict, np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=model)
    it.allocate_tensors()
    d, o = it.get_input_details()[0], it.get_output_details()[0]
    outs = []
    for i in range(len(x)):
        it.set_tensor(d["index"], x[i:i + 1])
        it.invoke()
        outs.append(it.get_tensor(o["index"]).copy())
    return ([op["op_name"] for op in it._get_ops_details()],  # noqa: SLF001
            sorted(t["name"] for t in it.get_tensor_details()), it.get_signature_list(),
            np.concatenate(outs))


@pytest.mark.parametrize("mode", ["float32", "int8"])
def test_same_model_as_from_keras_model(loaded_state, mode: str) -> None:
    from mobilec.util.tfenv import import_tf

    tf = import_tf()
    state = loaded_state
    ours = convert_tflite(state, mode)
    assert any(k[0] == "serving_savedmodel" and v is not None for k, v in state.memo.items()
               if isinstance(k, tuple)), "the serving export was not used"
    reference = tf.lite.TFLiteConverter.from_keras_model(state.keras_model)
    if mode == "int8":
        from mobilec.formats.tflite_convert import representative_dataset

        reference.optimizations = [tf.lite.Optimize.DEFAULT]
        reference.representative_dataset = representative_dataset(state)
        reference.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    x = state.eval_x[:16]
    a, b = _describe(ours, x), _describe(reference.convert(), x)
    assert a[0] == b[0], "different ops"
    assert a[1] == b[1], "different tensor names (keep_float and diagnose match on them)"
    assert a[2] == b[2], "different signature"
    np.testing.assert_array_equal(a[3], b[3])
