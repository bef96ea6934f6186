"""Per-input shapes for multi-input models with dynamic dims (issue 24 section 3): the recipe's
`model.inputs` (validated against the model, errors at file:line), else the npz data when
every array of that input has one size there, else a refusal naming the per-input key.
A real two-input ONNX model written with onnx.helper, real onnxruntime runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import artifact, compress
from onnx_models import streaming_model

from mobilec.errors import ModelLoadError, RecipeError


def _recipe(directory: Path, model: Path, **model_keys: Any) -> Path:
    recipe = {"version": 1, "name": "stream", "model": {"path": str(model), **model_keys},
              "data": {"source": "npz", "train": str(directory / "streaming-train.npz"),
                       "eval": str(directory / "streaming-eval.npz")},
              "stages": [{"quantize": {"mode": "float16"}}, {"convert": {"formats": ["onnx"]}}],
              "targets": ["cpu"], "output": {"dir": str(directory / "out"), "report": ["json"]}}
    path = directory / "stream.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def _line(recipe: Path, text: str) -> str:
    return f"{recipe}:{recipe.read_text().splitlines().index(text) + 1}"


@pytest.mark.slow
def test_the_data_fixes_a_dynamic_dim_of_a_multi_input_model_and_says_so(tmp_path: Path) -> None:
    report = compress(_recipe(tmp_path, streaming_model(tmp_path)))
    assert report["model"]["inputs"][0] == {"name": "input", "shape": [None, 16],
                                            "dtype": "float32"}
    assert any("input 'input' dim 1 ('sequence') fixed to 16 from the data" in n
               for n in report["notes"])
    art = artifact(report, "onnx", "float16")
    assert art["status"] == "ok" and art["accuracy"] == report["model"]["accuracy"] == 1.0
    # an .onnx keeps the dim the model left open (only the recipe would fix it): the report
    # lists each artifact's inputs, and the file takes any sequence length
    assert art["inputs"][0]["shape"] == ["batch", "sequence"]
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp_path / "out" / art["path"]),
                                providers=["CPUExecutionProvider"])
    probs = sess.run(None, {"input": np.ones((2, 40), "float32"),
                            "state": np.zeros((2, 8), "float32")})[0]
    assert probs.shape == (2, 4)


def test_the_recipe_fixes_it_per_input_and_wrong_keys_are_located(tmp_path: Path) -> None:
    from mobilec.recipe.loader import load_recipe
    from mobilec.sources.onnx_input import load_onnx
    from mobilec.state import ModelState

    model = streaming_model(tmp_path, sizes=(16, 24))  # the data cannot fix it

    def load(**keys: Any) -> tuple[ModelState, Path]:
        recipe = _recipe(tmp_path, model, **keys)
        work = tmp_path / "work"
        work.mkdir(exist_ok=True)
        state = ModelState(recipe=load_recipe(recipe), out_dir=tmp_path / "out", work_dir=work)
        load_onnx(state, model)
        return state, recipe

    with pytest.raises(ModelLoadError) as err:
        load()
    assert "input 'input' [?, ?] has a dynamic dim 1 ('sequence')" in err.value.message
    assert "sizes [16, 24]" in err.value.message
    assert "model.inputs: {input: [1, ?]}" in err.value.hint

    state, _ = load(inputs={"input": [1, 24]})
    assert [t.shape for t in state.inputs] == [[None, 24], [None, 8]]
    assert not state.notes

    with pytest.raises(RecipeError) as err:
        load(inputs={"inputs": [1, 24]})
    assert err.value.where == _line(tmp_path / "stream.yaml", "    inputs:")
    assert "the model has no input 'inputs'" in err.value.message and "input, state" in \
        err.value.hint

    with pytest.raises(ModelLoadError) as err:
        load(inputs={"input": [1, 24], "state": [1, 9]})
    assert "model.inputs.state [1, 9] does not fit input 'state' [?, 8]: dim 1 is 8" in \
        err.value.message
    assert err.value.where == _line(tmp_path / "stream.yaml", "    state:")

    with pytest.raises(RecipeError, match="not both"):
        load(inputs={"input": [1, 24]}, input_shape=[1, 24])


def test_a_scalar_input_is_refused_saying_what_it_is(tmp_path: Path) -> None:
    from onnx import TensorProto, helper
    from onnx_models import save_helper_model

    from mobilec.recipe.schema import ModelSpec, Recipe
    from mobilec.sources.onnx_input import load_onnx
    from mobilec.state import ModelState

    graph = helper.make_graph(
        [helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
         helper.make_node("Add", ["x", "srf"], ["y"])], "scalar",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])])
    model = save_helper_model(graph, tmp_path / "scalar.onnx")
    (tmp_path / "work").mkdir()
    state = ModelState(recipe=Recipe(model=ModelSpec(path=model)), out_dir=tmp_path / "out",
                       work_dir=tmp_path / "work")
    with pytest.raises(ModelLoadError, match="input 'sr' is a scalar"):
        load_onnx(state, model)
