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
from conformance_archs import TORCH_MEAN, TORCH_STD, class_labels, images


@dataclass
class TorchArch:
    name: str
    build: Callable[[], Any]  # () -> torch.nn.Module
    # eval inputs, the model's layout: one array, or {forward argument name: array}
    data: Callable[[np.random.Generator, int], np.ndarray | dict[str, np.ndarray]]
    note: str = ""
    # set: saved as an .onnx at this opset by the TorchScript exporter (what older tools and
    # model zoos ship) instead of a .pt2
    onnx_opset: int | None = None
    label_output: int | None = None  # as Arch.label_output
    # the attribute naming the nn.Linear that makes the class output: its bias is moved by
    # minus the mean logit on the eval data. A random head on pooled ReLU features (all
    # positive, alike across samples) gives every sample the same class: labels would then
    # tell nothing a constant does not.
    center_head: str | None = None


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


def yolo_split() -> Any:
    """YOLOv8-style detector: conv stem, two C2f blocks (`chunk(2)`: an ONNX `Split` with
    `num_outputs`), a 1x1 head `split` into boxes, objectness and 4 class scores per cell."""
    import torch
    from torch import nn

    def conv(cin: int, cout: int, stride: int = 1) -> Any:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                             nn.BatchNorm2d(cout), nn.SiLU())

    class C2f(nn.Module):
        def __init__(self, c: int) -> None:
            super().__init__()
            self.cv1 = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c), nn.SiLU())
            self.m = nn.Sequential(conv(c // 2, c // 2), conv(c // 2, c // 2))
            self.cv2 = nn.Sequential(nn.Conv2d(c // 2 * 3, c, 1, bias=False), nn.BatchNorm2d(c),
                                     nn.SiLU())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = list(self.cv1(x).chunk(2, 1))
            y.append(self.m(y[-1]) + y[-1])
            return self.cv2(torch.cat(y, 1))

    class Detector(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(conv(3, 16, 2), conv(16, 32, 2), C2f(32), conv(32, 64, 2),
                                      C2f(64))
            self.head = nn.Conv2d(64, 4 + 1 + 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.head(self.body(x)).flatten(2).transpose(1, 2)  # [N, cells, 9]
            box, obj, cls = torch.split(y, [4, 1, 4], dim=-1)
            return torch.cat([box, obj.sigmoid(), cls.sigmoid()], -1)

    return Detector()


def bert_two_input() -> Any:
    """A small BERT: int64 `input_ids` and `attention_mask` (padding masked out of attention
    and of the mean pool), two encoder layers, a 3-class head."""
    import torch
    from torch import nn

    class Bert(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(1000, 32)
            self.pos = nn.Parameter(torch.randn(1, 32, 32) * 0.1)
            layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, activation="gelu",
                                               batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = nn.Linear(32, 3)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            h = self.encoder(self.embed(input_ids) + self.pos,
                             src_key_padding_mask=attention_mask == 0)
            m = attention_mask.unsqueeze(-1).float()
            return self.head((h * m).sum(1) / m.sum(1).clamp(min=1))

    return Bert()


def _bert_data(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    ids = _tokens(rng, n)
    return {"input_ids": ids, "attention_mask": (ids != 0).astype("int64")}


def face_multi_head() -> Any:
    """A face detector's three heads on one backbone: boxes [N, 4], landmarks [N, 10] and
    class logits [N, 2] — the class output last, not first."""
    import torch
    from torch import nn

    class Face(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 32, 3, 2, 1), nn.BatchNorm2d(32), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.boxes, self.landmarks, self.classes = (nn.Linear(32, 4), nn.Linear(32, 10),
                                                        nn.Linear(32, 2))

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            f = self.body(x)
            return self.boxes(f), self.landmarks(f), self.classes(f)

    return Face()


def ocr_recognizer() -> Any:
    """A CRNN-style text recognizer (conv features, width as time steps, per-step softmax over
    11 symbols), as OCR model zoos ship it: an opset-11 .onnx from the TorchScript exporter."""
    import torch
    from torch import nn

    class Ocr(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(1, 16, 3, 1, 1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(16, 32, 3, 1, 1), nn.BatchNorm2d(32), nn.ReLU(),
                nn.AdaptiveAvgPool2d((1, 16)))
            self.fc = nn.Linear(32, 11)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            f = self.features(x).squeeze(2).transpose(1, 2)  # [N, 16 steps, 32]
            return self.fc(f).softmax(-1)

    return Ocr()


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
    TorchArch("torch_yolo_split", yolo_split, _nchw(64),
              "YOLOv8-style detector, C2f chunk + head split (ONNX Split), NCHW 64px"),
    TorchArch("torch_bert_two_input", bert_two_input, _bert_data,
              "small BERT: int64 input_ids + attention_mask"),
    TorchArch("torch_face_multi_head", face_multi_head, _nchw(32),
              "boxes, landmarks, class logits: the class output last", label_output=2,
              center_head="classes"),
    TorchArch("onnx11_ocr_recognizer", ocr_recognizer, _normal((1, 32, 64)),
              "CRNN-style recognizer saved as opset-11 .onnx (TorchScript exporter)",
              onnx_opset=11),
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


def _center(module: Any, head: Any, arrays: dict[str, np.ndarray]) -> None:
    """Shift `head`'s bias so that its outputs average 0 over the eval data (see center_head)."""
    import torch

    seen: list[Any] = []
    hook = head.register_forward_hook(lambda _m, _i, out: seen.append(out))
    with torch.no_grad():
        module(*(torch.from_numpy(a) for a in arrays.values()))
        hook.remove()
        head.bias -= seen[0].mean(0)


def build_torch(arch: TorchArch, root: Path, seed: int = 0, samples: int = 32) -> list[dict[str, Any]]:
    """Build, export at batch 1, save `model.pt2` and `eval-pt2.npz` (`x`, or one array per
    forward argument, and labels `y` when an output has class-score shape: see
    conformance_archs.class_labels): one corpus entry. With `onnx_opset`: `model.onnx` and
    `eval-onnx.npz`."""
    import torch

    d = root / arch.name
    d.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    source = "onnx" if arch.onnx_opset else "pt2"
    rel = f"{arch.name}/model.{source}"
    entry: dict[str, Any] = {"model": arch.name, "source": source, "path": rel,
                             "note": arch.note, "primary": True,
                             "framework": "onnx" if arch.onnx_opset else "torch"}
    try:
        torch.manual_seed(seed)
        module = arch.build().eval()
        with torch.no_grad():
            _randomize_batchnorm(module, torch.Generator().manual_seed(seed))
        data = arch.data(np.random.default_rng(seed), samples)
        arrays = data if isinstance(data, dict) else {"x": data}
        if arch.center_head:
            _center(module, getattr(module, arch.center_head), arrays)
        example = tuple(torch.from_numpy(a[:1]) for a in arrays.values())
        if arch.onnx_opset:
            torch.onnx.export(module, example, str(root / rel), dynamo=False,
                              opset_version=arch.onnx_opset, input_names=list(arrays),
                              output_names=["probs"],
                              dynamic_axes={k: {0: "batch"} for k in [*arrays, "probs"]})
        else:
            torch.export.save(torch.export.export(module, example), str(root / rel))
        with torch.no_grad():
            out = module(*(torch.from_numpy(a) for a in arrays.values()))
        outs = [o.numpy() for o in (out if isinstance(out, (tuple, list)) else [out])]
        got = class_labels(outs, [f"output_{i}" for i in range(len(outs))], arch.label_output)
        y, about = got or (None, None)
        np.savez(d / f"eval-{source}.npz", **arrays, **({} if y is None else {"y": y}))
        entry.update(eval=f"{arch.name}/eval-{source}.npz", labels=about,
                     inputs=[{"name": k, "shape": [None, *a.shape[1:]], "dtype": str(a.dtype)}
                             for k, a in arrays.items()],
                     params=int(sum(p.numel() for p in module.parameters())))
    except Exception as exc:  # noqa: BLE001 - a failed export is a corpus fact, not a crash
        entry.update(path=None, error=f"{type(exc).__name__}: {str(exc).strip()[:400]}",
                     traceback=traceback.format_exc()[-2000:])
    entry["seconds"] = entry["build_seconds"] = round(time.perf_counter() - start, 2)
    return [entry]
