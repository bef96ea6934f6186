"""What a model file declares about its inputs and its classifier output, read without
TensorFlow (for `mobilec validate`): the Keras config of a .keras or .h5, the graph of an
.onnx. Other kinds (SavedModel, .pt2, a PyTorch module) need their framework to tell, so
`validate` says it did not check them instead of importing it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mobilec.sources.detect import keras_archive_config
from mobilec.sources.input_shapes import batch_axes
from mobilec.state import TensorSpec

# An .onnx past this is read by `compress`, not by `validate` (which must stay quick).
MAX_ONNX_BYTES = 256 << 20
_PASS_THROUGH = ("Activation", "Softmax", "Dropout", "ReLU", "Flatten")


@dataclass
class Declared:
    inputs: list[TensorSpec] | None  # None: not known without the framework
    classes: int | None  # the classifier output's width, when the model plainly has one
    why_not: str | None = None  # why `inputs` is None


def declared_io(path: Path, fmt: str) -> Declared:
    if fmt == "keras":
        return _from_keras_config(keras_archive_config(path))
    if fmt == "h5":
        return _from_h5(path)
    if fmt == "onnx":
        return _from_onnx(path)
    return Declared(None, None, f"reading a {fmt} model's inputs needs its framework "
                                "(TensorFlow or torch); `compress` checks them at load")


def _from_h5(path: Path) -> Declared:
    try:
        import h5py

        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
    except Exception as exc:  # noqa: BLE001 - validate reports what it could not read
        return Declared(None, None, f"cannot read the .h5 model config ({exc})")
    if raw is None:
        return Declared(None, None, "the .h5 holds no model config (weights only?)")
    return _from_keras_config(json.loads(raw.decode() if isinstance(raw, bytes) else raw))


def _from_keras_config(config: Any) -> Declared:
    inner = config.get("config", {}) if isinstance(config, dict) else {}
    layers = inner.get("layers") if isinstance(inner, dict) else None
    if not isinstance(layers, list):
        return Declared(None, None, "the Keras config has no layer list")
    inputs = []
    for layer in layers:
        cfg = layer.get("config", {}) if isinstance(layer, dict) else {}
        shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
        if layer.get("class_name") == "InputLayer" and isinstance(shape, list):
            inputs.append(TensorSpec(str(cfg.get("name") or layer.get("name")), list(shape),
                                     str(cfg.get("dtype") or "float32")))
    if not inputs and layers:  # a Sequential without an InputLayer: its first layer's shape
        cfg = layers[0].get("config", {}) if isinstance(layers[0], dict) else {}
        shape = cfg.get("batch_input_shape") or cfg.get("batch_shape")
        if isinstance(shape, list):
            inputs.append(TensorSpec("x", list(shape), "float32"))
    order = [str(e[0]) for e in inner.get("input_layers") or [] if isinstance(e, list) and e]
    if order and {t.name for t in inputs} == set(order):
        inputs.sort(key=lambda t: order.index(t.name))
    return Declared(inputs or None, _dense_classes(layers, inner),
                    None if inputs else "the Keras config declares no input shape")


def _dense_classes(layers: list[Any], inner: dict[str, Any]) -> int | None:
    """Units of the Dense layer that ends a one-output model (softmax/dropout after it allowed)."""
    outs = inner.get("output_layers")
    if isinstance(outs, list) and len(outs) > 1 and all(isinstance(o, list) for o in outs):
        return None  # several outputs: which one is the classifier is the runtime's call
    for layer in reversed(layers):
        kind = layer.get("class_name") if isinstance(layer, dict) else None
        if kind in _PASS_THROUGH:
            continue
        units = (layer.get("config") or {}).get("units") if kind == "Dense" else None
        return int(units) if isinstance(units, int) and units >= 2 else None
    return None


def _from_onnx(path: Path) -> Declared:
    if path.stat().st_size > MAX_ONNX_BYTES:
        return Declared(None, None, f"the .onnx is larger than {MAX_ONNX_BYTES >> 20} MB; "
                                    "`compress` checks its inputs at load")
    try:
        import onnx  # protobuf only; no runtime

        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception as exc:  # noqa: BLE001 - validate reports what it could not read
        return Declared(None, None, f"cannot read the .onnx graph ({exc})")
    inits = {i.name for i in graph.initializer}

    def named(v: Any) -> list[Any] | None:
        shape = v.type.tensor_type.shape
        if v.type.tensor_type.HasField("shape") and not shape.dim:
            return None  # rank 0
        return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else
                (d.dim_param or None) for d in shape.dim]

    def spec(v: Any, axis: int | None = 0) -> TensorSpec:
        dims = [d if isinstance(d, int) else None for d in named(v) or []]
        elem = onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type)
        return TensorSpec(v.name, dims, str(elem), batch_axis=axis)

    ins = [v for v in graph.input if v.name not in inits]
    axes = batch_axes({v.name: named(v) for v in ins})  # as load reads them
    inputs = [spec(v, axes[v.name]) for v in ins]
    out = spec(graph.output[0]) if graph.output else None
    classes = out.shape[-1] if out is not None and len(out.shape) == 2 and \
        isinstance(out.shape[-1], int) and out.shape[-1] >= 2 else None
    return Declared(inputs, classes)
