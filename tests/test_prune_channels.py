"""prune {structure: channels}: whole channels removed with their dependents, for Keras
(narrower layers rebuilt) and PyTorch (torch-pruning), then fine-tuned and measured."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import compress, run_cli, write_recipe

POINT = 0.01


def _stage(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in report["stages"] if s["name"] == name)


def _tfk() -> Any:
    from mobilec.util.tfenv import import_tf_keras

    return import_tf_keras()


def _digits_like(tfk: Any) -> Any:
    L = tfk.layers  # noqa: N806
    return tfk.Sequential([tfk.Input((8, 8, 1)), L.Conv2D(8, 3, padding="same", activation="relu"),
                           L.Conv2D(16, 3, padding="same", activation="relu"), L.MaxPooling2D(),
                           L.Flatten(), L.Dense(12, activation="relu"), L.Dense(10)])


def test_removed_channels_are_exactly_the_silent_ones() -> None:
    """Channels whose filters are zero (after ReLU: silent) are the ones removed, and the
    narrower model computes exactly what the wide one did (Flatten -> Dense rows included)."""
    from mobilec.training.channels_keras import prune_channels

    tfk = _tfk()
    model = _digits_like(tfk)
    rng = np.random.default_rng(0)
    for layer in model.layers[:2] + model.layers[4:5]:  # conv, conv, dense: zero half the outputs
        kernel, bias = layer.get_weights()
        dead = rng.permutation(kernel.shape[-1])[: kernel.shape[-1] // 2]
        kernel[..., dead], bias[dead] = 0.0, 0.0
        layer.set_weights([kernel, bias])
    narrow, info = prune_channels(model, 0.5)
    x = rng.random((16, 8, 8, 1), dtype=np.float32)
    assert np.allclose(narrow(x).numpy(), model(x).numpy(), atol=1e-5)
    assert [layer.get_weights()[0].shape[-1] for layer in narrow.layers if layer.weights] == \
        [4, 8, 6, 10]  # the output layer keeps its 10 units
    assert info["pruned_groups"] == 3 and info["kept_whole"] == []


def test_residual_channels_are_pruned_together_and_concat_is_kept_whole() -> None:
    tfk = _tfk()
    L = tfk.layers  # noqa: N806
    from mobilec.training.channels_keras import prune_channels

    i = tfk.Input((8, 8, 3))
    a = L.ReLU()(L.BatchNormalization()(L.Conv2D(16, 3, padding="same")(i)))
    b = L.BatchNormalization()(L.DepthwiseConv2D(3, padding="same")(a))
    b = L.BatchNormalization()(L.Conv2D(16, 1)(b))
    c = L.Add()([a, b])
    e = L.Conv2D(12, 1)(c)
    d = L.Concatenate()([e, L.Conv2D(8, 1)(e)])
    out = L.Dense(5)(L.GlobalAveragePooling2D()(L.Conv2D(24, 3, padding="same")(d)))
    model = tfk.Model(i, out)
    narrow, info = prune_channels(model, 0.5)
    # the Add couples the two 16-channel producers (8 + 8 kept, so the Add still adds);
    # the concat's inputs (12, 8) are kept whole; the 24 -> 12; the output layer keeps 5
    widths = [layer.get_weights()[0].shape[-1] for layer in narrow.layers
              if type(layer).__name__ in ("Conv2D", "Dense")]
    assert sorted(widths) == [5, 8, 8, 8, 12, 12]
    assert any("Concatenate" in k for k in info["kept_whole"])
    x = np.random.default_rng(0).random((2, 8, 8, 3), dtype=np.float32)
    assert narrow(x).shape == (2, 5)


@pytest.mark.parametrize(("key", "value"), [("sparsity", 0.5), ("block", 4)])
def test_channels_keys_are_validated_with_their_line(tmp_path: Path, key: str,
                                                     value: float) -> None:
    """Keys of unstructured pruning (sparsity, block) are refused with structure: channels."""
    model = tmp_path / "m.keras"
    model.touch()
    recipe = write_recipe(tmp_path, model, stages=[
        {"prune": {"structure": "channels", key: value}}])
    proc = run_cli("validate", str(recipe))
    assert proc.returncode == 2
    assert f"'{key}' is for structure: unstructured" in proc.stderr
    assert f"{recipe.name}:" in proc.stderr and "stages[0].prune" in proc.stderr
    recipe = write_recipe(tmp_path, model, stages=[{"prune": {"ratio": 0.5}}])
    proc = run_cli("validate", str(recipe))
    assert proc.returncode == 2 and "'ratio' is for structure: channels" in proc.stderr


@pytest.mark.slow
def test_keras_digits_half_the_channels(tmp_path: Path, demo_keras: Path) -> None:
    report = compress(write_recipe(tmp_path, demo_keras, targets=["android-nnapi"], stages=[
        {"prune": {"structure": "channels", "ratio": 0.5, "epochs": 3,
                   "learning_rate": 1e-3}}, {"quantize": {"mode": "float16"}}]))
    m = _stage(report, "prune")["metrics"]
    assert m["params_after"] <= 0.55 * m["params_before"]
    assert m["flops_after"] <= 0.55 * m["flops_before"]
    assert m["weights_bytes_after"] < m["weights_bytes_before"] and m["host_latency_ms_after"] > 0
    f32 = next(a for a in report["artifacts"] if a["quantization"] == "float32")
    assert f32["accuracy_drop"] <= 1.5 * POINT
    assert f32["size_bytes"] <= 0.3 * m["weights_bytes_before"]
    json.dumps(report)  # every metric is plain JSON


# ---------------------------------------------------------------- PyTorch (torch-pruning)

def _torch_state(module: Any, digits: Any, tmp: Path) -> Any:
    from torch_digits import module_state

    return module_state(module, digits, tmp)


@pytest.fixture(scope="module")
def torch_digits() -> Any:
    pytest.importorskip("torch_pruning")
    from torch_digits import digits_nchw

    return digits_nchw()


@pytest.mark.slow
def test_torch_digits_half_the_channels(tmp_path: Path, torch_digits: Any) -> None:
    """The PyTorch digits CNN through the prune stage: channels removed by torch-pruning,
    fine-tuned, re-exported; the .pte is built from, and verified against, the pruned model."""
    import torch
    from torch_digits import cnn_layers, train

    from mobilec.policy.targets import ArtifactSpec
    from mobilec.recipe.schema import PruneConfig
    from mobilec.sources.pytorch import eager_runner
    from mobilec.stages import prune
    from mobilec.stages.convert import build_artifact

    (xt, yt), (xe, ye) = torch_digits
    torch.manual_seed(0)
    state = _torch_state(train(cnn_layers(), xt, yt), torch_digits, tmp_path)
    m = prune.run(state, PruneConfig(structure="channels", ratio=0.5, epochs=2,
                                     learning_rate=1e-3))
    assert m["params_after"] <= 0.55 * m["params_before"]
    assert m["flops_after"] <= 0.55 * m["flops_before"]
    acc = float(np.mean(eager_runner(state.torch_module)(xe)[0].argmax(-1) == ye))
    assert state.reference_accuracy - acc <= 1.5 * POINT, (state.reference_accuracy, acc)
    # every format is rebuilt from the pruned model: the program is the narrower one
    assert sum(v.numel() for v in state.torch_program.state_dict.values()) < \
        0.6 * m["params_before"]
    art = build_artifact(state, ArtifactSpec("executorch", "float32", "android-executorch",
                                             "xnnpack", "portable"))
    assert art.status == "ok" and art.verification["top1_agreement"] >= 0.99
    assert art.path.stat().st_size <= 0.3 * m["weights_bytes_before"]


def test_torch_residual_and_inverted_residual_blocks_prune_together(torch_digits: Any) -> None:
    """torch_resnet_bn and torch_mobilenet_v2_ir (the conformance corpus): the residual adds
    and depthwise convs are pruned with their producers, the classifier keeps its 10 outputs,
    and the narrower module still exports."""
    import conformance_torch
    import torch

    from mobilec.training.channels_torch import prune_channels

    for build in (conformance_torch.resnet_bn, conformance_torch.mobilenet_v2_ir):
        torch.manual_seed(0)
        module = build().eval()
        x = (torch.randn(2, 3, 32, 32),)
        before = sum(p.numel() for p in module.parameters())
        prune_channels(module, x, 0.5)
        after = sum(p.numel() for p in module.parameters())
        assert after <= 0.55 * before, (build.__name__, before, after)
        assert module(*x).shape == (2, 10)
        torch.export.export(module, x)


def test_an_exported_pt2_graph_prunes_like_its_module(tmp_path: Path, torch_digits: Any) -> None:
    """ep.module() has no Conv/Linear modules (torch-pruning finds no layer in it): its ops
    are lifted into modules first, so the same channels go; the BatchNorm narrows along."""
    import torch
    from torch_digits import cnn_layers

    from mobilec.recipe.schema import PruneConfig
    from mobilec.stages import prune

    state = _torch_state(cnn_layers().eval(), torch_digits, tmp_path)
    _, (xe, _) = torch_digits
    batch = torch.export.Dim("batch", min=1, max=4096)
    state.torch_module = torch.export.export(state.torch_module, (torch.tensor(xe[:2]),),
                                             dynamic_shapes=({0: batch},)).module()
    m = prune.run(state, PruneConfig(structure="channels", epochs=1))
    assert m["params_before"] == 85130 and m["params_after"] == 21578, m  # the module's figures
    assert dict(state.torch_module.named_parameters())["1.weight"].shape == (16,)


def test_attention_heads_are_counted_not_assumed(torch_digits: Any) -> None:
    """An encoder block: the feed-forward layers narrow, and the heads torch-pruning leaves
    are counted from the pruned module (it keeps them whole here)."""
    import torch

    from mobilec.training.channels_torch import prune_channels

    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Flatten(2), torch.nn.Linear(64, 32),
        torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True),
        torch.nn.Flatten(), torch.nn.Linear(32, 10)).eval()
    x = (torch.randn(2, 1, 64),)
    before = sum(p.numel() for p in module.parameters())
    info = prune_channels(module, x, 0.5)
    assert info["attention_heads_before"] == 4
    assert info["attention_heads_after"] == module[2].self_attn.num_heads
    assert sum(p.numel() for p in module.parameters()) < before
    assert module(*x).shape == (2, 10)
