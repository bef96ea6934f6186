"""The conformance corpus' PyTorch architectures: torch.nn modules with random weights, exported
with torch.export at batch 1 and saved with torch.export.save (`model.pt2`, the `pt2` source).

Each comes with eval data in its own layout (NCHW images normalized as torchvision does, token
ids, sequences); BatchNorm running statistics are randomized too, so that folding them into the
convolutions is checked rather than an identity. Only torch.nn is used: torchvision is not
installed beside torch here.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from conformance_archs import TORCH_MEAN, TORCH_STD, images


@dataclass
class TorchArch:
    name: str
    build: Callable[[], Any]  # () -> torch.nn.Module
    data: Callable[[np.random.Generator, int], np.ndarray]  # eval inputs, the model's layout
    note: str = ""


def _nchw(size: int) -> Callable[[np.random.Generator, int], np.ndarray]:
    def data(rng: np.random.Generator, n: int) -> np.ndarray:
        x = (images(rng, n, size) / 255.0 - TORCH_MEAN) / TORCH_STD
        return np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))).astype("float32")

    return data


def _normal(shape: tuple[int, ...], mean: float = 0.0, std: float = 1.0):
    return lambda rng, n: rng.normal(mean, std, (n, *shape)).astype("float32")


def _tokens(rng: np.random.Generator, n: int) -> np.ndarray:
    t = rng.integers(1, 1000, (n, 32)).astype("int64")
    t[np.arange(32)[None, :] >= rng.integers(8, 33, n)[:, None]] = 0  # padded like a tokenizer
    return t


# ------------------------------------------------------------------------- architectures
# Classes are defined inside the builders: importing this module must not import torch.

def resnet_bn() -> Any:
    """ResNet-style: conv-BN-ReLU stem, three basic blocks (one strided, 1x1 projection)."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
            self.skip = (nn.Identity() if stride == 1 and cin == cout else
                         nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                       nn.BatchNorm2d(cout)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.body(x) + self.skip(x))

    return nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         Block(16, 16, 1), Block(16, 32, 2), Block(32, 64, 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10))


def mobilenet_v2_ir() -> Any:
    """MobileNetV2-style inverted residuals: 1x1 expand, 3x3 depthwise, 1x1 linear project."""
    import torch
    from torch import nn

    class InvertedResidual(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, expand: int = 4) -> None:
            super().__init__()
            mid = cin * expand
            self.use_skip = stride == 1 and cin == cout
            self.body = nn.Sequential(
                nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
                nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid),
                nn.ReLU6(), nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.body(x)
            return x + y if self.use_skip else y

    return nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6(),
                         InvertedResidual(16, 16, 1), InvertedResidual(16, 24, 2),
                         InvertedResidual(24, 24, 1), InvertedResidual(24, 32, 2),
                         nn.Conv2d(32, 128, 1), nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(128, 10))


def transformer_torch() -> Any:
    """Two nn.TransformerEncoderLayer blocks (attention, LayerNorm, GELU) over 16 tokens."""
    import torch
    from torch import nn

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, activation="gelu",
                                               batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = nn.Linear(32, 6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.encoder(x).mean(1))

    return Encoder()


def _recurrent(cell: str) -> Callable[[], Any]:
    def build() -> Any:
        import torch
        from torch import nn

        class Seq(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.rnn = getattr(nn, cell)(8, 32, num_layers=2, batch_first=True)
                self.head = nn.Linear(32, 5)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                seq, _ = self.rnn(x)
                return self.head(seq[:, -1])

        return Seq()

    return build


def dscnn_kws() -> Any:
    """Depthwise-separable keyword spotter on MFCCs (1 x 49 frames x 10 coefficients)."""
    from torch import nn

    layers: list[Any] = [nn.Conv2d(1, 64, (10, 4), (2, 2), (5, 1)), nn.BatchNorm2d(64), nn.ReLU()]
    for _ in range(3):
        layers += [nn.Conv2d(64, 64, 3, 1, 1, groups=64), nn.BatchNorm2d(64), nn.ReLU(),
                   nn.Conv2d(64, 64, 1), nn.BatchNorm2d(64), nn.ReLU()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 12))


def mlp_torch() -> Any:
    from torch import nn

    return nn.Sequential(nn.Linear(20, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 32),
                         nn.ReLU(), nn.Linear(32, 3))


def unet_tiny() -> Any:
    """Encoder-decoder with a skip and a transposed conv: per-pixel logits (a dense output)."""
    import torch
    from torch import nn

    class UNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.down1 = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1), nn.BatchNorm2d(16), nn.ReLU())
            self.down2 = nn.Sequential(nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU())
            self.up = nn.ConvTranspose2d(32, 16, 2, 2)
            self.out = nn.Conv2d(32, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            a = self.down1(x)
            return self.out(torch.cat([a, self.up(self.down2(a))], 1))

    return UNet()


def text_cnn_torch() -> Any:
    """int64 token ids into nn.Embedding, Conv1d, max over time: a text classifier."""
    import torch
    from torch import nn

    class TextCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(1000, 32)
            self.conv = nn.Conv1d(32, 32, 3, padding=1)
            self.head = nn.Linear(32, 4)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.conv(self.embed(tokens).transpose(1, 2)))
            return self.head(h.amax(-1))

    return TextCNN()


TORCH_ARCHS: dict[str, TorchArch] = {a.name: a for a in [
    TorchArch("torch_resnet_bn", resnet_bn, _nchw(32), "ResNet basic blocks + BatchNorm, NCHW 32px"),
    TorchArch("torch_mobilenet_v2_ir", mobilenet_v2_ir, _nchw(32),
              "inverted residuals, depthwise conv, ReLU6, NCHW 32px"),
    TorchArch("torch_transformer", transformer_torch, _normal((16, 32)),
              "nn.TransformerEncoder: attention, LayerNorm, GELU"),
    TorchArch("torch_lstm", _recurrent("LSTM"), _normal((20, 8)), "2-layer nn.LSTM classifier"),
    TorchArch("torch_gru", _recurrent("GRU"), _normal((20, 8)), "2-layer nn.GRU classifier"),
    TorchArch("torch_dscnn_kws", dscnn_kws, _normal((1, 49, 10), 0, 5),
              "depthwise-separable keyword spotter on MFCCs"),
    TorchArch("torch_mlp", mlp_torch, _normal((20,)), "MLP + BatchNorm1d on a feature vector"),
    TorchArch("torch_unet_tiny", unet_tiny, _nchw(32),
              "encoder-decoder, ConvTranspose2d, skip concat: per-pixel logits"),
    TorchArch("torch_text_cnn", text_cnn_torch, lambda r, n: _tokens(r, n),
              "int64 token ids + nn.Embedding"),
]}


def _randomize_batchnorm(module: Any, gen: Any) -> None:
    import torch

    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)


def build_torch(arch: TorchArch, root: Path, seed: int = 0, samples: int = 32) -> list[dict[str, Any]]:
    """Build, export at batch 1, save `model.pt2` and `eval-pt2.npz` (`x`): one corpus entry."""
    import torch

    d = root / arch.name
    d.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    entry: dict[str, Any] = {"model": arch.name, "source": "pt2", "path": f"{arch.name}/model.pt2",
                             "note": arch.note, "primary": True, "framework": "torch"}
    try:
        torch.manual_seed(seed)
        module = arch.build().eval()
        with torch.no_grad():
            _randomize_batchnorm(module, torch.Generator().manual_seed(seed))
        x = arch.data(np.random.default_rng(seed), samples)
        program = torch.export.export(module, (torch.from_numpy(x[:1]),))
        torch.export.save(program, str(d / "model.pt2"))
        np.savez(d / "eval-pt2.npz", x=x)
        entry.update(eval=f"{arch.name}/eval-pt2.npz",
                     inputs=[{"name": "x", "shape": [None, *x.shape[1:]], "dtype": str(x.dtype)}],
                     params=int(sum(p.numel() for p in module.parameters())))
    except Exception as exc:  # noqa: BLE001 - a failed export is a corpus fact, not a crash
        entry.update(path=None, error=f"{type(exc).__name__}: {str(exc).strip()[:400]}",
                     traceback=traceback.format_exc()[-2000:])
    entry["seconds"] = entry["build_seconds"] = round(time.perf_counter() - start, 2)
    return [entry]
