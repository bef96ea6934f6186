"""The PyTorch digits models' data, network and training loop, shared by
tests/test_pytorch.py and scripts/bench_executorch.py (offline: scikit-learn's digits)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def digits_nchw() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(train, eval) as ((x, y), (x, y)); x is (N, 1, 8, 8): PyTorch wants channels first."""
    from mobilec.sources.data import digits_split

    train_split, ev = digits_split()
    return ((np.transpose(train_split.x, (0, 3, 1, 2)).copy(), train_split.y),
            (np.transpose(ev.x, (0, 3, 1, 2)).copy(), ev.y))


def cnn_layers() -> Any:
    """Conv-BN-ReLU, conv, pool, two dense layers: 85,130 parameters."""
    import torch

    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(64 * 16, 64), nn.ReLU(), nn.Linear(64, 10))


def train(model: Any, x: np.ndarray, y: np.ndarray, epochs: int = 3, lr: float = 3e-3) -> Any:
    """Adam, batch 32, seeded: the same weights every run. Returns the model in eval mode."""
    import torch

    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr)
    xs, ys = torch.tensor(x), torch.tensor(y)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(xs))
        for i in range(0, len(xs), 32):
            idx = order[i:i + 32]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xs[idx]), ys[idx]).backward()
            opt.step()
    return model.eval()


def module_state(module: Any, data: Any, tmp: Path, calibration: int = 100) -> Any:
    """A ModelState holding an eager module (what a `model.module` source loads to) and
    (train, eval) data, with the reference outputs the load stage records."""
    from mobilec.recipe.schema import Recipe
    from mobilec.sources.data import Dataset, Split
    from mobilec.sources.pytorch import describe_io, eager_runner, export_program
    from mobilec.state import ModelState
    from mobilec.util.metrics import accuracy

    (xt, yt), (xe, ye) = data
    state = ModelState(recipe=Recipe.model_validate({"model": {"module": "m:f"}}),
                       out_dir=tmp / "out", work_dir=tmp / "work")
    state.torch_module = module.eval()
    state.torch_program = export_program(module, (xe[:2],), dynamic_batch=True)
    state.inputs, state.outputs = describe_io(state.torch_program)
    state.input_layout = "NCHW"
    state.data = Dataset(Split(xt, yt), Split(xe, ye), Split(xt[:calibration]))
    state.reference = eager_runner(module)(xe)
    state.reference_accuracy = accuracy(state.reference[0], ye)
    return state


def digits_32px(data: Any) -> Any:
    """The digits upsampled to 3 x 32 x 32 (nearest), for the corpus' 32-px image CNNs."""
    def up(x: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(np.repeat(x, 4, axis=2), 4, axis=3), 3, axis=1).copy()

    (xt, yt), (xe, ye) = data
    return (up(xt), yt), (up(xe), ye)
