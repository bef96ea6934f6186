"""Model format detection from content (not only the suffix). No heavy imports."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from mobilec.errors import ModelLoadError

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
TFLITE_IDENT = b"TFL3"


def detect_format(path: Path, declared: str = "auto") -> str:
    """Return one of keras | h5 | savedmodel | onnx | tflite, or raise ModelLoadError."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError("model not found", where=str(path),
                             hint="check model.path in the recipe (relative paths resolve against "
                                  "the recipe file's folder)")
    found = _sniff(path)
    if declared != "auto" and found != declared:
        raise ModelLoadError(
            f"model.format says '{declared}' but the file's content is {found or 'not a known model format'}",
            where=str(path), hint="set model.format: auto, or point at the right file")
    if found is None:
        raise ModelLoadError(_unknown_message(path), where=str(path),
                             hint="mobilec reads Keras 3 .keras, tf_keras/Keras 2 .h5, "
                                  "SavedModel directories and .onnx")
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
        except zipfile.BadZipFile:
            return None
        if "config.json" in names and ("model.weights.h5" in names or "metadata.json" in names):
            return "keras"
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
    return f"unrecognised model file ({size} bytes)"


def keras_archive_config(path: Path) -> dict:
    """The model config inside a .keras archive, read without TensorFlow."""
    try:
        with zipfile.ZipFile(path) as zf:
            return json.loads(zf.read("config.json"))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"corrupt .keras archive: {exc}", where=str(path),
                             hint="re-save the model with model.save('model.keras')") from None


def find_lambda_layers(config: object) -> list[str]:
    """Names of Lambda layers anywhere in a Keras config (they carry arbitrary code)."""
    found: list[str] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if node.get("class_name") in ("Lambda", "TFOpLambda") and node.get("class_name") == "Lambda":
                cfg = node.get("config") or {}
                found.append(str(cfg.get("name", "?")))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(config)
    return found
