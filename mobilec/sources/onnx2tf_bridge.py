"""ONNX -> TensorFlow SavedModel through onnx2tf, so the TFLite converter and Core ML take ONNX.

Runs lazily (only when a TensorFlow-based format asks) and once per ModelState:

- on a temporary copy: onnx2tf and its op renamer rewrite their input file in place;
- simplified with onnxsim in process (onnx2tf would spawn the onnxsim CLI three times);
- offline: onnx2tf fetches sample images from GitHub for 3-channel image inputs; mobilec
  hands it local synthetic data instead and refuses socket connections meanwhile;
- never onnx2tf's own quantization: every plan goes through the TFLite converter with
  the recipe's data (mobilec.formats.tflite).

The SavedModel it writes takes the TensorFlow layout (onnx2tf turns NCHW into NHWC)
and returns the ONNX model's outputs by name, in the ONNX model's order and layout;
the input permutation is recorded so each artifact's runner transposes the recipe's
data. Whether the result really matches is decided by convert's verification
against onnxruntime, never assumed here.
"""

from __future__ import annotations

import contextlib
import io
import re
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mobilec.errors import ConversionError, UnsupportedError, first_line
from mobilec.sources.batch import match_names
from mobilec.sources.input_shapes import require_batch_first
from mobilec.sources.onnx2tf_rewrite import conv2d_as_conv1d, prepare
from mobilec.sources.onnx2tf_saved import signature_name, write_saved_model  # noqa: F401 - re-exported (formats.coreml)
from mobilec.sources.onnx_input import graph_inputs
from mobilec.state import ModelState
from mobilec.util.tfenv import import_tf

# Test hooks (None in normal runs): `before_onnx2tf(path)` gets the copy onnx2tf will read;
# `after_onnx2tf(outputs)` maps the TF outputs before the SavedModel is written.
# tests/test_onnx.py uses them to break a conversion and prove verification catches it.
before_onnx2tf: Callable[[Path], None] | None = None
after_onnx2tf: Callable[[list[Any]], list[Any]] | None = None

CHANNELS_FIRST = {"NCW": "NWC", "NCHW": "NHWC", "NCDHW": "NDHWC"}
SAMPLE_IMAGES_SHAPE = (20, 128, 128, 3)  # what onnx2tf's download would have returned
ERROR_CACHE = "onnx2tf_error"
LOOP_OPS = {"Loop", "Scan"}  # control flow onnx2tf fails on (the shape of a GRU from tf2onnx)


@dataclass
class TFGraph:
    saved_model: Path
    input_layout: str
    input_transpose: tuple[int, ...] | None  # recipe (ONNX-layout) data -> SavedModel input
    output_transposes: list[tuple[int, ...] | None]  # applied inside the graph, TF -> ONNX
    seconds: float = 0.0


def ensure_graph(state: ModelState, onnx_path: Path | None = None) -> Path:
    """The SavedModel for an ONNX input (or `onnx_path`, a PyTorch source's export),
    converted on first use; raises ConversionError if onnx2tf cannot do it (remembered:
    every TF-based artifact gets the same answer at once)."""
    if state.graph_dir is not None:
        return state.graph_dir
    onnx_path = onnx_path or state.onnx_path
    if onnx_path is None:
        raise UnsupportedError("no TensorFlow form of the model is available")
    if ERROR_CACHE in state.memo:
        raise state.memo[ERROR_CACHE]
    try:
        graph = convert(state, onnx_path)
    except ConversionError as exc:
        state.memo[ERROR_CACHE] = exc
        raise
    state.graph_dir = graph.saved_model
    state.tf_bridge = graph
    state.note(f"TensorFlow formats were converted from ONNX by onnx2tf ({graph.seconds:.1f} s); "
               f"their input layout is {graph.input_layout}"
               + (f" (the recipe's data is transposed {list(graph.input_transpose)})"
                  if graph.input_transpose else ""))
    return graph.saved_model


def tf_input_layout(state: ModelState) -> tuple[str, tuple[int, ...] | None]:
    """(layout, transpose) of the TensorFlow form's input: what a TFLite/Core ML artifact
    built from it expects, and the permutation that takes the recipe's data there."""
    graph = state.tf_bridge
    if isinstance(graph, TFGraph):
        return graph.input_layout, graph.input_transpose
    return state.input_layout, None


def to_tf_layout(state: ModelState, x: np.ndarray) -> np.ndarray:
    """Recipe data (model layout) -> the TensorFlow form's layout (e.g. for calibration)."""
    _, perm = tf_input_layout(state)
    return np.transpose(x, perm) if perm and x.ndim == len(perm) else x


# ----------------------------------------------------------------------------- conversion


def convert(state: ModelState, onnx_path: Path | None = None) -> TFGraph:
    """The model as exported, with `prepare`'s exact rewrites; if onnx2tf fails, again with
    the patterns it mishandles rewritten (onnx2tf_rewrite). Verified downstream."""
    import time

    import onnx

    require_batch_first(state.inputs, "onnx2tf")  # rank 0 becomes rank 1, NCW becomes NWC
    start = time.perf_counter()
    work = state.work_dir / "onnx2tf"
    work.mkdir(parents=True, exist_ok=True)
    model = simplify(state, static_batch(onnx.load(str(onnx_path or state.onnx_path))))
    prepare(model)
    check_ops(model)
    try:
        graph = attempt(state, model, work)
    except ConversionError as first:
        rewritten = onnx.ModelProto()
        rewritten.CopyFrom(model)
        count = conv2d_as_conv1d(rewritten)
        if not count:
            raise
        try:
            graph = attempt(state, onnx.shape_inference.infer_shapes(rewritten), work)
        except ConversionError as second:
            raise ConversionError(
                f"{first.message}; retried with {count} height-1 Conv(s) written as 1-D Conv: "
                f"{second.message}", hint=first.hint) from None
        state.note(f"onnx2tf failed on the model as exported ({first.message}); it converted "
                   f"after mobilec wrote {count} 2-D Conv(s) over height-1 inputs (tf2onnx's "
                   "Conv1D pattern) as 1-D Convs")
    graph.seconds = round(time.perf_counter() - start, 2)
    return graph


def attempt(state: ModelState, model: Any, work: Path) -> TFGraph:
    """One onnx2tf conversion of `model` into work/saved_model."""
    import shutil

    import onnx

    for old in (work / "raw", work / "saved_model"):
        shutil.rmtree(old, ignore_errors=True)
    copy = work / "model.onnx"
    onnx.save(model, str(copy))  # onnx2tf's own input; state.onnx_path stays untouched
    if before_onnx2tf is not None:
        before_onnx2tf(copy)
    layout = state.input_layout
    perm = None if layout not in CHANNELS_FIRST else (0, *range(2, len(state.inputs[0].shape)), 1)
    keep = kept_inputs(state, perm)
    op_types = {n.name: n.op_type for n in model.graph.node if n.name}
    keras_model = run_onnx2tf(copy, work / "raw", keep=keep,
                              verbose=bool(state.options.get("verbose")), op_types=op_types)
    order = _check_inputs(keras_model, state, perm, keep)
    out_perms = output_transposes(keras_model, state)
    saved = work / "saved_model"
    write_saved_model(keras_model, saved, [t.name for t in state.inputs], order,
                      [o.name for o in state.outputs], out_perms, hook=after_onnx2tf)
    return TFGraph(saved_model=saved, input_layout=CHANNELS_FIRST.get(layout, layout),
                   input_transpose=perm, output_transposes=out_perms)


def kept_inputs(state: ModelState, perm: tuple[int, ...] | None) -> list[str]:
    """Inputs onnx2tf must take exactly as ONNX has them: all of them when the first input is
    not channels-first; else those of another rank than the first (the one recorded `perm`
    applies to every input of its rank: the artifacts' runners transpose exactly those)."""
    return [t.name for t in state.inputs if perm is None or len(t.shape) != len(perm)]


def static_batch(model: Any) -> Any:
    """Fix a dynamic batch dim to 1 (the mobile batch): with every dim static, onnxsim folds the
    shape arithmetic exporters emit, and onnx2tf no longer misplaces the batch axis (it broke
    tf2onnx's Conv1D and Flatten patterns with a dynamic batch). Outputs whose first dim was
    symbolic get unknown dims; shape inference fills them in."""

    dim = graph_inputs(model)[0].type.tensor_type.shape.dim[0]
    if dim.HasField("dim_value") and dim.dim_value > 0:
        return model
    dim.Clear()
    dim.dim_value = 1
    for out in model.graph.output:
        shape = out.type.tensor_type.shape
        if shape.dim and not (shape.dim[0].HasField("dim_value") and shape.dim[0].dim_value > 0):
            for d in shape.dim:
                d.Clear()
    del model.graph.value_info[:]  # stale symbolic shapes; onnxsim infers them again
    return model


def simplify(state: ModelState, model: Any) -> Any:
    """onnxsim, in process; a model it cannot simplify converts as it is."""
    try:
        from onnxsim import simplify as onnxsim_simplify

        with _quiet(bool(state.options.get("verbose"))):
            simplified, ok = onnxsim_simplify(model)
    except Exception as exc:  # noqa: BLE001 - onnxsim fails on exotic graphs; not fatal
        state.note(f"onnxsim could not simplify the model ({_first_line(exc)}); "
                   "onnx2tf converts it unsimplified")
        return model
    if not ok:
        state.note("onnxsim's check of the simplified model failed; onnx2tf converts it unsimplified")
        return model
    return simplified


def onnx2tf_ops() -> set[str]:
    """Op types onnx2tf implements: it dispatches on `onnx2tf.ops.<OpType>` modules."""
    import onnx2tf.ops as ops_pkg

    return {p.stem for p in Path(ops_pkg.__file__).parent.glob("[A-Z]*.py")}


def check_ops(model: Any) -> None:
    """Name the ops onnx2tf has no converter for, before it fails somewhere inside."""
    known = onnx2tf_ops()
    missing: dict[str, list[str]] = {}
    for node in model.graph.node:
        if node.op_type not in known:
            qual = f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") \
                else node.op_type
            missing.setdefault(qual, []).append(node.name or "?")
    if missing:
        listed = "; ".join(f"{op} (node {', '.join(repr(n) for n in names[:3])})"
                           for op, names in missing.items())
        raise ConversionError(
            f"onnx2tf cannot convert op {listed}: no onnx2tf converter for it, so no "
            "TensorFlow form (.tflite, Core ML) of this model; the .onnx artifacts do not need one",
            hint="replace the op with standard ONNX ops when exporting (e.g. an exporter option "
                 "that disables fused/contrib ops), or ship the .onnx artifact")


def run_onnx2tf(copy: Path, out: Path, keep: list[str], verbose: bool,
                op_types: dict[str, str] | None = None) -> Any:
    """onnx2tf.convert on the copy, offline and quiet; returns its tf_keras model.

    disable_model_save: mobilec writes its own SavedModel (with ONNX output names and layout)
    and skips onnx2tf's own float32/float16 .tflite, which it would throw away.
    """

    import_tf()  # TF_USE_LEGACY_KERAS before onnx2tf imports tf_keras
    import onnx2tf

    log = io.StringIO()
    try:
        with offline(), _quiet(verbose, log):
            model = onnx2tf.convert(
                input_onnx_file_path=str(copy), output_folder_path=str(out),
                not_use_onnxsim=True, disable_model_save=True, non_verbose=not verbose,
                verbosity="info" if verbose else "error",
                keep_shape_absolutely_input_names=keep or None,
                # TFLite has no Erf builtin; onnx2tf's pseudo-Erf is plain ops (|error| < 1.5e-7)
                replace_to_pseudo_operators=["erf"] if "Erf" in (op_types or {}).values()
                else None)
    except SystemExit as exc:  # onnx2tf calls sys.exit(1) after printing an error
        raise ConversionError(f"onnx2tf stopped: {_log_error(log) or f'exit status {exc.code}'}"
                              ) from None
    except NetworkBlocked as exc:
        raise ConversionError(f"onnx2tf tried to use the network ({exc}); mobilec runs offline"
                              ) from None
    except Exception as exc:  # noqa: BLE001 - onnx2tf raises anything from any op converter
        node = getattr(exc, "onnx_op_name", None)
        op = (op_types or {}).get(node or "")
        where = f" at {op + ' ' if op else ''}node '{node}'" if node else ""
        detail = _first_line(exc) or _log_error(log)
        if op in LOOP_OPS:
            raise ConversionError(
                f"onnx2tf cannot convert the ONNX {op} node '{node}' ({type(exc).__name__}: "
                f"{detail}): exporters write recurrent layers (GRU, LSTM, RNN) as a {op}, and "
                "onnx2tf could not convert it, so this .onnx has no TensorFlow form (.tflite, "
                "Core ML); the .onnx artifacts do not need one",
                hint="for .tflite/Core ML give mobilec the Keras model (.keras/.h5) or its "
                     "SavedModel instead of the .onnx (mobilec converts its recurrent layers "
                     "directly), or ship the .onnx artifact") from exc
        raise ConversionError(f"onnx2tf failed{where}: {type(exc).__name__}: {detail}",
                              hint="rerun with -v to see onnx2tf's log") from exc
    if model is None:
        raise ConversionError(f"onnx2tf produced no model: {_log_error(log) or 'no message'}")
    return model


def _check_inputs(keras_model: Any, state: ModelState, perm: tuple[int, ...] | None,
                  keep: list[str]) -> list[int]:
    """For each ONNX input, which TF input it is. Each must be the ONNX input, permuted as
    recorded (kept ones as they are); anything else is a layout we did not predict, and the
    data would be fed wrongly."""
    tf_inputs = list(keras_model.inputs)
    if len(tf_inputs) != len(state.inputs):
        raise ConversionError(f"onnx2tf produced {len(tf_inputs)} inputs, the ONNX model has "
                              f"{len(state.inputs)}")
    names = [t.name.split(":")[0] for t in tf_inputs]
    matched = match_names([t.name for t in state.inputs], names)
    order = [names.index(m) for m in matched] if None not in matched \
        else list(range(len(tf_inputs)))
    for spec, k in zip(state.inputs, order, strict=True):
        got = list(tf_inputs[k].shape)
        p = None if spec.name in keep else perm
        want = [spec.shape[i] for i in p] if p else list(spec.shape)
        if len(got) != len(want) or any(g is not None and w is not None and g != w
                                        for g, w in zip(got[1:], want[1:], strict=False)):
            raise ConversionError(
                f"onnx2tf produced input shape {got} for '{spec.name}', expected {want} "
                f"(ONNX {spec.shape} transposed {list(p) if p else 'none'})")
    return order


def output_transposes(keras_model: Any, state: ModelState) -> list[tuple[int, ...] | None]:
    """Per output, the permutation that takes onnx2tf's output back to the ONNX layout.

    onnx2tf marks outputs it left channels-last; the ONNX output shape confirms it
    (an output whose shape fits either way keeps onnx2tf's word; verification judges).
    """
    outs = list(keras_model.outputs)
    if len(outs) != len(state.outputs):
        raise ConversionError(f"onnx2tf produced {len(outs)} outputs, the ONNX model has "
                              f"{len(state.outputs)}")
    layouts = getattr(keras_model, "onnx_output_layouts", None) or {}
    perms: list[tuple[int, ...] | None] = []
    for tensor, spec in zip(outs, state.outputs, strict=True):
        shape = list(tensor.shape)
        rank = len(shape)
        to_first = (0, rank - 1, *range(1, rank - 1)) if rank >= 3 else None
        candidates = [to_first, None] if layouts.get(spec.name) else [None, to_first]
        perm = next((p for p in candidates if _fits(shape, p, spec.shape)), candidates[0])
        perms.append(perm)
    return perms


def _fits(shape: list[int | None], perm: tuple[int, ...] | None, want: list[int | None]) -> bool:
    got = [shape[i] for i in perm] if perm else shape
    return len(got) == len(want) and all(g is None or w is None or g == w
                                         for g, w in zip(got[1:], want[1:], strict=True))


# ----------------------------------------------------------------------------- offline + quiet


class NetworkBlocked(OSError):
    """Raised instead of opening a connection while onnx2tf runs."""


def _refuse(*args: Any, **kwargs: Any) -> Any:
    raise NetworkBlocked("network access is disabled while onnx2tf runs")


def sample_images() -> np.ndarray:
    """Stands in for onnx2tf's downloaded MS-COCO samples (it uses them only to check its own
    per-op outputs): deterministic values in [0, 1), the same shape and dtype."""
    return np.random.default_rng(0).random(SAMPLE_IMAGES_SHAPE, dtype=np.float32)


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """No network while onnx2tf runs: its sample download is replaced by local data, and any
    other attempt to connect fails loudly instead of fetching something."""
    import onnx2tf.onnx2tf as o2t_main
    import onnx2tf.utils.common_functions as o2t_common

    patches = [(o2t_main, "download_test_image_data", lambda: sample_images()),
               (o2t_common, "download_test_image_data", lambda: sample_images()),
               (socket.socket, "connect", _refuse), (socket.socket, "connect_ex", _refuse),
               (socket, "create_connection", _refuse), (socket, "getaddrinfo", _refuse)]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in patches if hasattr(obj, name)]
    try:
        for obj, name, value in patches:
            if hasattr(obj, name):
                setattr(obj, name, value)
        yield
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)


@contextlib.contextmanager
def _quiet(verbose: bool, sink: io.StringIO | None = None) -> Iterator[None]:
    """onnx2tf and onnxsim print progress on stdout; keep it (for error messages) unless -v."""
    if verbose:
        yield
        return
    sink = sink if sink is not None else io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _log_error(log: io.StringIO) -> str:
    """The last ERROR line onnx2tf printed, without colour codes."""
    lines = [_ANSI.sub("", ln).strip() for ln in log.getvalue().splitlines()]
    errors = [ln.removeprefix("ERROR:").strip() for ln in lines if ln.startswith("ERROR:")]
    return (errors[-1] if errors else "")[:400]


def _first_line(exc: BaseException) -> str:
    return first_line(_ANSI.sub("", str(exc)), 400)
