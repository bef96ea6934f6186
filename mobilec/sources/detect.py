"""Model format detection from content (not only the suffix). No heavy imports."""

from __future__ import annotations

import json
import zipfile
import zlib
from pathlib import Path
from typing import Any

from mobilec.errors import ModelLoadError
from mobilec.util.fs import check_regular

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
# Elements per input sample (1 GiB of float32): past this it is no mobile model, and
# loading or feeding it would exhaust memory before any useful error.
MAX_INPUT_ELEMENTS = 2**28
TFLITE_IDENT = b"TFL3"


def model_format(spec: Any) -> str:
    """The recipe's model kind: 'torch-module' for model.module, else detected from content."""
    if spec.module is not None:
        return "torch-module"
    return detect_format(Path(spec.path), spec.format)


def detect_format(path: Path, declared: str = "auto") -> str:
    """Return one of keras | h5 | savedmodel | onnx | pt2 | tflite, or raise ModelLoadError."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError("model not found", where=str(path),
                             hint="check model.path in the recipe (relative paths resolve against "
                                  "the recipe file's folder)")
    check_regular(path, "the model", ModelLoadError)  # a FIFO would block the sniff forever
    found = _sniff(path)
    if declared != "auto" and found != declared:
        raise ModelLoadError(
            f"model.format says '{declared}' but the file's content is {found or 'not a known model format'}",
            where=str(path), hint="set model.format: auto, or point at the right file")
    if found is None:
        raise ModelLoadError(_unknown_message(path), where=str(path),
                             hint="mobilec reads Keras 3 .keras, tf_keras/Keras 2 .h5, "
                                  "SavedModel directories, .onnx and torch.export .pt2")
    return found


def _sniff(path: Path) -> str | None:
    if path.is_dir():
        if (path / "saved_model.pb").exists() or (path / "saved_model.pbtxt").exists():
            return "savedmodel"
        return None
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise ModelLoadError(f"cannot read model: {exc.strerror}", where=str(path)) from None
    if head.startswith(HDF5_MAGIC):
        return "h5"
    if head[4:8] == TFLITE_IDENT:
        return "tflite"
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as zf:
                names = set(zf.namelist())
        except ZIP_ERRORS:
            return None
        if "config.json" in names and ("model.weights.h5" in names or "metadata.json" in names):
            return "keras"
        if any(n.endswith("/archive_format") or n == "archive_format" for n in names):
            return "pt2"  # torch.export.save: <name>/archive_format holds b"pt2"
        return None
    if path.suffix.lower() == ".onnx" or _looks_like_onnx(head):
        return "onnx" if _looks_like_onnx(head) else None
    return None


def _looks_like_onnx(head: bytes) -> bool:
    # ModelProto starts with field 1 (ir_version, varint) = 0x08, or producer_name etc.
    return len(head) > 2 and head[0] in (0x08, 0x12, 0x1A, 0x22, 0x3A, 0x42) and head[1] < 0x80


def _unknown_message(path: Path) -> str:
    if path.is_dir():
        return "directory is not a SavedModel (no saved_model.pb inside)"
    size = path.stat().st_size
    if size == 0:
        return "model file is empty (0 bytes)"
    if path.suffix.lower() == ".keras":
        return "not a Keras 3 .keras archive (expected a zip with config.json and model.weights.h5)"
    if path.suffix.lower() in (".h5", ".hdf5"):
        return "not an HDF5 file (bad signature); the file may be truncated or not a model"
    if path.suffix.lower() == ".tflite":
        return "not a TFLite flatbuffer, and a .tflite is an output of mobilec, not an input"
    return f"unrecognised model file ({size} bytes)"


# A real config.json is kilobytes; a zip entry claiming more is a decompression bomb.
MAX_CONFIG_BYTES = 64 << 20
# What a damaged or hostile zip raises besides BadZipFile (bad UTF-8 is a ValueError,
# zlib.error while inflating, RuntimeError for encrypted members, EOFError when cut short).
ZIP_ERRORS = (zipfile.BadZipFile, KeyError, ValueError, RuntimeError, NotImplementedError,
              EOFError, OSError, zlib.error)


def keras_archive_config(path: Path) -> dict:
    """The model config inside a .keras archive, read without TensorFlow."""
    try:
        with zipfile.ZipFile(path) as zf:
            if zf.getinfo("config.json").file_size > MAX_CONFIG_BYTES:
                raise ValueError(f"config.json claims more than {MAX_CONFIG_BYTES} bytes")
            return json.loads(zf.read("config.json"))
    except ZIP_ERRORS as exc:
        raise ModelLoadError(f"corrupt .keras archive: {exc}", where=str(path),
                             hint="re-save the model with model.save('model.keras')") from None


def _walk_mappings(config: object) -> list[dict]:
    """Every mapping in a nested Keras config, parents before children."""
    found: list[dict] = []
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            found.append(node)
            stack.extend(reversed(list(node.values())))
        elif isinstance(node, list):
            stack.extend(reversed(node))
    return found


def find_lambda_layers(config: object) -> list[str]:
    """Names of Lambda layers anywhere in a Keras config (they carry arbitrary code)."""
    return [str((node.get("config") or {}).get("name", "?")) for node in _walk_mappings(config)
            if node.get("class_name") == "Lambda"]


def declared_shapes(config: object) -> list[list[int | None]]:
    """Every input/build shape a Keras config declares (read before anything is built)."""
    return [shape for node in _walk_mappings(config)
            for shape in (node.get(k) for k in ("batch_shape", "batch_input_shape", "input_shape"))
            if isinstance(shape, list) and all(d is None or isinstance(d, int) for d in shape)]


def check_input_size(shape: list[int | None] | tuple, where: str) -> None:
    """Refuse a model whose (known) per-sample size is absurd, before anything allocates it."""
    total = 1
    for d in list(shape)[1:]:
        total *= d if isinstance(d, int) and d > 0 else 1
    if total > MAX_INPUT_ELEMENTS:
        dims = ["?" if d is None else d for d in shape]
        raise ModelLoadError(
            f"model declares a tensor of shape {dims} ({total:,} elements per sample, more than "
            f"{MAX_INPUT_ELEMENTS:,}); loading it would exhaust memory", where=where,
            hint="this is not a mobile-sized model; check the model file (or model.input_shape)")
