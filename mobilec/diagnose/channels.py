"""Per-channel figures for a layer's output, and where a range imbalance starts.

int8 gives a whole tensor one scale. When one channel's range is 10^4 times the
others', the others round to zero: the damage shows in the CONSUMER of that
tensor (its input lost its information), while the producer's own tensor SNR
still looks fine (its one huge channel dominates both signal and noise). So the
op to blame is the one whose OUTPUT channels are unbalanced; `blame_order`
puts such producers ahead of the ops where the error shows. `range_imbalance`
is also the signal `quantize: {equalize: auto}` uses to decide whether to try
cross-layer equalization.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mobilec.training.surgery import graph_nodes
from mobilec.util.tfenv import import_tf_keras

# Channel ranges further apart than this waste more than ~6.6 of int8's 8 bits on
# the small channels: the rule of thumb for "equalize first".
IMBALANCE_RATIO = 100.0
BATCH = 64


def channel_stats(acts: np.ndarray, axis: int = -1) -> dict[str, Any]:
    """Per-channel min/max/range of `acts` along `axis`, and how unbalanced they are.

    range_ratio is max/median over channels that are not constant (dead ReLU
    channels have range 0 and would make every ratio infinite).
    """
    a = np.moveaxis(np.asarray(acts, dtype=np.float64), axis, -1)
    flat = a.reshape(-1, a.shape[-1])
    lo, hi = flat.min(axis=0), flat.max(axis=0)
    ranges = hi - lo
    live = ranges[ranges > 0]
    ratio = float(live.max() / np.median(live)) if live.size else 1.0
    return {"channels": int(flat.shape[1]), "min": lo.tolist(), "max": hi.tolist(),
            "range": ranges.tolist(), "range_ratio": ratio,
            "widest_channel": int(ranges.argmax()) if ranges.size else None,
            "dead_channels": int((ranges == 0).sum())}


def channel_snr_db(ref: np.ndarray, got: np.ndarray, axis: int = -1) -> dict[str, Any]:
    """SNR (dB) of each channel of `got` against `ref`; the worst one and which it is."""
    r = np.moveaxis(np.asarray(ref, dtype=np.float64), axis, -1)
    g = np.moveaxis(np.asarray(got, dtype=np.float64), axis, -1)
    r, g = r.reshape(-1, r.shape[-1]), g.reshape(-1, g.shape[-1])
    signal, noise = (r ** 2).sum(axis=0), ((r - g) ** 2).sum(axis=0)
    snr = []
    for s, n in zip(signal, noise, strict=True):
        snr.append(math.inf if n == 0 else -math.inf if s == 0 else 10 * math.log10(s / n))
    finite = [(v, i) for i, v in enumerate(snr) if not (v == math.inf)]
    worst = min(finite) if finite else (math.inf, None)
    return {"snr_db": snr, "worst_snr_db": worst[0], "worst_channel": worst[1]}


def layer_channel_stats(model: Any, calib_x: np.ndarray) -> list[dict[str, Any]]:
    """channel_stats of every layer output of a tf_keras model on calib_x, model order.

    Only layers with one call and one float output of rank >= 2 (the channel is
    the last axis: tf_keras is channels_last).
    """
    tfk = import_tf_keras()
    layers = [layer for layer in model.layers
              if not isinstance(layer, tfk.layers.InputLayer) and len(layer._inbound_nodes) == 1
              and not isinstance(layer.output, (list, tuple)) and len(layer.output.shape) >= 2
              and layer.output.dtype.is_floating]
    if not layers:
        return []
    probe = tfk.Model(model.inputs, [layer.output for layer in layers])
    x = np.asarray(calib_x, dtype=np.float32)
    lo: list[np.ndarray] = []
    hi: list[np.ndarray] = []
    for i in range(0, len(x), BATCH):  # running per-channel min/max: big activations never pile up
        outs = probe(x[i:i + BATCH], training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for k, out in enumerate(outs):
            flat = np.asarray(out, dtype=np.float64).reshape(-1, out.shape[-1])
            if i == 0:
                lo.append(flat.min(axis=0))
                hi.append(flat.max(axis=0))
            else:
                lo[k], hi[k] = np.minimum(lo[k], flat.min(axis=0)), np.maximum(hi[k], flat.max(axis=0))
    rows = []
    for layer, a, b in zip(layers, lo, hi, strict=True):
        stats = channel_stats(np.stack([a, b]))
        rows.append({"layer": layer.name, "kind": type(layer).__name__,
                     "channels": stats["channels"], "range_ratio": round(stats["range_ratio"], 3),
                     "widest_channel": stats["widest_channel"],
                     "max_range": float(max(stats["range"])) if stats["range"] else 0.0,
                     "dead_channels": stats["dead_channels"]})
    return rows


def range_imbalance(model: Any, calib_x: np.ndarray, threshold: float = IMBALANCE_RATIO
                    ) -> list[dict[str, Any]]:
    """Layers whose output channel ranges differ by more than `threshold` (max/median), worst first.

    Only layers that carry weights or an activation count: a Flatten or pooling
    after an unbalanced layer repeats its figure and would name the wrong layer.
    """
    rows = [r for r in layer_channel_stats(model, calib_x)
            if r["range_ratio"] > threshold and r["kind"] not in _PASSIVE]
    return sorted(rows, key=lambda r: -r["range_ratio"])


_PASSIVE = {"Flatten", "Reshape", "MaxPooling1D", "MaxPooling2D", "AveragePooling1D",
            "AveragePooling2D", "GlobalMaxPooling1D", "GlobalMaxPooling2D",
            "GlobalAveragePooling1D", "GlobalAveragePooling2D", "Dropout", "ZeroPadding2D",
            "Activation", "ReLU"}


def blame_order(error_rows: list[str], stats: list[dict[str, Any]], consumers: dict[str, list[str]],
                threshold: float = IMBALANCE_RATIO) -> list[str]:
    """Re-rank layers so that the layer whose output causes the damage comes first.

    error_rows: layer names worst-first as the error shows (e.g. diagnose's rows).
    stats: layer_channel_stats rows. consumers: layer -> layers reading its output
    (through passive layers already resolved). A producer whose output range ratio
    exceeds `threshold` is moved just before the first of its consumers in the list.
    """
    ratio = {r["layer"]: r["range_ratio"] for r in stats if r["kind"] not in _PASSIVE}
    culprits = sorted((n for n, v in ratio.items() if v > threshold), key=lambda n: -ratio[n])
    order = [n for n in error_rows if n not in culprits]
    for name in culprits:  # worst first; a culprit nobody reads from goes to the front
        hit = [i for i, n in enumerate(order) if n in consumers.get(name, [])]
        order.insert(hit[0] if hit else 0, name)
    return order


def keras_consumers(model: Any) -> dict[str, list[str]]:
    """layer -> the weighted layers that read its output, looking through passive layers."""
    direct: dict[str, list[str]] = {}
    kinds = {layer.name: type(layer).__name__ for layer in model.layers}
    for node in graph_nodes(model):
        ins = node.inbound_layers
        for layer in ins if isinstance(ins, (list, tuple)) else [ins]:
            direct.setdefault(layer.name, []).append(node.layer.name)

    return through_passive(direct, kinds, _PASSIVE)


def onnx_range_imbalance(model_proto: Any, feeds: dict[str, np.ndarray],
                         threshold: float = IMBALANCE_RATIO) -> list[dict[str, Any]]:
    """range_imbalance for an ONNX graph: the outputs of Conv/Gemm/MatMul/Add/Relu nodes whose
    channel ranges differ by more than `threshold`, worst first (NCHW: channel axis 1 for
    4-D Conv outputs, else the last axis)."""
    import onnx
    import onnxruntime as ort

    model = onnx.ModelProto()
    model.CopyFrom(model_proto)
    watched = {n.output[0]: n for n in model.graph.node
               if n.op_type in ("Conv", "Gemm", "MatMul", "Add", "Relu") and n.output}
    known = {o.name for o in model.graph.output}
    for name in watched:
        if name not in known:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    rows = []
    for name, value in zip(names, sess.run(names, feeds), strict=True):
        node = watched.get(name)
        if node is None or value.ndim < 2 or not np.issubdtype(value.dtype, np.floating):
            continue
        stats = channel_stats(value, axis=1 if node.op_type == "Conv" and value.ndim == 4 else -1)
        if stats["range_ratio"] > threshold:
            rows.append({"layer": node.name or name, "kind": node.op_type, "tensor": name,
                         "channels": stats["channels"], "range_ratio": round(stats["range_ratio"], 3),
                         "widest_channel": stats["widest_channel"]})
    return sorted(rows, key=lambda r: -r["range_ratio"])


def through_passive(direct: dict[str, list[str]], kinds: dict[str, str], passive: Any,
                    rows: set[str] | None = None) -> dict[str, list[str]]:
    """producer -> the ops that read its values, looking through `passive` ops (a reshape or a
    pool between two layers does not change which channels the reader gets) and, when `rows`
    is given, through ops that have no row (an output int8 does not quantize on its own, e.g.
    a MatMul whose bias Add carries the QDQ)."""
    def reach(name: str, seen: set[str]) -> list[str]:
        found = []
        for nxt in direct.get(name, []):
            if nxt in seen:
                continue
            seen.add(nxt)
            through = kinds.get(nxt) in passive or \
                (rows is not None and nxt not in rows)
            found.extend(reach(nxt, seen) if through else [nxt])
        return found

    return {name: reach(name, set()) for name in direct}
