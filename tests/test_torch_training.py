"""Training stages on PyTorch sources: real training of real (tiny) models, no mocks.

The digits CNN (scripts/torch_digits.py, trained here for one epoch) and the corpus'
torch_resnet_bn and torch_mobilenet_v2_ir (scripts/conformance_torch.py, random
weights, taught their own answers on random images) go through the trainable-model
path: a `.pt2` (ep.module(), BatchNorm switched by graph rewrite) or an eager module,
fine-tuned, re-exported, and every format rebuilt from the trained model.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch_digits import cnn_layers, digits_nchw, train  # noqa: E402 - torch first


@pytest.fixture(scope="module")
def digits() -> Any:
    return digits_nchw()


@pytest.fixture(scope="module")
def cnn(digits: Any) -> Any:
    (xt, yt), _ = digits
    torch.manual_seed(0)
    return train(cnn_layers(), xt, yt, epochs=2)


@pytest.fixture(scope="module")
def cnn_pt2(cnn: Any, digits: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    _, (xe, _) = digits
    path = tmp_path_factory.mktemp("torch") / "cnn.pt2"
    batch = torch.export.Dim("batch", min=1, max=4096)
    ep = torch.export.export(cnn.eval(), (torch.tensor(xe[:2]),), dynamic_shapes=({0: batch},))
    torch.export.save(ep, str(path))
    return path


def pt2_state(path: Path, digits: Any, tmp: Path, labels: bool = True) -> Any:
    """A ModelState loaded from a .pt2 as the load stage does, with the digits data."""
    from mobilec.recipe.schema import Recipe
    from mobilec.sources.data import Dataset, Split
    from mobilec.sources.labels import LabelOutput
    from mobilec.sources.torch_load import load_pt2_source
    from mobilec.state import ModelState
    from mobilec.util.metrics import accuracy

    (xt, yt), (xe, ye) = digits
    state = ModelState(recipe=Recipe.model_validate({"model": {"path": str(path)}}),
                       out_dir=tmp / "out", work_dir=tmp / "work")
    load_pt2_source(state, path)
    state.data = Dataset(Split(xt, yt if labels else None), Split(xe, ye), Split(xt[:100]))
    state.reference = eager(state.torch_module, xe)
    state.reference_accuracy = accuracy(state.reference[0], ye)
    state.label_output = LabelOutput(0, state.outputs[0].name, "only-fit", "one output")
    return state


def eager(module: Any, x: np.ndarray) -> list[np.ndarray]:
    from mobilec.sources.pytorch import eager_runner

    return eager_runner(module)(x)


def acc(out: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(out.argmax(-1) == y))


# ---------------------------------------------------------------- item 1: the trainable model

def test_pt2_module_trains_with_batchnorm_and_is_reexported(tmp_path: Path, cnn_pt2: Path,
                                                            digits: Any) -> None:
    """ep.module() of a loaded .pt2 trains (BatchNorm statistics move in train mode, not in
    eval), and the re-exported program computes exactly what the trained module does."""
    from mobilec.training.torch_fit import fit
    from mobilec.training.torch_model import commit, trainable_module
    from mobilec.util import progress

    _, (xe, ye) = digits
    state = pt2_state(cnn_pt2, digits, tmp_path)
    loaded = state.torch_module
    module = trainable_module(state, "prune")
    stats = {n: b.clone() for n, b in module.named_buffers() if "running_mean" in n}
    assert stats, "the digits CNN has a BatchNorm"
    shown = io.StringIO()
    with progress.active(progress.Progress(stream=shown)):
        metrics = fit(state, module, epochs=1, batch_size=64, learning_rate=1e-3, what="prune")
    assert metrics["loss"] == "cross-entropy (logits)" and metrics["final_loss"] < 0.5
    assert "prune: epoch 1/1 loss" in shown.getvalue()  # long runs show progress
    moved = {n: b for n, b in module.named_buffers() if n in stats}
    assert any(not torch.equal(stats[n], moved[n]) for n in stats), "BatchNorm never trained"
    version = state.model_version
    program = commit(state, module)
    assert state.model_version == version + 1 and state.torch_program is program
    frozen = {n: b.clone() for n, b in state.torch_module.named_buffers() if n in stats}
    trained = eager(state.torch_module, xe)[0]
    assert all(torch.equal(frozen[n], b) for n, b in state.torch_module.named_buffers()
               if n in stats), "eval mode must not move BatchNorm statistics"
    np.testing.assert_allclose(eager(program.module(), xe)[0], trained, atol=1e-4)
    assert acc(trained, ye) >= state.reference_accuracy - 0.02
    # The loaded module is the yardstick: untouched.
    np.testing.assert_array_equal(eager(loaded, xe)[0], state.reference[0])
    # A dynamic batch stays dynamic.
    assert state.inputs[0].shape[0] is None and program.module()(torch.tensor(xe[:3])).shape[0] == 3


def test_training_errors_are_exit_2(tmp_path: Path, cnn_pt2: Path, digits: Any) -> None:
    from mobilec.errors import UnsupportedError
    from mobilec.sources.data import Dataset
    from mobilec.training.torch_model import trainable_module

    state = pt2_state(cnn_pt2, digits, tmp_path)
    state.data = Dataset(None, state.data.eval, None)
    with pytest.raises(UnsupportedError, match="data.train") as err:
        trainable_module(state, "prune")
    assert err.value.exit_code == 2
    state = pt2_state(cnn_pt2, digits, tmp_path)
    state.torch_module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.ReLU())
    with pytest.raises(UnsupportedError, match="no trainable") as err:
        trainable_module(state, "prune")
    assert err.value.exit_code == 2


def test_unlabelled_train_data_self_distills(tmp_path: Path, cnn_pt2: Path, digits: Any) -> None:
    from mobilec.training.torch_fit import training_targets
    from mobilec.training.torch_model import trainable_module

    state = pt2_state(cnn_pt2, digits, tmp_path, labels=False)
    trainable_module(state, "prune")  # a training copy: the live model stays in eval mode
    targets = training_targets(state)
    assert targets.name.startswith("self-distillation")
    np.testing.assert_allclose(targets.arrays[0][:8], eager(state.torch_module, digits[0][0][:8])[0],
                               atol=1e-5)


def module_state(module: Any, train_xy: tuple[np.ndarray, Any], eval_xy: tuple[np.ndarray, Any],
                 tmp: Path) -> Any:
    """A ModelState holding an eager module as the load stage does for model.module."""
    from mobilec.recipe.schema import Recipe
    from mobilec.sources.data import Dataset, Split
    from mobilec.sources.labels import LabelOutput
    from mobilec.sources.pytorch import describe_io, export_program
    from mobilec.state import ModelState

    state = ModelState(recipe=Recipe.model_validate({"model": {"path": "model.pt2"}}),
                       out_dir=tmp / "out", work_dir=tmp / "work")
    state.torch_module = module.eval()
    state.torch_program = export_program(module, (eval_xy[0][:2],), dynamic_batch=True)
    state.inputs, state.outputs = describe_io(state.torch_program)
    state.inputs[0].shape[0] = None
    state.input_layout = "NCHW"
    state.data = Dataset(Split(*train_xy), Split(*eval_xy), Split(train_xy[0][:64]))
    state.reference = eager(module, eval_xy[0])
    state.label_output = LabelOutput(0, state.outputs[0].name, "only-fit", "one output")
    return state


def corpus(name: str, n: int = 96) -> tuple[Any, tuple[np.ndarray, None], tuple[np.ndarray, Any]]:
    """A corpus architecture (random weights) and random images: trained unlabelled
    (self-distillation), evaluated against its own answers."""
    import conformance_torch

    arch = conformance_torch.TORCH_ARCHS[name]
    torch.manual_seed(0)
    module = arch.build().eval()
    x = arch.data(np.random.default_rng(0), 2 * n)
    y = eager(module, x[n:])[0].argmax(-1)
    return module, (x[:n], None), (x[n:], y)


# ---------------------------------------------------------------- item 2: unstructured prune

@pytest.mark.parametrize("schedule", ["constant", "polynomial"])
def test_prune_pt2_digits_counts_its_sparsity(tmp_path: Path, cnn_pt2: Path, digits: Any,
                                              schedule: str) -> None:
    from mobilec.recipe.schema import PruneConfig
    from mobilec.stages import prune

    _, (xe, ye) = digits
    state = pt2_state(cnn_pt2, digits, tmp_path)
    metrics = prune.run(state, PruneConfig(sparsity=0.5, schedule=schedule, epochs=1,
                                           learning_rate=1e-3, batch_size=64))
    weights = [p for p in state.torch_module.parameters() if p.dim() >= 2]
    zeros = sum(int((p == 0).sum()) for p in weights) / sum(p.numel() for p in weights)
    assert metrics["sparsity"] == pytest.approx(zeros, abs=1e-4) and 0.49 <= zeros <= 0.51
    program_w = [p for p in state.torch_program.module().parameters() if p.dim() >= 2]
    assert sum(int((p == 0).sum()) for p in program_w) == metrics["pruned_weights"]
    assert acc(eager(state.torch_program.module(), xe)[0], ye) >= state.reference_accuracy - 0.02


def test_prune_pt2_digits_in_blocks_of_4(tmp_path: Path, cnn_pt2: Path, digits: Any) -> None:
    """block 4: every run of 4 weights along the input channels (dim 1 of Conv OIHW and
    Linear [out, in], contiguous in the .pte's OHWI layout) is all zero or all kept, in the
    re-exported program; the sparsity is counted, 0.5."""
    from mobilec.recipe.schema import PruneConfig
    from mobilec.stages import prune

    _, (xe, ye) = digits
    state = pt2_state(cnn_pt2, digits, tmp_path)
    metrics = prune.run(state, PruneConfig(sparsity=0.5, block=4, schedule="polynomial",
                                           epochs=1, learning_rate=1e-3, batch_size=64))
    assert metrics["block"] == 4 and abs(metrics["sparsity"] - 0.5) <= 0.01
    weights = [p.detach().numpy() for p in state.torch_program.module().parameters()
               if p.dim() >= 2]
    assert sum(int((w == 0).sum()) for w in weights) == metrics["pruned_weights"]
    for w in weights:
        if w.shape[1] % 4:
            continue  # the first conv has one input channel: runs of one
        moved = np.moveaxis(w, 1, -1)
        zeros = (moved.reshape(*moved.shape[:-1], -1, 4) == 0).sum(-1)
        assert np.all((zeros == 0) | (zeros == 4)), w.shape
    assert acc(eager(state.torch_program.module(), xe)[0], ye) >= state.reference_accuracy - 0.02


@pytest.mark.parametrize("name", ["torch_resnet_bn", "torch_mobilenet_v2_ir"])
def test_prune_corpus_modules(tmp_path: Path, name: str) -> None:
    from mobilec.recipe.schema import PruneConfig
    from mobilec.stages import prune

    module, train_xy, eval_xy = corpus(name)
    state = module_state(module, train_xy, eval_xy, tmp_path)
    metrics = prune.run(state, PruneConfig(sparsity=0.5, epochs=1, batch_size=32))
    assert 0.49 <= metrics["sparsity"] <= 0.51 and metrics["loss"].startswith("self-distillation")
    out = eager(state.torch_program.module(), eval_xy[0])[0]
    np.testing.assert_allclose(out, eager(state.torch_module, eval_xy[0])[0], atol=1e-4)
    assert state.torch_module is not module  # the loaded module is never trained in place


@pytest.mark.slow
def test_compress_prunes_a_pt2_and_rebuilds_every_format(tmp_path: Path, cnn_pt2: Path,
                                                         digits: Any) -> None:
    """The recipe path: the plan check lets prune through for a .pt2, the stage reports the
    counted sparsity, the artifacts are built from (and verified against) the pruned model,
    while accuracy drops are measured against the loaded one."""
    from conftest import compress, write_recipe

    (xt, yt), (xe, ye) = digits
    np.savez(tmp_path / "train.npz", x=xt, y=yt)
    np.savez(tmp_path / "eval.npz", x=xe, y=ye)
    recipe = write_recipe(tmp_path, cnn_pt2, name="pruned",
                          data={"source": "npz", "train": "train.npz", "eval": "eval.npz",
                                "calibration_samples": 100},
                          stages=[{"prune": {"sparsity": 0.5, "epochs": 1, "batch_size": 64,
                                             "learning_rate": 0.001}},
                                  {"quantize": {"mode": "int8"}},
                                  {"convert": {"formats": ["onnx"]}}])
    report = compress(recipe)
    stage = next(s for s in report["stages"] if s["name"] == "prune")
    assert stage["status"] == "ok" and 0.49 <= stage["metrics"]["sparsity"] <= 0.51
    rows = {a["quantization"]: a for a in report["artifacts"]}
    for mode in ("float32", "int8"):
        assert rows[mode]["status"] == "ok", (mode, rows[mode]["error"])
        assert rows[mode]["accuracy_drop"] <= 0.02
    float32 = rows["float32"]
    assert float32["verification"]["top1_agreement"] == 1.0  # built from the pruned model


# ---------------------------------------------------------------- item 3: QAT (PT2E)

@pytest.mark.slow
def test_qat_pt2_digits_builds_a_verified_pte(tmp_path: Path, cnn_pt2: Path, digits: Any) -> None:
    """PT2E QAT on the digits .pt2: the .pte qat is converted from the trained QAT graph
    and verified against the fine-tuned float model, which the live model now is."""
    from mobilec.formats.executorch import ExecuTorchFormat
    from mobilec.policy.targets import ArtifactSpec
    from mobilec.recipe.schema import QuantizeConfig
    from mobilec.stages.convert import build_artifact
    from mobilec.training.qat import quantization_aware_train

    _, (xe, ye) = digits
    state = pt2_state(cnn_pt2, digits, tmp_path)
    state.data.train.x, state.data.train.y = state.data.train.x[:480], state.data.train.y[:480]
    metrics = quantization_aware_train(state, QuantizeConfig(mode="qat", epochs=1,
                                                             learning_rate=1e-4))
    assert metrics["framework"] == "pytorch" and state.torch_qat is not None
    assert state.model_version == 1
    art = build_artifact(state, ArtifactSpec("executorch", "qat", "android-executorch",
                                             "xnnpack", "portable"))
    assert art.status == "ok", (art.error, art.routes_failed)
    assert art.quantizer.endswith("quantization-aware trained")
    out = ExecuTorchFormat().runner(state, art)(xe)[0]
    assert acc(out, ye) >= state.reference_accuracy - 0.01


# ---------------------------------------------------------------- item 4: distill

def distill_config(**kw: Any) -> Any:
    from mobilec.recipe.schema import DistillConfig

    return DistillConfig.model_validate({"student": {"width": 0.5}, "epochs": 2,
                                         "learning_rate": 0.002, **kw})


def test_distill_digits_module_at_half_width(tmp_path: Path, cnn: Any, digits: Any) -> None:
    """{width: 0.5} of the eager digits CNN: a quarter of the parameters, learned from the
    teacher's logits and the labels, re-exported; the teacher is untouched."""
    import copy

    from mobilec.stages import distill

    (xt, yt), (xe, ye) = digits
    teacher = copy.deepcopy(cnn)
    state = module_state(teacher, (xt, yt), (xe, ye), tmp_path)
    metrics = distill.run(state, distill_config(epochs=4))
    assert metrics["params_after"] <= 0.3 * metrics["params_before"]
    assert metrics["flops_after"] < metrics["flops_before"] and metrics["labels"]
    assert metrics["student_accuracy"] >= 0.9, metrics
    out = eager(state.torch_program.module(), xe)[0]
    np.testing.assert_allclose(out, eager(state.torch_module, xe)[0], atol=1e-4)
    for a, b in zip(teacher.parameters(), cnn.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["torch_resnet_bn", "torch_mobilenet_v2_ir"])
def test_distill_corpus_modules_at_half_width(tmp_path: Path, name: str) -> None:
    """Residual adds and depthwise convs narrow consistently (torch-pruning's graph)."""
    from mobilec.stages import distill

    module, train_xy, eval_xy = corpus(name)
    state = module_state(module, train_xy, eval_xy, tmp_path)
    metrics = distill.run(state, distill_config(epochs=1))
    assert metrics["params_after"] <= 0.35 * metrics["params_before"], metrics
    assert not metrics["labels"] and metrics["alpha"] == 1.0
    assert eager(state.torch_program.module(), eval_xy[0])[0].shape == (len(eval_xy[0]), 10)


def test_distill_pt2_student_file(tmp_path: Path, cnn_pt2: Path, digits: Any) -> None:
    """student: a .pt2 (an exported graph trains through its BatchNorm switch)."""
    from mobilec.stages import distill

    (xt, _), (xe, _) = digits
    torch.manual_seed(1)
    small = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8),
                                torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(512, 10))
    batch = torch.export.Dim("batch", min=1, max=4096)
    ep = torch.export.export(small.eval(), (torch.tensor(xe[:2]),), dynamic_shapes=({0: batch},))
    torch.export.save(ep, str(tmp_path / "student.pt2"))
    state = pt2_state(cnn_pt2, digits, tmp_path)
    metrics = distill.run(state, distill_config(student=str(tmp_path / "student.pt2"),
                                                epochs=2))
    assert metrics["params_after"] == sum(p.numel() for p in small.parameters())
    assert metrics["student_accuracy"] >= 0.85, metrics


# ---------------------------------------------------------------- item 5: factorize

def test_factorize_digits_module_fixed_rank_with_finetune(tmp_path: Path, cnn: Any,
                                                          digits: Any) -> None:
    """rank 0.25 on the eager digits CNN: the hidden Linear and the 2nd conv become factor
    pairs (first layer and head skipped), exact at full rank, fine-tuned back."""
    from mobilec.recipe.schema import FactorizeConfig
    from mobilec.stages import factorize
    from mobilec.stages.factorize_torch import factorize_module

    (xt, yt), (xe, ye) = digits
    full, done, _ = factorize_module(cnn, rank=1.0, energy=None, only={"3", "7"})
    assert {d["name"] for d in done} <= {"3", "7"}
    state = module_state(cnn, (xt, yt), (xe, ye), tmp_path)
    metrics = factorize.run(state, FactorizeConfig(rank=0.25, epochs=1, learning_rate=1e-3))
    names = {d["name"] for d in metrics["layers_factorized"]}
    assert names == {"3", "7"} and set(metrics["layers_skipped"]) >= {"0", "9"}, metrics
    assert metrics["params_after"] < 0.5 * metrics["params_before"]
    assert metrics["accuracy_after"] >= metrics["accuracy_before"] - 0.02, metrics
    np.testing.assert_allclose(eager(state.torch_program.module(), xe)[0],
                               eager(state.torch_module, xe)[0], atol=1e-4)


@pytest.mark.parametrize("name", ["torch_resnet_bn", "torch_mobilenet_v2_ir"])
def test_factorize_corpus_modules_rank_auto(tmp_path: Path, name: str) -> None:
    from mobilec.recipe.schema import FactorizeConfig
    from mobilec.stages import factorize

    module, train_xy, eval_xy = corpus(name)
    state = module_state(module, train_xy, eval_xy, tmp_path)
    metrics = factorize.run(state, FactorizeConfig(rank="auto", max_drop=0.05, min_share=0.01))
    assert metrics["rank_search"]["metric"] == "accuracy drop"
    assert metrics["params_after"] <= metrics["params_before"]
    if metrics["layers_factorized"]:
        assert state.model_version == 1


# ------------------------------------------- items 4, 5 on a .pt2: its ops lifted into layers

def test_lift_layers_makes_modules_of_a_pt2_graph(cnn_pt2: Path, digits: Any) -> None:
    """ep.module()'s linear/conv/batch-norm ops become the nn.Modules they came from, at
    their own names, computing the same; BatchNorm trains in train mode only; re-exports."""
    from mobilec.sources.pytorch import load_pt2
    from mobilec.training.torch_graph import lift_layers, set_mode

    nn = torch.nn
    _, (xe, _) = digits
    x = torch.tensor(xe[:64])
    graph = load_pt2(cnn_pt2).module()
    lifted = lift_layers(graph)
    assert {n: type(m) for n, m in lifted.named_modules() if n in {"0", "1", "3", "7", "9"}} \
        == {"0": nn.Conv2d, "1": nn.BatchNorm2d, "3": nn.Conv2d, "7": nn.Linear, "9": nn.Linear}
    assert not any(isinstance(m, nn.Conv2d) for m in graph.modules())  # a copy was lifted
    with torch.no_grad():
        np.testing.assert_array_equal(lifted(x).numpy(), graph(x).numpy())
        bn = lifted.get_submodule("1")
        mean = bn.running_mean.clone()
        set_mode(lifted, train=False)(x)
        assert torch.equal(bn.running_mean, mean)
        set_mode(lifted, train=True)(x)
        assert not torch.equal(bn.running_mean, mean)
        set_mode(lifted, train=False)
        again = torch.export.export(lifted, (x,)).module()
        np.testing.assert_allclose(again(x).numpy(), lifted(x).numpy(), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["torch_resnet_bn", "torch_mobilenet_v2_ir"])
def test_lifted_corpus_graphs_narrow_like_their_modules(name: str) -> None:
    """Residual adds and depthwise convs: the lifted .pt2 graph has every Conv/BatchNorm/
    Linear its module has, no weight left in a plain op, and torch-pruning removes exactly
    the channels it removes from the module."""
    import copy

    from mobilec.stages.factorize_torch import eligible
    from mobilec.training.channels_torch import prune_channels
    from mobilec.training.torch_graph import lift_layers

    nn = torch.nn
    module, _, (xe, _) = corpus(name)
    x = (torch.tensor(xe[:2]),)
    lifted = lift_layers(torch.export.export(module, x).module())

    def layers(m: Any) -> list[str]:
        return sorted(type(v).__name__ for v in m.modules()
                      if isinstance(v, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)))

    assert layers(lifted) == layers(module) and len(eligible(lifted)) == len(eligible(module))
    assert not [n for n in lifted.graph.nodes if n.op == "call_function" and any(
        isinstance(a, torch.fx.Node) and a.op == "get_attr" for a in n.args)]
    with torch.no_grad():
        np.testing.assert_allclose(lifted(*x).numpy(), module(*x).numpy(), atol=1e-6)
    eager_copy = copy.deepcopy(module)
    prune_channels(lifted, x, 0.5)
    prune_channels(eager_copy, x, 0.5)
    assert sum(p.numel() for p in lifted.parameters()) == \
        sum(p.numel() for p in eager_copy.parameters())
    torch.export.export(lifted, x)


def test_factorize_a_pt2_without_layers_says_so(tmp_path: Path, digits: Any) -> None:
    """An exported program with no linear/conv op on its own weight: exit 2, what to do."""
    from mobilec.errors import UnsupportedError
    from mobilec.recipe.schema import FactorizeConfig
    from mobilec.stages import factorize

    class Scale(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(64))

        def forward(self, x: Any) -> Any:
            return x.flatten(1) * self.w

    _, (xe, _) = digits
    batch = torch.export.Dim("batch", min=1, max=4096)
    ep = torch.export.export(Scale().eval(), (torch.tensor(xe[:2]),), dynamic_shapes=({0: batch},))
    torch.export.save(ep, str(tmp_path / "scale.pt2"))
    state = pt2_state(tmp_path / "scale.pt2", digits, tmp_path)
    with pytest.raises(UnsupportedError, match="no linear or conv op") as err:
        factorize.run(state, FactorizeConfig(rank=0.5))
    assert err.value.exit_code == 2 and "drop the factorize stage" in err.value.hint


def test_a_fixed_batch_pt2_is_refused_by_the_stages_that_train(tmp_path: Path, cnn: Any,
                                                               digits: Any) -> None:
    """A .pt2 exported for batch 1 only: its guards refuse the training and measuring
    batches, so factorize, distill {width} and prune say so (exit 2), not a guard trace."""
    from mobilec.errors import UnsupportedError
    from mobilec.recipe.schema import FactorizeConfig, PruneConfig, Recipe
    from mobilec.sources.data import Dataset, Split
    from mobilec.sources.torch_load import load_pt2_source
    from mobilec.stages import distill, factorize, prune
    from mobilec.state import ModelState

    (xt, yt), (xe, ye) = digits
    path = tmp_path / "batch1.pt2"
    torch.export.save(torch.export.export(cnn.eval(), (torch.tensor(xe[:1]),)), str(path))
    for run in (lambda st: factorize.run(st, FactorizeConfig(rank=0.25, epochs=0)),
                lambda st: distill.run(st, distill_config()),
                lambda st: prune.run(st, PruneConfig(structure="channels"))):
        state = ModelState(recipe=Recipe.model_validate({"model": {"path": str(path)}}),
                           out_dir=tmp_path / "out", work_dir=tmp_path / "work")
        load_pt2_source(state, path)
        state.data = Dataset(Split(xt, yt), Split(xe, ye), Split(xt[:100]))
        with pytest.raises(UnsupportedError, match="exported for a batch of exactly 1") as err:
            run(state)
        assert err.value.exit_code == 2 and "dynamic_shapes" in err.value.hint


def npz_data(tmp_path: Path, digits: Any) -> dict[str, Any]:
    (xt, yt), (xe, ye) = digits
    np.savez(tmp_path / "train.npz", x=xt, y=yt)
    np.savez(tmp_path / "eval.npz", x=xe, y=ye)
    return {"source": "npz", "train": "train.npz", "eval": "eval.npz", "calibration_samples": 100}


def stage_metrics(report: dict[str, Any], name: str) -> dict[str, Any]:
    stage = next(s for s in report["stages"] if s["name"] == name)
    assert stage["status"] == "ok", stage
    return stage["metrics"]


def assert_counted(metrics: dict[str, Any], cnn: Any) -> None:
    """params before/after are the models' own counts: the source's, and the source's less
    what each factorized layer gave up."""
    assert metrics["params_before"] == sum(p.numel() for p in cnn.parameters())
    rows = metrics["layers_factorized"]
    assert metrics["params_after"] == metrics["params_before"] - sum(
        r["params_before"] - r["params_after"] for r in rows)


@pytest.mark.slow
def test_factorize_pt2_fixed_rank_through_the_cli(tmp_path: Path, cnn_pt2: Path, cnn: Any,
                                                  digits: Any) -> None:
    """`mobilec compress` on the digits .pt2, factorize rank 0.25 + 1 epoch: the hidden conv
    and Linear factorized, every format built from (and verified against) the factorized
    model, accuracy drops against the loaded one."""
    import json

    from conftest import artifact, run_cli, write_recipe

    recipe = write_recipe(tmp_path, cnn_pt2, name="fact", data=npz_data(tmp_path, digits),
                          stages=[{"factorize": {"rank": 0.25, "epochs": 1,
                                                 "learning_rate": 0.001}},
                                  {"convert": {"formats": ["onnx"]}}])
    res = run_cli("compress", str(recipe))
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    metrics = stage_metrics(report, "factorize")
    assert {r["name"] for r in metrics["layers_factorized"]} == {"3", "7"}
    assert_counted(metrics, cnn)
    assert metrics["params_after"] <= 0.3 * metrics["params_before"]
    row = artifact(report, "onnx", "float32", target=None)
    assert row["status"] == "ok", row["error"]
    assert row["verification"]["top1_agreement"] == 1.0  # built from the factorized model
    assert row["accuracy_drop"] <= 0.03, row


@pytest.mark.slow
def test_factorize_pt2_rank_auto_through_the_api(tmp_path: Path, cnn_pt2: Path, cnn: Any,
                                                 digits: Any) -> None:
    from conftest import artifact, compress, write_recipe

    recipe = write_recipe(tmp_path, cnn_pt2, name="auto", data=npz_data(tmp_path, digits),
                          stages=[{"factorize": {"rank": "auto", "max_drop": 0.02}},
                                  {"convert": {"formats": ["onnx"]}}])
    report = compress(recipe)
    metrics = stage_metrics(report, "factorize")
    assert metrics["rank_search"]["metric"] == "accuracy drop" and metrics["layers_factorized"]
    assert_counted(metrics, cnn)
    assert metrics["accuracy_drop"] <= 0.02 + 1e-9, metrics
    row = artifact(report, "onnx", "float32", target=None)
    assert row["status"] == "ok" and row["verification"]["top1_agreement"] == 1.0, row


@pytest.mark.slow
def test_distill_pt2_at_half_width_through_the_api(tmp_path: Path, cnn_pt2: Path, cnn: Any,
                                                   digits: Any) -> None:
    """{width: 0.5} of the digits .pt2: the same topology at half the channels (torch-pruning
    on the lifted graph), KD-trained, re-exported, the .pte built from the student."""
    from conftest import artifact, compress, write_recipe

    recipe = write_recipe(tmp_path, cnn_pt2, name="kd", data=npz_data(tmp_path, digits),
                          stages=[{"distill": {"student": {"width": 0.5}, "epochs": 3,
                                               "learning_rate": 0.002}},
                                  {"convert": {"formats": ["executorch"]}}])
    report = compress(recipe)
    metrics = stage_metrics(report, "distill")
    widths = [m.out_features if isinstance(m, torch.nn.Linear) else m.out_channels
              for m in cnn.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert widths == [32, 64, 64, 10]
    # the student: 16, 32 and 32 channels, the head's 10 kept; counted, not the request's
    expected = (16 * 9 + 16) + 2 * 16 + (32 * 16 * 9 + 32) + (32 * 16 * 32 + 32) + (10 * 32 + 10)
    assert metrics["params_before"] == sum(p.numel() for p in cnn.parameters())
    assert metrics["params_after"] == expected and metrics["params_ratio"] <= 0.3
    assert metrics["flops_before"] > metrics["flops_after"] > 0
    assert metrics["student_accuracy"] >= 0.9, metrics
    row = artifact(report, "executorch", "float32", target=None)
    assert row["status"] == "ok", row["error"]
    assert row["verification"]["top1_agreement"] == 1.0 and row["accuracy_drop"] <= 0.05, row


# ---------------------------------------------------------------- item 6: explore

def test_explore_searches_prune_on_pytorch_sources() -> None:
    """.pt2 and module sources explore prune sparsities and factorize; ONNX neither."""
    from mobilec.explore.run import build_space
    from mobilec.recipe.schema import ExploreConfig, Recipe

    recipe = Recipe.model_validate({"model": {"path": "m.pt2"},
                                    "targets": ["android-executorch"]})
    pt2 = build_space(recipe, ExploreConfig(), "pt2")
    assert pt2.sparsities == [None, 0.5, 0.8, 0.9] and pt2.factorize == ["off", "auto"]
    module = build_space(recipe, ExploreConfig(), "torch-module")
    assert module.factorize == ["off", "auto"] and module.sparsities[1:] == [0.5, 0.8, 0.9]
    onnx = build_space(recipe, ExploreConfig(), "onnx")
    assert onnx.sparsities == [None] and onnx.factorize == ["off"]


@pytest.mark.slow
def test_explore_builds_pruned_candidates_of_a_pt2(tmp_path: Path, cnn_pt2: Path,
                                                   digits: Any) -> None:
    """End to end: the pruned model is saved as a .pt2 into explore's cache (it was
    refused as 'the state holds no model to save', so every prune candidate of a .pt2
    failed) and its candidates are built and measured from it."""
    from conftest import write_recipe

    from mobilec.explore.run import explore

    (xt, yt), (xe, ye) = digits
    np.savez(tmp_path / "train.npz", x=xt, y=yt)
    np.savez(tmp_path / "eval.npz", x=xe, y=ye)
    recipe = write_recipe(tmp_path, cnn_pt2, name="explore",
                          data={"source": "npz", "train": "train.npz", "eval": "eval.npz",
                                "calibration_samples": 100},
                          stages=[{"quantize": {"mode": "int8"}},
                                  {"convert": {"formats": ["onnx"]}}],
                          budget={"max_accuracy_drop": 0.05},
                          explore={"max_candidates": 2, "sparsities": [0.5], "modes": ["int8"],
                                   "prune": {"sparsity": 0.5, "epochs": 1, "batch_size": 64,
                                             "learning_rate": 0.001}})
    doc = explore(recipe)
    pruned = [r for r in doc["candidates"] if r["sparsity"] == 0.5]
    assert pruned, doc["candidates"]
    for row in pruned:
        assert row["status"] in ("ok", "over-budget"), row.get("error")
        assert row["gzip_bytes"] and row["accuracy"] is not None
    unpruned = next(r for r in doc["candidates"] if r["id"] == "int8/onnx")
    assert pruned[0]["gzip_bytes"] < unpruned["gzip_bytes"]


def test_plan_check_lets_every_training_stage_through_for_pytorch() -> None:
    """Up front, before any load: every training stage passes for .pt2 and module sources
    (factorize and distill {width} on a .pt2 lift its ops into layers: test_torch_graph)."""
    from mobilec.policy.plancheck import check_plan
    from mobilec.recipe.schema import Recipe

    def recipe(stage: dict[str, Any]) -> Any:
        return Recipe.model_validate({"model": {"path": "m.pt2"}, "stages": [stage],
                                      "data": {"source": "npz", "train": "t.npz"},
                                      "targets": ["android-executorch"]})

    for stage in ({"prune": {}}, {"quantize": {"mode": "qat"}}, {"distill": {"student": "s.pt2"}},
                  {"distill": {}}, {"factorize": {"rank": 0.5}}):
        for kind in ("torch-module", "pt2"):
            check_plan(recipe(stage), kind)
