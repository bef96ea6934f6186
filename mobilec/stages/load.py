"""load: read the model (never modifying it), the data, and the reference outputs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mobilec.errors import ModelLoadError, first_line
from mobilec.formats.runtime import count_params, source_runner
from mobilec.sources.batch import as_list, first_n, from_list, is_float
from mobilec.sources.data import adapt_layout, data_where, fit_to_input, load_dataset
from mobilec.sources.detect import (
    check_input_size,
    declared_shapes,
    find_lambda_layers,
    keras_archive_config,
    model_format,
)
from mobilec.sources.input_shapes import recipe_shapes, resolve_dims
from mobilec.sources.keras_bridge import keras3_to_tf_keras
from mobilec.sources.keras_rnn import unroll_in_place
from mobilec.sources.labels import settle_labels
from mobilec.sources.onnx_input import load_onnx
from mobilec.sources.torch_load import load_module_source, load_pt2_source
from mobilec.state import ModelState, SourceInfo, TensorSpec
from mobilec.util.fs import sha256_path, size_of
from mobilec.util.tfenv import import_keras3, import_tf, import_tf_keras

UNSAFE_HINT = ("Lambda layers hold arbitrary Python code; pass --unsafe-deserialization only "
               "for a model you trust")


def run(state: ModelState, config: Any = None) -> dict[str, Any]:
    spec = state.recipe.model
    fmt = model_format(spec)
    if fmt == "torch-module":
        # The code is the model: name it by its spec (its file, when it is one, is hashed).
        ref = spec.module.rsplit(":", 1)[0]
        base = Path(state.recipe.source).resolve().parent
        file = base / ref if ref.endswith(".py") and (base / ref).is_file() else None
        state.source = SourceInfo(path=Path(spec.module), format=fmt,
                                  sha256=sha256_path(file) if file else "",
                                  size_bytes=size_of(file) if file else 0)
        load_module_source(state)
        path = Path(spec.module)
    else:
        path = Path(spec.path)
        state.source = SourceInfo(path=path, format=fmt, sha256=sha256_path(path),
                                  size_bytes=size_of(path))
        loader = LOADERS.get(fmt)
        if loader is None:
            raise ModelLoadError(f"'{fmt}' files are outputs, not inputs", where=str(path),
                                 hint="point model.path at the Keras, SavedModel, ONNX or "
                                      "PyTorch .pt2 source model")
        loader(state, path)
    recipe_shapes(state.recipe, [t.name for t in state.inputs])  # every model.inputs name exists
    for spec in state.inputs:  # SavedModel/ONNX: known only after load
        check_input_size(spec.shape, str(path))
    if state.keras_model is not None:
        state.source.params = count_params(state.keras_model)
    _load_data(state)
    return {"format": fmt, "params": state.source.params,
            "inputs": [t.as_dict() for t in state.inputs],
            "outputs": [t.as_dict() for t in state.outputs]}


def load_keras_format(state: ModelState, path: Path, fmt: str) -> bool:
    """Load a .keras, .h5 or SavedModel file into `state` with the same checks (Lambda
    refusal, input size) and Keras 3 -> tf_keras bridge as a recipe's model; False (nothing
    loaded) for any other format. distill's student file comes in this way."""
    loader = KERAS_LOADERS.get(fmt)
    if loader is None:
        return False
    loader(state, path)
    return True


def _refuse_lambdas(state: ModelState, names: list[str], path: Path) -> None:
    if names and not state.options.get("unsafe_deserialization"):
        raise ModelLoadError(f"model contains Lambda layer(s) {', '.join(names)}; refusing to "
                             "deserialize code from a model file", where=str(path), hint=UNSAFE_HINT)


def _check_config(state: ModelState, config: object, path: Path) -> None:
    """What the config alone tells, before Keras builds (allocates) or runs anything."""
    _refuse_lambdas(state, find_lambda_layers(config), path)
    for shape in declared_shapes(config):
        check_input_size(shape, str(path))


def _load_keras(state: ModelState, path: Path) -> None:
    _check_config(state, keras_archive_config(path), path)

    keras = import_keras3()
    try:
        model = keras.saving.load_model(str(path), compile=False,
                                        safe_mode=not state.options.get("unsafe_deserialization"))
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for bad files
        raise ModelLoadError(f"Keras could not load this .keras file: {first_line(exc)}",
                             where=str(path), hint="is the file complete? re-save it with model.save()"
                             ) from None
    try:
        _set_keras(state, keras3_to_tf_keras(model))
    except Exception as exc:  # noqa: BLE001 - tf_keras rejects some layers in many ways
        # A model tf_keras cannot express still converts from Keras 3's own export.
        reason = exc.message if isinstance(exc, ModelLoadError) else first_line(exc)
        state.note(f"kept as a Keras 3 graph (no prune/qat): {reason}")
        _export_keras3(state, model)


def _export_keras3(state: ModelState, model: Any) -> None:
    out = state.work_dir / "keras3-export"
    # exported as a graph, a recurrent layer's while loop stays one for every format
    unroll_in_place(model)
    model.export(str(out), format="tf_saved_model", verbose=False)
    _load_graph(state, out)
    state.source.params = count_params(model)


def _load_h5(state: ModelState, path: Path) -> None:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
    except OSError as exc:
        raise ModelLoadError(f"cannot read HDF5 file: {first_line(exc)}", where=str(path),
                             hint="the file may be truncated; re-save it") from None
    if raw is None:
        raise ModelLoadError("this .h5 holds weights only (no model_config)", where=str(path),
                             hint="save the whole model with model.save('model.h5')")
    import json

    try:
        config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except (ValueError, AttributeError) as exc:
        raise ModelLoadError(f"corrupt model_config in .h5: {first_line(exc)}", where=str(path),
                             hint="re-save the model with model.save('model.h5')") from None
    _check_config(state, config, path)

    tfk = import_tf_keras()
    try:
        model = tfk.models.load_model(str(path), compile=False)
    except Exception:  # noqa: BLE001 - maybe a Keras 3 .h5: let Keras 3 read it, then bridge

        try:
            model = keras3_to_tf_keras(import_keras3().saving.load_model(str(path), compile=False))
        except ModelLoadError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"cannot load .h5 model: {first_line(exc)}", where=str(path)
                                 ) from None
    _set_keras(state, model)


def _load_savedmodel(state: ModelState, path: Path) -> None:
    if (path / "keras_metadata.pb").exists():
        try:
            _set_keras(state, import_tf_keras().models.load_model(str(path), compile=False))
            return
        except Exception as exc:  # noqa: BLE001 - fall back to the plain graph
            state.note(f"SavedModel's Keras metadata did not load ({first_line(exc)}); "
                       "using its serving signature (no prune/qat)")
    _load_graph(state, path)


def _load_graph(state: ModelState, path: Path) -> None:
    tf = import_tf()
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"cannot load SavedModel: {first_line(exc)}", where=str(path)) from None
    sigs = getattr(loaded, "signatures", {})
    if "serving_default" not in sigs:
        raise ModelLoadError(f"SavedModel has no 'serving_default' signature (has: "
                             f"{', '.join(sigs) or 'none'})", where=str(path),
                             hint="export with model.export() or tf.saved_model.save(..., signatures=)")
    fn = sigs["serving_default"]
    ins = fn.structured_input_signature[1]
    state.inputs = [TensorSpec(n, list(s.shape), s.dtype.name) for n, s in ins.items()]
    state.outputs = [TensorSpec(n, list(s.shape), s.dtype.name) for n, s in fn.structured_outputs.items()]
    state.graph_dir = path
    state.memo[("saved_model", str(path))] = loaded
    state.source.params = int(sum(np.prod(v.shape) for v in loaded.variables)) \
        if hasattr(loaded, "variables") else None
    _apply_input_shape(state)


def _load_onnx(state: ModelState, path: Path) -> None:
    load_onnx(state, path)


def _set_keras(state: ModelState, model: Any) -> None:
    state.keras_model = model
    state.inputs = [TensorSpec(t.name.split(":")[0], list(t.shape), t.dtype.name if hasattr(
        t.dtype, "name") else str(t.dtype)) for t in model.inputs]
    names = list(getattr(model, "output_names", None) or [f"output_{i}" for i in range(len(model.outputs))])
    state.outputs = [TensorSpec(n, list(t.shape)) for n, t in zip(names, model.outputs, strict=True)]
    _apply_input_shape(state)


def _apply_input_shape(state: ModelState) -> None:
    """model.inputs / model.input_shape checked against a Keras or SavedModel's inputs (which
    may keep their dynamic dims: the TensorFlow converters take them)."""
    wants = recipe_shapes(state.recipe, [t.name for t in state.inputs])
    for spec in state.inputs:
        if spec.name in wants:
            fixed, _, _ = resolve_dims(state.recipe, spec.name, spec.shape, wants[spec.name], [],
                                    state.recipe.model.where, single=len(state.inputs) == 1)
            spec.shape = [None, *fixed[1:]]


def _load_data(state: ModelState) -> None:
    recipe = state.recipe
    base = Path(recipe.source).resolve().parent if recipe.source != "<recipe>" else Path.cwd()
    state.data = load_dataset(recipe.data, base, state.inputs,
                              trust_code=bool(state.options.get("trust_code")))
    for note in state.data.notes:
        state.note(note)
    layout = recipe.data.layout if recipe.data else "auto"
    # Calibration samples come from train, else from eval: each split is named by its own file.
    calib_role = "train" if state.data.train is not None else "eval"
    for split, role in ((state.data.train, "train"), (state.data.eval, "eval"),
                        (state.data.calibration, calib_role)):
        if split is None:
            continue
        where = data_where(recipe.data, role) if recipe.data else "data"
        parts = []
        for spec, x in zip(state.inputs, as_list(split.x), strict=True):
            shape = [None, *spec.sample_shape()]  # the data is samples first
            if is_float(x) and np.dtype(spec.dtype).kind == "f" and spec.batch_axis == 0:
                x, note = adapt_layout(x, shape, layout, state.input_layout)
                if note:
                    state.note(note)
            parts.append(fit_to_input(x, shape, f"{where} (input {spec.name})"
                                      if len(state.inputs) > 1 else where, spec.dtype))
        split.x = from_list(parts)
    run_model = source_runner(state)
    if state.data.eval is not None:
        state.reference = run_model(state.data.eval.x)
    _settle_labels(state)


LABEL_ROWS = 256  # without eval data, train labels are checked on the first rows' outputs


def _settle_labels(state: ModelState) -> None:
    """Which output carries the labels (on the source model), labels made class ids for it."""
    data = state.data
    if data.eval is not None and data.eval.y is not None:
        outs = state.reference
    elif data.train is not None and data.train.y is not None:  # train labels only
        outs = source_runner(state)(first_n(data.train.x, LABEL_ROWS))
    else:
        return
    names = [t.name for t in state.outputs]
    if len(names) != len(outs):
        names = [f"output_{i}" for i in range(len(outs))]
    state.label_output, notes = settle_labels(data, state.recipe.data, outs, names,
                                              state.recipe.where("data", "label_output"))
    for note in notes:
        state.note(note)
    state.reference_accuracy = state.label_accuracy(outs) if outs is state.reference else None


# The formats a Keras model comes in (what a distill student may be), then every source.
KERAS_LOADERS = {"keras": _load_keras, "h5": _load_h5, "savedmodel": _load_savedmodel}
LOADERS = {**KERAS_LOADERS, "onnx": _load_onnx, "pt2": load_pt2_source}
