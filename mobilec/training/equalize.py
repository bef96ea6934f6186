"""Cross-layer equalization (CLE) of a tf_keras model (Nagel et al. 2019, "Data-Free Quantization").

Per-tensor int8 activations share one scale across channels: a channel whose range
is 10^4 times the others' crushes them to zero. For two consecutive layers joined
by a positively homogeneous function f (ReLU, leaky ReLU, identity, max/avg
pooling, padding, flatten), f(x / s) = f(x) / s for s > 0, so dividing channel i
of the first layer's output (its weights and bias) by s_i and multiplying the
second layer's matching input weights by s_i computes exactly the same function.
With r1_i, r2_i the weight ranges on both sides, s_i = sqrt(r1_i * r2_i) / r2_i
makes them equal; a few passes over all pairs settle overlapping chains.

ReLU6 (and any clipping activation) is not positively homogeneous: relu6(x / s)
clips at 6, not at 6 / s, so such pairs are skipped and the report says why.
BatchNormalization after a linear Conv/Dense is folded into it first (the
moving statistics are constants at inference).

The result is a NEW model (the input may still be a teacher or a reference);
its float outputs are verified against the original's (<= 1e-5 relative).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mobilec.errors import ConversionError
from mobilec.training.surgery import clone_layer, graph_nodes, is_model, rebuild, same_layer
from mobilec.util.tfenv import import_tf_keras

MAX_REL_DIFF = 1e-5
PASSES = 50
CONVERGED = 1e-6  # stop when no scale moves by more than this (log-space)
PROBE_BATCH = 16
INT8_MAX = 127.0

HOMOGENEOUS_ACTIVATIONS = {"relu", "linear", None}
CHANNEL_PRESERVING = ("MaxPooling1D", "MaxPooling2D", "AveragePooling1D", "AveragePooling2D",
                      "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalAveragePooling1D",
                      "GlobalAveragePooling2D", "Dropout", "SpatialDropout1D", "SpatialDropout2D",
                      "ZeroPadding1D", "ZeroPadding2D", "LeakyReLU", "PReLU")


@dataclass
class Pair:
    first: str
    second: str
    via: list[str]
    cmap: np.ndarray  # channel of `first` that feeds each input row of `second`
    channels: int
    depthwise: bool  # `first` is a DepthwiseConv2D
    ratio_before: float = 0.0
    ratio_after: float = 0.0


@dataclass
class _Graph:
    by_name: dict[str, Any]
    consumers: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    producers: dict[str, list[str]] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    outputs: set[str] = field(default_factory=set)
    folded: set[str] = field(default_factory=set)  # BatchNorms folded away: now the identity

    def single_consumer(self, name: str) -> str | None:
        cons = self.consumers.get(name, [])
        ok = len(cons) == 1 and name not in self.outputs and self.calls[name] == 1
        return cons[0] if ok else None


def equalize_keras(model: Any, *, bias_correction: bool = False, calib_x: np.ndarray | None = None
                   ) -> tuple[Any, dict[str, Any]]:
    """A new, equalized copy of `model` and a report (pairs, range ratios, verification)."""
    graph = _graph(model)
    weights = {name: [w.astype(np.float64) for w in layer.get_weights()]
               for name, layer in graph.by_name.items() if _kind(layer) is not None}
    overrides: dict[str, dict[str, Any]] = {}
    folded = _fold_batchnorm(graph, weights, overrides)
    pairs, skipped = _pairs(graph)
    for p in pairs:
        p.ratio_before = _spread(_out_ranges(weights[p.first][0], p.depthwise))
    passes = _balance(pairs, weights) if pairs else 0
    for p in pairs:
        p.ratio_after = _spread(_out_ranges(weights[p.first][0], p.depthwise))
    removed = {bn for bn, _ in folded}

    def replace(layer: Any) -> Any:
        if is_model(layer):
            return same_layer(layer)
        if layer.name in removed:
            return []
        if layer.name in weights:
            w = [a.astype(np.float32) for a in weights[layer.name]]
            return [(clone_layer(layer, **overrides.get(layer.name, {})), w)]
        return same_layer(layer)

    new = rebuild(model, replace)
    probe, probe_note = _probe(model, calib_x)
    diff = _max_rel_diff(model, new, probe)
    if not diff <= MAX_REL_DIFF:
        raise ConversionError(
            f"cross-layer equalization changed the float outputs by {diff:.3g} (relative), "
            f"more than {MAX_REL_DIFF:g}", where=model.name,
            hint="set quantize.equalize: false and report the model's summary()")
    report: dict[str, Any] = {
        "bn_folded": [{"batchnorm": bn, "into": into} for bn, into in folded],
        "pairs": [{"first": p.first, "second": p.second, "via": p.via, "channels": p.channels,
                   "range_ratio_before": round(p.ratio_before, 3),
                   "range_ratio_after": round(p.ratio_after, 3)} for p in pairs],
        "skipped": skipped, "passes": passes,
        "max_rel_diff": float(diff), "verified_on": probe_note, "bias_correction": None,
    }
    if bias_correction and calib_x is not None:
        report["bias_correction"] = _bias_correct(new, calib_x)
    return new, report


# -- graph ------------------------------------------------------------------------

def _graph(model: Any) -> _Graph:
    g = _Graph(by_name={layer.name: layer for layer in model.layers})
    for node in graph_nodes(model):
        ins = node.inbound_layers
        ins = ins if isinstance(ins, (list, tuple)) else [ins]
        name = node.layer.name
        g.calls[name] += 1
        g.producers[name] = [layer.name for layer in ins]
        for layer in ins:
            g.consumers[layer.name].append(name)
    g.outputs = {t._keras_history.layer.name for t in model.outputs}
    return g


def _kind(layer: Any) -> str | None:
    """'dense' | 'conv' | 'depthwise' for the layers whose weights CLE rescales.

    Exact classes: subclasses (Conv2DTranspose, SeparableConv2D) mean other maths.
    """
    tfk = import_tf_keras()
    kinds = {tfk.layers.Dense: "dense", tfk.layers.Conv1D: "conv", tfk.layers.Conv2D: "conv",
             tfk.layers.Conv3D: "conv", tfk.layers.DepthwiseConv2D: "depthwise"}
    kind = kinds.get(type(layer))
    if kind is None:
        return None
    config = layer.get_config()
    if config.get("data_format") == "channels_first" or config.get("groups", 1) != 1:
        return None
    return kind


def _activation(layer: Any) -> Any:
    act = layer.get_config().get("activation")
    if isinstance(act, dict):  # a serialized activation object
        act = act.get("config", {}).get("name", act.get("class_name"))
    return act


def _fold_batchnorm(g: _Graph, weights: dict[str, list[np.ndarray]],
                    overrides: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """Fold each BatchNormalization that directly follows a linear Conv/Dense into it."""
    tfk = import_tf_keras()
    folded = []
    for name, bn in g.by_name.items():
        if type(bn) is not tfk.layers.BatchNormalization or g.calls[name] != 1 or name in g.outputs:
            continue
        prev = (g.producers.get(name) or [None])[0]
        layer = g.by_name.get(prev)
        if (layer is None or prev not in weights or g.single_consumer(prev) != name
                or _activation(layer) not in ("linear", None)):
            continue
        axis = bn.get_config()["axis"]
        axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
        if axis not in (-1, len(bn.input_shape) - 1):
            continue
        cfg = bn.get_config()
        var = bn.moving_variance.numpy().astype(np.float64)
        mean = bn.moving_mean.numpy().astype(np.float64)
        gamma = bn.gamma.numpy().astype(np.float64) if cfg.get("scale", True) else np.ones_like(var)
        beta = bn.beta.numpy().astype(np.float64) if cfg.get("center", True) else np.zeros_like(var)
        f = gamma / np.sqrt(var + cfg["epsilon"])
        w = weights[prev]
        bias = w[1] if len(w) > 1 else np.zeros_like(f)
        weights[prev] = [_scale_out(w[0], f), (bias - mean) * f + beta]
        overrides[prev] = {"use_bias": True}
        folded.append((name, prev))
        g.folded.add(name)
    return folded


def _pairs(g: _Graph) -> tuple[list[Pair], list[dict[str, str]]]:
    pairs, skipped = [], []
    for name, layer in g.by_name.items():
        if _kind(layer) is None:
            continue
        act = _activation(layer)
        if act not in HOMOGENEOUS_ACTIVATIONS:
            if g.single_consumer(name):
                skipped.append({"layer": name, "reason": _why_not(act)})
            continue
        pair, why = _follow(g, name, _out_channels(layer), _kind(layer) == "depthwise")
        if pair is not None:
            pairs.append(pair)
        elif why:
            skipped.append({"layer": name, "reason": why})
    return pairs, skipped


def _why_not(act: Any) -> str:
    if act == "relu6":
        return ("relu6 clips at 6, not at 6/s: not positively homogeneous, so rescaling through "
                "it would change the function")
    return f"activation {act!r} is not positively homogeneous"


def _follow(g: _Graph, first: str, channels: int, depthwise: bool
            ) -> tuple[Pair | None, str | None]:
    """Walk from `first` through channel-preserving layers to the next Dense/Conv."""
    tfk = import_tf_keras()
    cmap = np.arange(channels)
    via: list[str] = []
    name = first
    while True:
        nxt = g.single_consumer(name)
        if nxt is None:
            return None, None  # a branch, an output or a shared layer: nothing to pair with
        if nxt in g.folded:
            name = nxt
            continue
        layer = g.by_name[nxt]
        kind = _kind(layer)
        if kind is not None:
            rows = layer.get_weights()[0].shape[-2]
            # A conv reads channels as they are; only a Dense can read a flattened map.
            if rows != len(cmap) or (kind != "dense" and len(cmap) != channels):
                return None, f"'{nxt}' input rows do not map onto the channels of '{first}'"
            return Pair(first, nxt, via, cmap, channels, depthwise), None
        cls = type(layer).__name__
        cfg = layer.get_config()
        if cls == "Activation" and cfg.get("activation") not in HOMOGENEOUS_ACTIVATIONS:
            return None, _why_not(cfg.get("activation"))
        if cls == "ReLU" and (cfg.get("max_value") is not None or float(cfg.get("threshold", 0))):
            return None, _why_not("relu6" if cfg.get("max_value") == 6 else "clipped relu")
        if cls == "Flatten" and len(cmap) == channels:
            size = int(np.prod(layer.input_shape[1:]))
            if layer.input_shape[-1] != channels or cfg.get("data_format") == "channels_first":
                return None, None
            cmap = np.arange(size) % channels  # channels_last: channel is the fastest index
        elif not (cls in ("Activation", "ReLU") or cls in CHANNEL_PRESERVING
                  or isinstance(layer, tfk.layers.InputLayer)):
            return None, None
        if cfg.get("data_format") == "channels_first":
            return None, None
        via.append(nxt)
        name = nxt


def _out_channels(layer: Any) -> int:
    kernel = layer.get_weights()[0]
    return kernel.shape[-2] * kernel.shape[-1] if _kind(layer) == "depthwise" else kernel.shape[-1]


# -- the maths ----------------------------------------------------------------------

def _out_ranges(kernel: np.ndarray, depthwise: bool = False) -> np.ndarray:
    """Max |w| per output channel (depthwise: channel c*mult+m, the last two axes flattened)."""
    last = kernel.shape[-2] * kernel.shape[-1] if depthwise else kernel.shape[-1]
    return np.abs(kernel).reshape(-1, last).max(axis=0)


def _scale_out(kernel: np.ndarray, f: np.ndarray) -> np.ndarray:
    """Multiply output channel i by f[i] (depthwise: f has in*mult entries)."""
    if f.size == kernel.shape[-1]:
        return kernel * f
    return kernel * f.reshape(kernel.shape[-2], kernel.shape[-1])


def _in_ranges(kernel: np.ndarray, cmap: np.ndarray, channels: int) -> np.ndarray:
    rows = np.moveaxis(np.abs(kernel), -2, 0).reshape(kernel.shape[-2], -1).max(axis=1)
    out = np.zeros(channels)
    np.maximum.at(out, cmap, rows)
    return out


def _scale_in(kernel: np.ndarray, f_rows: np.ndarray) -> np.ndarray:
    return kernel * f_rows[:, None]


def _spread(ranges: np.ndarray) -> float:
    """max / median of the non-zero per-channel ranges (1.0 when flat or empty)."""
    live = ranges[ranges > 0]
    return float(live.max() / np.median(live)) if live.size else 1.0


def _balance(pairs: list[Pair], weights: dict[str, list[np.ndarray]]) -> int:
    for done in range(1, PASSES + 1):
        moved = 0.0
        for p in pairs:
            w1, w2 = weights[p.first], weights[p.second]
            r1 = _out_ranges(w1[0], p.depthwise)
            r2 = _in_ranges(w2[0], p.cmap, p.channels)
            ok = (r1 > 0) & (r2 > 0)
            s = np.ones(p.channels)
            s[ok] = np.sqrt(r1[ok] * r2[ok]) / r2[ok]
            moved = max(moved, float(np.abs(np.log(s)).max()))
            w1[0] = _scale_out(w1[0], 1.0 / s)
            if len(w1) > 1:
                w1[1] = w1[1] / s
            w2[0] = _scale_in(w2[0], s[p.cmap])
        if moved < CONVERGED:
            return done
    return PASSES


# -- verification and bias correction -------------------------------------------

def _probe(model: Any, calib_x: np.ndarray | None) -> tuple[list[np.ndarray], str]:
    if calib_x is not None:
        xs = calib_x if isinstance(calib_x, list) else [calib_x]
        return [np.asarray(x, dtype=np.float32) for x in xs], f"calib_x ({len(xs[0])} samples)"
    rng = np.random.default_rng(0)
    shapes = [[PROBE_BATCH if d is None else int(d) for d in t.shape] for t in model.inputs]
    return ([rng.random(s).astype(np.float32) for s in shapes],
            f"random probe ({PROBE_BATCH} samples; no calib_x)")


def _outputs(model: Any, xs: list[np.ndarray]) -> list[np.ndarray]:
    out = model(xs if len(xs) > 1 else xs[0], training=False)
    return [np.asarray(o, dtype=np.float64) for o in (out if isinstance(out, (list, tuple)) else [out])]


def _max_rel_diff(a: Any, b: Any, xs: list[np.ndarray]) -> float:
    worst = 0.0
    for ra, rb in zip(_outputs(a, xs), _outputs(b, xs), strict=True):
        worst = max(worst, float(np.abs(ra - rb).max() / max(float(np.abs(ra).max()), 1e-12)))
    return worst


def _bias_correct(model: Any, calib_x: np.ndarray) -> list[dict[str, Any]]:
    """Empirical bias correction (Nagel et al. 2019, sec. 4.2): b -= E[x] . (Q(W) - W).

    Q is symmetric per-output-channel int8, what TFLite and ORT use for weights; E[x]
    is the layer input's per-channel mean on calib_x (conv padding edges aside).
    """
    tfk = import_tf_keras()
    layers = [layer for layer in model.layers if _kind(layer) is not None
              and len(layer._inbound_nodes) == 1]
    if not layers:
        return []
    probe = tfk.Model(model.inputs, [layer.input for layer in layers])
    ins = probe(np.asarray(calib_x, dtype=np.float32), training=False)
    ins = ins if isinstance(ins, (list, tuple)) else [ins]
    done = []
    for layer, x in zip(layers, ins, strict=True):
        w = layer.get_weights()
        if len(w) < 2:
            continue  # no bias to move; adding one would change the layer's config
        kernel = w[0].astype(np.float64)
        depthwise = _kind(layer) == "depthwise"
        flat = kernel.reshape(-1, _out_channels(layer))
        scale = np.abs(flat).max(axis=0) / INT8_MAX
        scale[scale == 0] = 1.0
        err = (np.round(flat / scale) * scale - flat).reshape(kernel.shape)
        mean_in = np.asarray(x, dtype=np.float64).reshape(-1, kernel.shape[-2]).mean(axis=0)
        if depthwise:
            shift = (err.sum(axis=tuple(range(err.ndim - 2))) * mean_in[:, None]).reshape(-1)
        else:
            shift = np.tensordot(err, mean_in, axes=([err.ndim - 2], [0])).reshape(
                -1, kernel.shape[-1]).sum(axis=0)
        layer.set_weights([w[0], (w[1] - shift).astype(w[1].dtype), *w[2:]])
        done.append({"layer": layer.name, "max_shift": float(np.abs(shift).max())})
    return done
