"""The one place where models cross between Keras 3 and tf_keras.

Everything downstream of `load` works on tf_keras models: tfmot (prune, QAT)
only accepts tf_keras, and the TFLite converter, tf2onnx and coremltools all take
tf_keras models directly without the Keras 3 traps (TFLite silently dropping
Keras 3 weights, tf2onnx `from_keras` failing). tf_keras cannot read Keras 3's
`.keras` nor its layer configs (`batch_shape`, DTypePolicy objects), so a Keras
3 model is rebuilt layer by layer here and its weights copied; the rebuilt
model's outputs are compared with the original before it is trusted.

Going back is free: Keras 3 loads tf_keras `.h5` files (`save_for_keras3`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mobilec.errors import ModelLoadError
from mobilec.util.tfenv import import_keras3, import_tf_keras

_DROP_KEYS = ("optional", "quantization_config", "lora_rank", "lora_alpha", "synchronized")


def _clean(value: Any) -> Any:
    """Translate a Keras 3 config fragment into what tf_keras accepts."""
    if isinstance(value, dict):
        if value.get("class_name") in ("DTypePolicy", "FloatDTypePolicy") and "config" in value:
            return value["config"].get("name", "float32")
        if "class_name" in value and "config" in value:
            return {"class_name": value["class_name"], "config": _clean(value["config"])}
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _layer_to_tf_keras(layer: Any) -> Any:
    tfk = import_tf_keras()
    cls_name = type(layer).__name__
    if cls_name == "Lambda":
        raise ModelLoadError(f"layer '{layer.name}' is a Lambda layer (arbitrary Python code)",
                             hint="replace it by a standard layer or a registered custom layer")
    config = _clean(layer.get_config())
    for key in _DROP_KEYS:
        config.pop(key, None)
    # Weights are copied afterwards, so initializers are irrelevant; Keras 3's carry
    # arguments (input_axes, …) that tf_keras rejects.
    for key in [k for k in config if k.endswith("_initializer")]:
        config.pop(key)
    if cls_name == "InputLayer":
        config["batch_input_shape"] = config.pop("batch_shape", None)
    if cls_name == "MultiHeadAttention":
        # tf_keras' from_config pops these (Keras 3 does not write them); None builds the
        # layer on its first call, as a freshly made layer would.
        for key in ("query_shape", "key_shape", "value_shape"):
            config.setdefault(key, None)
    for _ in range(6):
        try:
            return tfk.layers.deserialize({"class_name": cls_name, "config": config})
        except (TypeError, ValueError, KeyError) as exc:
            text = str(exc)
            if "Unrecognized keyword arguments" in text or "unexpected keyword argument" in text:
                bad = [k for k in list(config) if f"'{k}'" in text]
                if bad:
                    for k in bad:
                        config.pop(k)
                    continue
            raise ModelLoadError(
                f"layer '{layer.name}' ({cls_name}) has no tf_keras equivalent: {text.splitlines()[0]}",
                hint="prune/qat need tf_keras layers; save the model as .h5 from tf_keras, "
                     "or drop the prune/qat stages") from None
    raise ModelLoadError(f"layer '{layer.name}' ({cls_name}) config could not be translated")


def keras3_to_tf_keras(model: Any, probe: np.ndarray | None = None) -> Any:
    """Rebuild a Keras 3 Sequential/functional model as tf_keras, weights included."""
    tfk = import_tf_keras()
    keras = import_keras3()
    if isinstance(model, keras.Sequential):
        layers = [_layer_to_tf_keras(layer) for layer in model.layers]
        shape = model.inputs[0].shape if model.inputs else None
        if shape is None:
            raise ModelLoadError("Sequential model has no input shape; build it with keras.Input")
        # Keep the user's input name: it is what apps bind to (and what snippets print).
        name = getattr(model.inputs[0], "name", None) or None
        new = tfk.Sequential([tfk.Input(batch_shape=tuple(shape), name=name)] + layers,
                             name=model.name)
        for old, fresh in zip(model.layers, layers, strict=True):
            fresh.set_weights(old.get_weights())
    elif isinstance(model, keras.Model) and hasattr(model, "_run_through_graph"):
        new = _functional_to_tf_keras(model, tfk)
    else:
        raise ModelLoadError(
            f"model class {type(model).__name__} is a subclassed Keras model",
            hint="mobilec needs a Sequential or functional model (its graph must be known); "
                 "export it with model.export() and point the recipe at that SavedModel")
    _check_same(model, new, probe)
    return new


def _functional_to_tf_keras(model: Any, tfk: Any) -> Any:
    from keras import tree

    tensors: dict[int, Any] = {}
    inputs = []
    for kt in model.inputs:
        t = tfk.Input(batch_shape=tuple(kt.shape), dtype=kt.dtype, name=kt.name)
        tensors[id(kt)] = t
        inputs.append(t)
    made: dict[int, Any] = {}
    for layer in model.operations:
        if type(layer).__name__ == "InputLayer":
            continue
        fresh = made.get(id(layer))
        if fresh is None:
            fresh = made[id(layer)] = _layer_to_tf_keras(layer)
        for node in layer._inbound_nodes:
            if not all(id(t) in tensors for t in node.input_tensors):
                continue  # a node from another model that shares this layer
            args = tree.map_structure(
                lambda v: tensors[id(v)] if id(v) in tensors else v, node.arguments.args)
            kwargs = tree.map_structure(
                lambda v: tensors[id(v)] if id(v) in tensors else v, node.arguments.kwargs)
            out = fresh(*args, **kwargs)
            for old_t, new_t in zip(tree.flatten(node.outputs), tree.flatten(out), strict=True):
                tensors[id(old_t)] = new_t
    for layer in model.operations:
        if id(layer) in made:
            made[id(layer)].set_weights(layer.get_weights())
    outputs = [tensors[id(t)] for t in model.outputs]
    return tfk.Model(inputs, outputs if len(outputs) > 1 else outputs[0], name=model.name)


def _check_same(old: Any, new: Any, probe: Any) -> None:
    if probe is None:
        # Integer inputs (token ids, masks) get zeros: random values are not valid ids.
        rng = np.random.default_rng(0)
        parts = []
        for t in old.inputs:
            shape = [1 if d is None else d for d in t.shape]
            dtype = np.dtype(getattr(t.dtype, "name", t.dtype))
            parts.append(rng.standard_normal(shape).astype(dtype) if dtype.kind == "f"
                         else np.zeros(shape, dtype=dtype))
        probe = parts[0] if len(parts) == 1 else parts
    a = _as_list(old(probe, training=False))
    b = _as_list(new(probe, training=False))
    for x, y in zip(a, b, strict=True):
        err = float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
        if not np.isfinite(err) or err > 1e-4 * max(1.0, float(np.max(np.abs(np.asarray(x))))):
            raise ModelLoadError(f"rebuilding the Keras 3 model for tf_keras changed its outputs "
                                 f"(max abs error {err:.3g})",
                                 hint="this model uses a layer mobilec cannot carry across; "
                                      "please report it with the model's summary()")


def _as_list(out: Any) -> list[Any]:
    if isinstance(out, dict):
        return list(out.values())
    return list(out) if isinstance(out, (list, tuple)) else [out]


def save_for_keras3(model: Any, path: Path) -> Path:
    """Save a tf_keras model as .h5, which Keras 3's load_model reads."""
    path = Path(path).with_suffix(".h5")
    model.save(str(path), save_format="h5")
    return path
