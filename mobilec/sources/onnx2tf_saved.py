"""onnx2tf's tf_keras model -> the SavedModel mobilec's TensorFlow formats read.

Its serving signature takes the ONNX inputs (by ONNX name, in ONNX order) and returns
{ONNX output name: tensor in ONNX layout}.

Some onnx2tf models cannot be saved as they are: an op converter creates a TF resource
(a variable) inside a Lambda layer that Keras does not track, and tf.saved_model.save
refuses ("references an 'untracked' resource"; MobileNetV3 from tf2onnx does it). Those
are saved frozen: the serving function with every variable folded into a constant, so the
SavedModel holds no resources at all. The arithmetic is the same; verification judges.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mobilec.errors import ConversionError, first_line
from mobilec.util.tfenv import import_tf


def write_saved_model(keras_model: Any, dest: Path, input_names: list[str], order: list[int],
                      output_names: list[str], perms: list[tuple[int, ...] | None],
                      hook: Callable[[list[Any]], list[Any]] | None = None) -> None:
    """`order[i]`: which of the Keras model's inputs ONNX input i is; `perms`: per output,
    the transpose back to the ONNX layout; `hook`: a test hook mapping the outputs."""
    tf = import_tf()
    tf_inputs = list(keras_model.inputs)
    specs = [tf.TensorSpec(tf_inputs[k].shape, tf_inputs[k].dtype, name=signature_name(n))
             for n, k in zip(input_names, order, strict=True)]
    keys = unique_names([signature_name(n) for n in output_names])

    def outputs(xs: tuple[Any, ...]) -> dict[str, Any]:
        feed = [None] * len(xs)
        for x, k in zip(xs, order, strict=True):
            feed[k] = x
        ys = keras_model(feed[0] if len(feed) == 1 else feed, training=False)
        ys = list(ys) if isinstance(ys, (list, tuple)) else [ys]
        ys = [tf.transpose(y, p) if p else y for y, p in zip(ys, perms, strict=True)]
        if hook is not None:
            ys = hook(ys)
        return {k: tf.identity(y, name=k) for k, y in zip(keys, ys, strict=True)}

    serve = tf.function(lambda *xs: outputs(xs), input_signature=specs)
    module = tf.Module()
    module.model = keras_model
    module.serve = serve
    try:
        tf.saved_model.save(module, str(dest), signatures={"serving_default": serve})
        return
    except Exception as exc:  # noqa: BLE001 - TF raises many types while tracing/saving
        if "untracked" not in str(exc):
            raise _save_error(exc) from exc
    try:
        save_frozen(serve, dest, specs)
    except Exception as exc:  # noqa: BLE001
        raise _save_error(exc, " (also frozen)") from exc


def save_frozen(serve: Any, dest: Path, specs: list[Any]) -> None:
    """The serving function with its variables as constants, saved with no resources."""
    import shutil

    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    tf = import_tf()
    # A function with no captures: nothing of the Keras model (or its untracked resource)
    # is reachable from the saved module.
    frozen = convert_variables_to_constants_v2(serve.get_concrete_function())
    module = tf.Module()
    module.serve = tf.function(lambda *xs: frozen(*xs), input_signature=specs)
    shutil.rmtree(dest, ignore_errors=True)
    tf.saved_model.save(module, str(dest), signatures={"serving_default": module.serve})


def _save_error(exc: BaseException, how: str = "") -> ConversionError:
    return ConversionError(f"could not save onnx2tf's model as a SavedModel{how}: "
                           f"{type(exc).__name__}: {first_line(str(exc), 400)}")


def signature_name(name: str) -> str:
    """A SavedModel/TFLite-safe signature key; ONNX names like 'output:0' or '/x/y' are not."""
    clean = re.sub(r"[^A-Za-z0-9_]", "_", name).strip("_")
    return clean if clean and clean[0].isalpha() else f"t_{clean}"


def unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}_{seen[n]}")
    return out
