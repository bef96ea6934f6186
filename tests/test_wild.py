"""Models from the wild (issue 24 §5): the faults popular architectures hit, each on a small
equivalent built here — a YOLO-style detector whose C2f block splits a tensor (ONNX `Split`),
an ONNX model exported at opset 11 — converted for real and checked against the source."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import write_recipe

torch = pytest.importorskip("torch")


def detector() -> Any:
    """YOLOv8-style: conv backbone, a C2f block (`chunk(2)`: opset-18 `Split` with
    `num_outputs`), a 1x1 head split into boxes, objectness and classes."""
    from torch import nn

    class C2f(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.cv1 = nn.Conv2d(c, c, 1)
            self.m = nn.Sequential(nn.Conv2d(c // 2, c // 2, 3, 1, 1), nn.SiLU())
            self.cv2 = nn.Conv2d(c // 2 * 3, c, 1)

        def forward(self, x: Any) -> Any:
            y = list(self.cv1(x).chunk(2, 1))
            y.append(self.m(y[-1]))
            return self.cv2(torch.cat(y, 1))

    class Detector(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.SiLU(), C2f(16))
            self.head = nn.Conv2d(16, 8, 1)

        def forward(self, x: Any) -> Any:
            y = self.head(self.backbone(x)).flatten(2).transpose(1, 2)
            box, obj, cls = torch.split(y, [4, 1, 3], dim=-1)
            return torch.cat([box, obj.sigmoid(), cls.sigmoid()], -1)

    torch.manual_seed(0)
    return Detector().eval()


@pytest.fixture(scope="module")
def detector_pt2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("detector")
    x = np.random.default_rng(0).normal(0, 1, (32, 3, 16, 16)).astype("float32")
    program = torch.export.export(detector(), (torch.from_numpy(x[:1]),))
    torch.export.save(program, str(tmp / "det.pt2"))
    np.savez(tmp / "det.npz", x=x)
    return tmp / "det.pt2", tmp / "det.npz"


def loaded_state(tmp: Path, model: Path, npz: Path) -> Any:
    from mobilec.recipe.loader import load_recipe
    from mobilec.stages import get_stage
    from mobilec.state import ModelState

    recipe = load_recipe(write_recipe(tmp, model, data={
        "source": "npz", "eval": str(npz), "calibration_samples": 16, "eval_samples": 32}))
    state = ModelState(recipe=recipe, out_dir=tmp / "out", work_dir=tmp / "work")
    state.work_dir.mkdir(parents=True, exist_ok=True)
    get_stage("load")(state, None)
    return state


def build(state: Any, fmt: str, mode: str) -> Any:
    from mobilec.policy.targets import ArtifactSpec
    from mobilec.stages.convert import build_artifact

    return build_artifact(state, ArtifactSpec(fmt, mode, "cpu", None, None))


@pytest.mark.slow
def test_dynamo_export_at_the_tf2onnx_default_opset_loads_in_onnxruntime(
        tmp_path: Path, detector_pt2: tuple[Path, Path]) -> None:
    """convert.opset (17, tf2onnx's) once reached torch.onnx.export(dynamo=True), which then
    wrote a Split with num_outputs that onnxruntime rejects: the detector got no .onnx."""
    import onnx
    import onnxruntime as ort

    from mobilec.formats.torch_routes import torch_to_onnx

    pt2, npz = detector_pt2
    x = np.load(npz)["x"]
    dest = torch_to_onnx(torch.export.load(str(pt2)), (x[:1],), tmp_path / "det.onnx", opset=17)
    model = onnx.load(str(dest))
    assert any(n.op_type == "Split" for n in model.graph.node)
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 18
    sess = ort.InferenceSession(str(dest), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x[:1]})[0]
    want = detector()(torch.from_numpy(x[:1])).detach().numpy()
    assert np.allclose(got, want, atol=1e-4)


def opset11_model(directory: Path) -> tuple[Path, Path]:
    """Conv-BN-Relu-pool-Gemm-Softmax at opset 11 (what older exporters wrote)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    arr = {"w1": rng.normal(0, 0.4, (8, 3, 3, 3)), "b1": rng.normal(0, 0.1, 8),
           "w2": rng.normal(0, 0.5, (5, 8)), "b2": np.zeros(5)}
    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"], axis=1),
        helper.make_node("Gemm", ["f", "w2", "b2"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "old", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, 12, 12])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 5])],
        [numpy_helper.from_array(v.astype("float32"), k) for k, v in arr.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    onnx.save(model, str(directory / "old.onnx"))
    np.savez(directory / "old.npz",
             image=rng.normal(0, 1, (32, 3, 12, 12)).astype("float32"))
    return directory / "old.onnx", directory / "old.npz"


def test_an_opset_11_onnx_source_gets_a_verified_int8_onnx(tmp_path: Path) -> None:
    """Per-channel QDQ below opset 13 was rejected by onnxruntime ("DequantizeLinear:
    Unrecognized attribute: axis"); the working copy is upgraded and checked first."""
    import onnx

    model, npz = opset11_model(tmp_path)
    before = model.read_bytes()
    state = loaded_state(tmp_path, model, npz)
    art = build(state, "onnx", "int8")
    assert art.status == "ok", art.error or art.routes_failed
    assert art.verification["snr_db"] > 20
    shipped = onnx.load(str(art.path))
    assert any(n.op_type == "DequantizeLinear" for n in shipped.graph.node)
    assert next(o.version for o in shipped.opset_import if o.domain in ("", "ai.onnx")) >= 13
    assert model.read_bytes() == before  # the user's file is never touched


def test_a_wrong_opset_upgrade_is_refused(tmp_path: Path) -> None:
    """The upgraded copy is run against the original: one that differs is not quantized."""
    import onnx

    from mobilec.errors import ConversionError
    from mobilec.formats.onnx_opset import upgraded_for_qdq

    model, npz = opset11_model(tmp_path)
    feeds = [{"image": np.load(npz)["image"][:1]}]
    assert upgraded_for_qdq(model, tmp_path / "up.onnx", feeds) == tmp_path / "up.onnx"
    wrong = onnx.load(str(model))
    wrong.graph.node[1].op_type = "Sigmoid"  # what a broken upgrade could write
    wrong_path = tmp_path / "wrong.onnx"
    onnx.save(wrong, str(wrong_path))
    from mobilec.formats import onnx_opset

    with pytest.raises(ConversionError, match="upgrade"):
        onnx_opset.check_same(model, wrong_path, feeds, 11)


@pytest.mark.slow
def test_float_outputs_retry_of_a_pytorch_tflite_reaches_onnx2tf(
        tmp_path: Path, detector_pt2: tuple[Path, Path]) -> None:
    """The int8 .tflite's last resort (output ops kept in float) started from litert_torch,
    which has no TensorFlow graph: "no TensorFlow form of the model is available"."""
    from mobilec.formats.intermediate import verification_inputs
    from mobilec.formats.tflite import TFLiteFormat, interpreter
    from mobilec.stages.verify import verify
    from mobilec.state import Artifact

    state = loaded_state(tmp_path, *detector_pt2)
    art = Artifact(path=tmp_path / "det-int8.tflite", format="tflite", quantization="int8")
    routes = dict(TFLiteFormat().routes(state, art))
    assert "onnx2tf+float-outputs" in routes, list(routes)
    routes["onnx2tf+float-outputs"](art, art.path)
    outs = interpreter(art.path).get_output_details()
    assert [np.dtype(d["dtype"]) for d in outs] == [np.float32]
    ok, reason = verify(state, TFLiteFormat(), art, verification_inputs(state))
    assert ok, reason


@pytest.mark.slow
def test_float_outputs_retry_never_calibrates_here_what_crashed_in_the_child(
        tmp_path: Path, detector_pt2: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """The TFLite calibrator died (SIGSEGV) on onnx2tf's graph of the corpus torch_gru in its
    child; the float-outputs retry then ran the same calibrator in this process
    (QuantizationDebugger) and took mobilec down (rc 139). Here the child is made to crash
    (CRASH_ENV): the retry must refuse, naming the crash, not calibrate in-process."""
    from mobilec.errors import ConversionError
    from mobilec.formats.tflite import TFLiteFormat
    from mobilec.formats.tflite_child import CRASH_ENV
    from mobilec.state import Artifact

    state = loaded_state(tmp_path, *detector_pt2)
    art = Artifact(path=tmp_path / "det-int8.tflite", format="tflite", quantization="int8")
    routes = dict(TFLiteFormat().routes(state, art))
    monkeypatch.setenv(CRASH_ENV, "SIGSEGV")
    with pytest.raises(ConversionError, match=r"crashed \(SIGSEGV\)"):
        routes["onnx2tf"](art, art.path)
    monkeypatch.delenv(CRASH_ENV)  # as on torch_gru: the float32 conversion itself goes through
    with pytest.raises(ConversionError, match=r"not calibrated in this process: TFLite "
                                              r"converter crashed \(SIGSEGV\)"):
        routes["onnx2tf+float-outputs"](art, art.path)


def two_input_encoder() -> Any:
    """A BERT-like encoder: int64 `input_ids` and `attention_mask` (padding masked out)."""
    from torch import nn

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(50, 16)
            self.head = nn.Linear(16, 3)

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            m = attention_mask.unsqueeze(-1).float()
            return self.head((self.embed(input_ids) * m).sum(1) / m.sum(1).clamp(min=1))

    torch.manual_seed(0)
    return Encoder().eval()


@pytest.mark.slow
def test_litert_torch_tflite_takes_the_source_input_names_and_dtypes(tmp_path: Path) -> None:
    """litert_torch named a two-input model's inputs args_0/args_1 (int32) while the onnx2tf
    route's .tflite of the same model takes input_ids/attention_mask (int64): an app would
    need different feeding code per artifact."""
    from ai_edge_litert.interpreter import Interpreter

    from mobilec.formats.torch_routes import torch_to_tflite

    ids = np.random.default_rng(0).integers(1, 50, (4, 8)).astype("int64")
    mask = np.ones_like(ids)
    mask[:, 5:] = 0
    model = two_input_encoder()
    # a .pt2 source: the ExportedProgram's module takes positional inputs only
    program = torch.export.export(model, (torch.from_numpy(ids[:1]), torch.from_numpy(mask[:1])))
    path = torch_to_tflite(program.module(), (ids[:1], mask[:1]), tmp_path / "enc.tflite",
                           "float32", input_names=["input_ids", "attention_mask"])
    it = Interpreter(model_path=str(path))
    assert it.get_signature_list()["serving_default"]["inputs"] == ["attention_mask", "input_ids"]
    assert {np.dtype(d["dtype"]) for d in it.get_input_details()} == {np.dtype("int64")}
    got = next(iter(it.get_signature_runner()(input_ids=ids[:1], attention_mask=mask[:1]).values()))
    want = model(torch.from_numpy(ids[:1]), torch.from_numpy(mask[:1])).detach().numpy()
    assert np.allclose(got, want, atol=1e-5)


@pytest.mark.slow
def test_every_artifact_names_its_outputs_as_the_source_does(tmp_path: Path) -> None:
    """A PyTorch model's .onnx, .pte and Core ML name its outputs as the ExportedProgram does
    (`linear_1`); litert_torch named them output_0, output_1 (an app fetching by name would
    need per-artifact code). Now its signature outputs carry the source's names, and a file
    that cannot is reported with the mapping, in report.json and in its loader snippet."""
    import json

    from conftest import compress

    (tmp_path / "heads.py").write_text(
        "import torch\n"
        "class Heads(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        torch.manual_seed(0)\n"
        "        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16))\n"
        "        self.box = torch.nn.Linear(16, 4)\n"
        "        self.scores = torch.nn.Linear(16, 10)\n"
        "    def forward(self, image):\n"
        "        h = self.body(image)\n"
        "        return self.scores(h), self.box(h)\n"
        "def build():\n"
        "    return Heads()\n")
    recipe = {"version": 1, "name": "heads",
              "model": {"module": "heads.py:build", "input_shape": [1, 1, 8, 8]},
              "data": {"source": "digits", "eval_samples": 64, "calibration_samples": 16},
              "stages": [{"quantize": {"mode": "dynamic"}},
                         {"convert": {"formats": ["tflite", "onnx"]}}],
              "targets": ["cpu"], "output": {"dir": str(tmp_path / "out"),
                                             "report": ["json", "md"]}}
    (tmp_path / "heads.yaml").write_text(json.dumps(recipe))
    report = compress(tmp_path / "heads.yaml", trust_code=True)
    source = [t["name"] for t in report["model"]["outputs"]]
    assert len(source) == 2
    arts = [a for a in report["artifacts"] if a["status"] == "ok"]
    assert {a["format"] for a in arts} == {"tflite", "onnx"}
    for a in arts:
        assert sorted(t["name"] for t in a["outputs"]) == sorted(source), a["path"]
        assert [t["name"] for t in a["inputs"]] == ["image"]
        assert a["io_names"] is None, a["path"]
    assert any(a["format"] == "tflite" and a["route"] == "litert-torch" for a in arts)

    # a file that cannot carry the names (litert_torch's own output_0/output_1): the report
    # and the loader snippet say which is which
    import importlib.util

    from mobilec.delegates.manifest import markdown_sections, prepare_for_placement
    from mobilec.formats.torch_routes import torch_to_tflite
    from mobilec.recipe.schema import ModelSpec, Recipe
    from mobilec.state import Artifact, ModelState, TensorSpec

    spec = importlib.util.spec_from_file_location("heads", tmp_path / "heads.py")
    factory = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(factory)
    x = np.zeros((1, 1, 8, 8), "float32")
    plain = torch_to_tflite(factory.build().eval(), (x,), tmp_path / "plain.tflite", "float32")
    (tmp_path / "work").mkdir()
    state = ModelState(recipe=Recipe(model=ModelSpec(path=tmp_path / "heads.pt2"),
                                     targets=["cpu"]),
                       out_dir=tmp_path / "placed", work_dir=tmp_path / "work")
    state.inputs = [TensorSpec("image", [None, 1, 8, 8])]
    state.outputs = [TensorSpec(source[0], [None, 10]), TensorSpec(source[1], [None, 4])]
    art = Artifact(path=plain, format="tflite", quantization="float32", target="cpu",
                   delegate="xnnpack")
    prepare_for_placement(state, art, plain)
    assert art.io_names == {"inputs": {"args_0": "image"},
                            "outputs": {"output_0": source[0], "output_1": source[1]}}
    assert any("'output_0' is '" + source[0] + "'" in n for n in art.notes)
    assert art.io_dtypes is None  # float32 in, float32 out, as the source
    state.artifacts = [art]
    snippet = "\n".join(markdown_sections(state))
    assert f'// output "output_1" here is "{source[1]}" in the source model' in snippet
    # dtypes: a file taking int8 (int8-io) is fed differently, and says so; outputs are
    # matched by name whatever their order in the file
    from mobilec.delegates.manifest import io_dtypes

    io = {"inputs": [{"name": "image", "shape": [1, 1, 8, 8], "dtype": "int8"}],
          "outputs": [{"name": source[1], "shape": [1, 4], "dtype": "float32"},
                      {"name": source[0], "shape": [1, 10], "dtype": "int8"}]}
    assert io_dtypes(state, io) == [
        "input 'image' is int8 in this file (float32 in the source model)",
        f"output '{source[0]}' is int8 in this file (float32 in the source model)"]


@pytest.mark.slow
def test_an_int8_pte_of_computed_indices_says_what_to_ship(tmp_path: Path) -> None:
    """PT2E int8 turns integer index tensors into float: every route fails the same way, and
    the artifact says what works instead of four first lines of stack traces."""
    from torch import nn

    class Lookup(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = nn.Parameter(torch.randn(50, 8))
            self.head = nn.Linear(8, 3)

        def forward(self, ids: Any) -> Any:
            return self.head(self.table[(ids + 1) % 50].mean(1))

    ids = np.random.default_rng(0).integers(0, 50, (16, 6)).astype("int64")
    torch.manual_seed(0)
    torch.export.save(torch.export.export(Lookup().eval(), (torch.from_numpy(ids[:1]),)),
                      str(tmp_path / "lookup.pt2"))
    np.savez(tmp_path / "lookup.npz", x=ids)
    state = loaded_state(tmp_path, tmp_path / "lookup.pt2", tmp_path / "lookup.npz")
    art = build(state, "executorch", "int8")
    assert art.status == "failed"
    assert art.error.count("hint:") == 1 and "float16" in art.error, art.error
    assert len(art.routes_failed) >= 3
