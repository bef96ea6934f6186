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


@pytest.mark.slow
def test_a_batch_not_first_input_and_a_scalar_input_convert_from_the_data(tmp_path: Path) -> None:
    """silero-vad's I/O: `input` [batch, sequence], `state` [2, batch, 128], `sr` int64 rank 0.
    No recipe shape: the data fixes `sequence`, `state`'s samples are read along dim 1 (the
    dim named like the other input's batch), `sr`'s one value goes to every sample."""
    import onnxruntime as ort
    from onnx_models import stateful_stream_model

    model = stateful_stream_model(tmp_path)
    recipe = {"version": 1, "name": "vad", "model": {"path": str(model)},
              "data": {"source": "npz", "train": str(tmp_path / "stateful-train.npz"),
                       "eval": str(tmp_path / "stateful-eval.npz")},
              "stages": [{"quantize": {"mode": "int8"}},
                         {"convert": {"formats": ["onnx", "tflite"]}}],
              "targets": ["cpu"], "output": {"dir": str(tmp_path / "out"), "report": ["json"]}}
    (tmp_path / "vad.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    report = compress(tmp_path / "vad.yaml")
    assert report["model"]["inputs"] == [
        {"name": "input", "shape": [None, 32], "dtype": "float32"},
        {"name": "state", "shape": [2, None, 128], "dtype": "float32", "batch_axis": 1},
        {"name": "sr", "shape": [], "dtype": "int64", "batch_axis": None}]
    assert report["model"]["outputs"][1]["batch_axis"] == 1  # stateN [2, batch, 128]
    assert report["model"]["accuracy"] == 1.0
    notes = " | ".join(report["notes"])
    assert "input 'input' dim 1 ('sequence') fixed to 32 from the data" in notes
    assert "input 'state' takes its batch on dim 1 ('batch')" in notes
    assert "input 'sr' is a scalar (rank 0)" in notes
    src = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    feed = {"input": np.ones((3, 40), "float32"), "state": np.full((2, 3, 128), 0.1, "float32"),
            "sr": np.array(16000)}
    for quant in ("float32", "int8"):
        art = artifact(report, "onnx", quant)
        assert art["status"] == "ok", art
        # every output measured samples first: stateN's own figures, not a mangled concat
        assert [o["name"] for o in art["fidelity"]["outputs"]] == ["output", "stateN"]
        assert [i["shape"] for i in art["inputs"]] == [["batch", "sequence"],
                                                       [2, "batch", 128], []]
        sess = ort.InferenceSession(str(tmp_path / "out" / art["path"]),
                                    providers=["CPUExecutionProvider"])
        got, want = sess.run(None, feed), src.run(None, feed)
        assert got[1].shape == (2, 3, 128)
        assert np.abs(got[0] - want[0]).max() < (1e-6 if quant == "float32" else 0.2)
    assert artifact(report, "onnx", "float32")["fidelity"]["max_abs_err"] == 0.0
    assert artifact(report, "onnx", "int8")["accuracy"] >= 0.9
    # .tflite is built from onnx2tf's graph, which takes batch-first inputs only: said, not
    # a cryptic shape error after a 20 s conversion
    tfl = artifact(report, "tflite", "float32")
    assert tfl["status"] == "failed" and "'state' takes its batch on dim 1, 'sr' is rank 0" \
        in tfl["error"]


@pytest.mark.slow
def test_a_batch_not_first_input_reaches_core_ai_with_its_batch_dynamic(tmp_path: Path) -> None:
    """The .aimodel (ONNX bridge -> torch.export) is exported with `state`'s batch dim 1
    dynamic, not dim 0 (which made it [-1, 1, 128]), and runs samples first."""
    from onnx_models import stateful_stream_model

    model = stateful_stream_model(tmp_path, sr=False)
    recipe = {"version": 1, "name": "vad", "model": {"path": str(model)},
              "data": {"source": "npz", "train": str(tmp_path / "stateful-train.npz"),
                       "eval": str(tmp_path / "stateful-eval.npz")},
              "stages": [{"convert": {"formats": ["coreai"]}}],
              "targets": ["cpu"], "output": {"dir": str(tmp_path / "out"), "report": ["json"]}}
    (tmp_path / "vad.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    report = compress(tmp_path / "vad.yaml")
    art = artifact(report, "coreai", "float32", target=None)
    assert art["status"] == "ok" and art["accuracy"] == 1.0, art
    assert art["fidelity"]["top1_agreement"] == 1.0
    assert [t["shape"] for t in art["inputs"]] == [[None, 32], [2, None, 128]]
    assert [t["shape"] for t in art["outputs"]] == [[None, 2], [2, None, 128]]


def test_an_unnamed_batch_dim_is_found_in_the_data(tmp_path: Path) -> None:
    """Every dynamic dim unnamed (`state` [2, ?, 128]): the batch is the one dynamic dim where
    the npz has the sample count; the source runs samples first, outputs included."""
    from onnx_models import stateful_stream_model

    from mobilec.formats.runtime import source_runner
    from mobilec.recipe.loader import load_recipe
    from mobilec.sources.data import load_dataset
    from mobilec.sources.data_validate import check_data
    from mobilec.sources.onnx_input import load_onnx
    from mobilec.state import ModelState

    model = stateful_stream_model(tmp_path, named=False)
    recipe = {"version": 1, "name": "vad", "model": {"path": str(model)},
              "data": {"source": "npz", "train": str(tmp_path / "stateful-train.npz"),
                       "eval": str(tmp_path / "stateful-eval.npz")}}
    (tmp_path / "vad.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    loaded = load_recipe(tmp_path / "vad.yaml")
    (tmp_path / "work").mkdir()
    state = ModelState(recipe=loaded, out_dir=tmp_path / "out", work_dir=tmp_path / "work")
    load_onnx(state, model)
    assert [t.batch_axis for t in state.inputs] == [0, 1, None]
    assert [t.batch_axis for t in state.outputs] == [0, 1]
    assert any("input 'state' takes its batch on dim 1 (the dim the data's sample count is on)"
               in n for n in state.notes)
    data = load_dataset(loaded.data, tmp_path, state.inputs)
    assert [a.shape for a in data.eval.x] == [(64, 32), (64, 2, 128), (64,)]
    out, state_n = source_runner(state)(data.eval.x)
    assert out.shape == (64, 2) and state_n.shape == (64, 2, 128)
    assert (out.argmax(axis=1) == data.eval.y).all()
    # validate reads the data the same way
    assert check_data(loaded, "onnx")["splits"]["eval"]["samples"] == 64


def test_a_scalar_input_takes_one_value_for_every_sample(tmp_path: Path) -> None:
    from onnx import TensorProto, helper
    from onnx_models import save_helper_model

    from mobilec.errors import DataError
    from mobilec.recipe.schema import DataSpec, ModelSpec, Recipe
    from mobilec.sources.data import load_dataset
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
    load_onnx(state, model)
    assert [(t.shape, t.batch_axis) for t in state.inputs] == [([None, 4], 0), ([], None)]
    x = np.zeros((5, 4), "float32")
    for sr, ok in ((np.array(8000), True), (np.full(5, 8000), True),
                   (np.array([8000, 8000, 16000, 8000, 8000]), False)):
        np.savez(tmp_path / "d.npz", x=x, sr=sr)
        spec = DataSpec(source="npz", eval=tmp_path / "d.npz")
        if not ok:
            with pytest.raises(DataError, match=r"input 'sr' is a scalar \(rank 0\).*8000, 16000"):
                load_dataset(spec, tmp_path, state.inputs)
            continue
        data = load_dataset(spec, tmp_path, state.inputs)
        assert data.eval.x[1].tolist() == [8000] * 5  # one value, held per sample
