"""ONNX models in: read safely, check, fix dynamic dims, describe; never touch the user's file.

Everything downstream works on a copy in the work dir: onnxruntime (reference
outputs, the .onnx artifacts) and onnx2tf (mobilec.sources.onnx2tf_bridge, for .tflite
and Core ML). No TensorFlow here: `mobilec inspect model.onnx` stays fast.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

from mobilec.errors import ModelLoadError, first_line
from mobilec.sources.input_shapes import (
    batch_axes,
    data_axes,
    data_shapes,
    recipe_shapes,
    resolve_dims,
)
from mobilec.state import ModelState, TensorSpec

#: where the working copy lives inside state.work_dir
COPY_NAME = "source.onnx"
#: ONNX tensor element types mobilec can feed (its data is float32)
FLOAT_TYPES = {1: "float32", 10: "float16", 11: "float64"}
#: a channel dimension at most this big marks a layout as channels-first/-last
SMALL_CHANNELS = 4
# Past this a single protobuf file cannot hold the model; keep weights external.
PROTOBUF_LIMIT = 2**31 - 1


# ----------------------------------------------------------------------------- reading


def read_model(path: Path) -> Any:
    """Load an .onnx with its external data, refusing data files outside the model's folder."""
    import onnx
    from onnx.external_data_helper import load_external_data_for_model

    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError and friends
        raise ModelLoadError(f"not a readable ONNX model: {first_line(exc)}", where=str(path),
                             hint="the file may be truncated; export it again") from None
    if not model.HasField("graph") or not model.graph.node:
        raise ModelLoadError("ONNX file holds no graph (no nodes)", where=str(path),
                             hint="export the whole model, e.g. torch.onnx.export(...)")
    external = check_external_data(model, path)
    if external:
        try:
            load_external_data_for_model(model, str(path.resolve().parent))
        except Exception as exc:  # noqa: BLE001 - onnx raises many types for bad data files
            raise ModelLoadError(f"cannot read the model's external data: {first_line(exc)}",
                                 where=str(path)) from None
    return model


def check_external_data(model: Any, path: Path) -> list[Path]:
    """Every external-data file the model names, each proven to lie inside the model's folder.

    A model file is data; it must not make mobilec read /etc/passwd or a sibling
    project's files. Absolute locations, `..` and symlinks leading out are refused.
    """
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    base = Path(path).resolve().parent
    found: list[Path] = []
    for tensor in _get_all_tensors(model):
        if not uses_external_data(tensor):
            continue
        try:
            location = ExternalDataInfo(tensor).location
        except ValueError as exc:
            raise ModelLoadError(f"tensor '{tensor.name}' has invalid external data: {exc}",
                                 where=str(path)) from None
        if not location or os.path.isabs(location) or Path(location).drive:
            raise ModelLoadError(
                f"tensor '{tensor.name}' points at external data '{location}', an absolute path; "
                "refusing to read files outside the model's folder", where=str(path),
                hint="keep the weights file next to the .onnx (onnx.save(..., location='w.bin'))")
        target = (base / location).resolve()
        if not target.is_relative_to(base):
            raise ModelLoadError(
                f"tensor '{tensor.name}' points at external data '{location}', outside the model's "
                "folder; refusing to read it", where=str(path),
                hint="keep the weights file next to the .onnx (onnx.save(..., location='w.bin'))")
        if not target.is_file():
            raise ModelLoadError(f"external data file '{location}' of tensor '{tensor.name}' is "
                                 "missing", where=str(path),
                                 hint="copy the weights file that came with the .onnx next to it")
        if target not in found:
            found.append(target)
    return found


def check_model(model: Any, path: Path) -> None:
    import onnx

    try:
        if model.ByteSize() < PROTOBUF_LIMIT:
            onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ModelLoadError(f"ONNX checker rejected the model: {first_line(exc)}", where=str(path),
                             hint="re-export the model; `python -m onnx.checker` shows the same") from None


# ----------------------------------------------------------------------------- describing


def opsets(model: Any) -> dict[str, int]:
    return {(o.domain or "ai.onnx"): int(o.version) for o in model.opset_import}


def graph_inputs(model: Any) -> list[Any]:
    """Real inputs: old exporters also list the initializers among the graph inputs."""
    inits = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in inits]


def dims_of(value: Any) -> list[int | str | None]:
    """Static dims as ints, symbolic ones by name, unknown ones as None."""
    tt = value.type.tensor_type
    if not tt.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else
            (d.dim_param or None) for d in tt.shape.dim]


def dtype_of(value: Any) -> str:
    import onnx

    elem = value.type.tensor_type.elem_type
    if not elem:
        return "unknown"
    return FLOAT_TYPES.get(elem) or onnx.helper.tensor_dtype_to_np_dtype(elem).name


def op_histogram(model: Any) -> dict[str, int]:
    """Op types (domain-qualified outside the default domain), most used first; subgraphs included."""
    counts: Counter[str] = Counter()

    def walk(graph: Any) -> None:
        for node in graph.node:
            domain = node.domain if node.domain not in ("", "ai.onnx") else ""
            counts[f"{domain}::{node.op_type}" if domain else node.op_type] += 1
            for attr in node.attribute:
                if attr.HasField("g"):
                    walk(attr.g)
                for g in attr.graphs:
                    walk(g)

    walk(model.graph)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def count_params(model: Any) -> int:
    """Elements in the initializers (the weights); constants built by nodes are not counted."""
    total = 0
    for t in model.graph.initializer:
        n = 1
        for d in t.dims:
            n *= int(d)
        total += n
    return total


def guess_layout(shape: list[int | None]) -> str:
    """The input's layout, from its shape: ONNX models are channels-first unless the shape says not.

    'NHWC' only when the last dim is a small channel count and dim 1 is not
    (a tf2onnx export of a Keras model); ties go to the ONNX convention.
    """
    rank = len(shape)
    if rank == 2:
        return "NC"
    if rank not in (3, 4, 5):
        return "ND"
    first, last = shape[1], shape[-1]
    small = lambda d: d is not None and d <= SMALL_CHANNELS  # noqa: E731
    if rank == 3:
        # (N, C, L) from PyTorch Conv1d vs (N, T, F) sequences: fewer channels than steps.
        if first is not None and last is not None and first > last:
            return "NWC"
        return "NCW"
    channels_last = small(last) and not small(first)
    names = {4: ("NCHW", "NHWC"), 5: ("NCDHW", "NDHWC")}[rank]
    return names[1] if channels_last else names[0]


def inspect_onnx(path: Path) -> dict[str, Any]:
    """What `mobilec inspect model.onnx` shows: I/O, opset, op histogram, params, size."""
    model = read_model(Path(path))
    ins = graph_inputs(model)
    info: dict[str, Any] = {
        "producer": " ".join(p for p in (model.producer_name, model.producer_version) if p) or None,
        "ir_version": int(model.ir_version),
        "opset": opsets(model),
        "inputs": [_tensor(v) for v in ins],
        "outputs": [_tensor(v) for v in model.graph.output],
        "params": count_params(model),
        "nodes": sum(op_histogram(model).values()),
        "ops": op_histogram(model),
    }
    if len(ins) == 1:
        info["input_layout"] = guess_layout(_numeric(dims_of(ins[0])))
    external = check_external_data(model, Path(path))
    if external:
        info["external_data_bytes"] = sum(p.stat().st_size for p in external)
    return info


# ----------------------------------------------------------------------------- loading


def load_onnx(state: ModelState, path: Path) -> int:
    """Check the model, fix its dynamic dims, and point the state at a working copy of it.
    Returns the parameter count."""
    import onnx

    path = Path(path)
    model = read_model(path)
    check_model(model, path)
    ins = graph_inputs(model)
    if not ins:
        raise ModelLoadError("the model has no inputs", where=str(path))
    # Every dim but the batch made static: from the recipe (model.inputs / input_shape),
    # else from the data; the working copy gets them, the user's file is never touched.
    names = [v.name for v in ins]
    wants = recipe_shapes(state.recipe, names)
    # A rank-0 input (a sample rate) takes one value for the whole batch; an input whose
    # first dim is static takes its samples on the dim named like the others' batch.
    dims = {v.name: None if _is_scalar(v) else dims_of(v) for v in ins}
    axes = data_axes(state.recipe, dims, batch_axes(dims))
    seen = data_shapes(state.recipe, names, axes)
    specs = []
    for v in ins:
        axis = axes[v.name]
        if axis is None:
            specs.append(TensorSpec(v.name, [], dtype_of(v), batch_axis=None))
            state.note(f"input '{v.name}' is a scalar (rank 0): every sample of a batch gets "
                       "one value (the data's, which must be the same for all samples)")
            continue
        fixed, notes, opened = resolve_dims(state.recipe, v.name, dims_of(v), wants.get(v.name),
                                            seen.get(v.name, []), str(path), single=len(ins) == 1,
                                            axis=axis)
        if opened:
            state.open_dims[v.name] = opened
        _write_dims(v, fixed)
        specs.append(TensorSpec(v.name, fixed, dtype_of(v), batch_axis=axis))
        if axis:
            given = (dims[v.name] or [None] * (axis + 1))[axis]  # as the model names it
            named = f"'{given}'" if given else "the dim the data's sample count is on"
            state.note(f"input '{v.name}' takes its batch on dim {axis} ({named}): the data's "
                       "samples go along that dim")
        for note in notes:
            state.note(note)
    shape = next((t.shape for t in specs if t.batch_axis == 0), specs[0].shape)
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as exc:  # noqa: BLE001 - inference is a help, not a requirement
        state.note(f"ONNX shape inference failed ({first_line(exc)}); output shapes may be unknown")
    copy = state.work_dir / COPY_NAME
    save_model(model, copy)
    state.onnx_path = copy
    state.inputs = specs
    batch = next((dims_of(v)[a] for v in ins if (a := axes[v.name]) is not None
                  and isinstance(dims_of(v)[a], str)), None)
    state.outputs = [TensorSpec(v.name, [d if isinstance(d, int) else None for d in dims_of(v)],
                                dtype_of(v), batch_axis=_output_axis(dims_of(v), batch))
                     for v in model.graph.output]
    state.input_layout = guess_layout(shape)
    params = count_params(model)
    if state.source is not None:
        state.source.params = params
    return params


def _is_scalar(v: Any) -> bool:
    return v.type.tensor_type.HasField("shape") and not v.type.tensor_type.shape.dim


def _output_axis(dims: list[int | str | None], batch: str | None) -> int:
    """An output's batch dim: the first, unless it is static and a later one is the inputs'
    batch by name (`stateN` [2, batch, 128])."""
    if dims and isinstance(dims[0], int) and batch is not None and batch in dims:
        return dims.index(batch)
    return 0


def _tensor(v: Any) -> dict[str, Any]:
    """{name, shape, dtype}: a symbolic dim keeps its name, an unnamed one is null."""
    return {"name": v.name, "shape": [d if isinstance(d, int) else (d or None) for d in dims_of(v)],
            "dtype": dtype_of(v)}


def _write_dims(inp: Any, fixed: list[int | None]) -> None:
    shape = inp.type.tensor_type.shape
    while len(shape.dim) < len(fixed):
        shape.dim.add()
    for dim, value in zip(shape.dim, fixed, strict=True):
        if value is None:
            if not dim.dim_param:
                dim.dim_param = "batch"
        else:
            dim.Clear()
            dim.dim_value = value


def reopened(state: ModelState, path: Path) -> Path:
    """`path` (the current model) with the input dims that only the data fixed made dynamic
    again, as the user's model had them: an .onnx artifact keeps its dynamic dims unless the
    recipe fixes them. Inferred inner shapes are dropped (they hold the data's sizes)."""
    if not state.open_dims:
        return path
    key = ("onnx_reopened", str(path))
    if key not in state.memo:
        model = read_model(path)
        for v in graph_inputs(model):
            for i, name in state.open_dims.get(v.name, {}).items():
                dim = v.type.tensor_type.shape.dim[i]
                dim.Clear()
                dim.dim_param = name
        del model.graph.value_info[:]
        dest = state.work_dir / f"reopened-v{state.model_version}-{Path(path).name}"
        save_model(model, dest)
        state.memo[key] = dest
    return state.memo[key]


def save_model(model: Any, dest: Path) -> None:
    """One self-contained file; weights beside it only when protobuf cannot hold them."""
    import onnx

    dest.parent.mkdir(parents=True, exist_ok=True)
    if model.ByteSize() < PROTOBUF_LIMIT:
        onnx.save(model, str(dest))
    else:
        onnx.save(model, str(dest), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=dest.name + ".data")


# ----------------------------------------------------------------------------- helpers


def _numeric(dims: list[int | str | None]) -> list[int | None]:
    return [d if isinstance(d, int) else None for d in dims]
