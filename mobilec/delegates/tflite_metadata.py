"""The delegate hint inside a .tflite: a flatbuffer metadata entry named `mobilec.delegate`,
so an app can read which delegate and options to use from the model it ships."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

METADATA_NAME = "mobilec.delegate"


def tflite_hint(manifest: dict[str, Any]) -> dict[str, Any]:
    """The part of the manifest an app needs at load time (kept small: it ships in the model)."""
    compat = manifest.get("op_compatibility") or {}
    return {"mobilec_manifest": manifest["mobilec_manifest"], "target": manifest["target"],
            "delegate": manifest["delegate"], "fallback": manifest["fallback"],
            "options": manifest["options"], "quantization": manifest["quantization"],
            "op_compat": {k: compat.get(k) for k in ("supported", "total", "unsupported")},
            "warnings": [w for w in manifest["warnings"] if len(w) < 300][:4]}


def embed_tflite_hint(src: Path, dest: Path, hint: dict[str, Any]) -> None:
    """Write `src` to `dest` with a `mobilec.delegate` metadata entry (JSON) added."""
    import numpy as np
    from ai_edge_litert import schema_py_generated as fb
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(Path(src).read_bytes()))
    name = METADATA_NAME.encode()
    model.metadata = [m for m in (model.metadata or []) if _as_bytes(m.name) != name]
    buffer = fb.BufferT()
    buffer.data = np.frombuffer(json.dumps(hint, sort_keys=True).encode(), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = fb.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata.append(entry)
    data = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    Interpreter(model_content=data).allocate_tensors()  # still a model LiteRT loads
    if read_tflite_hint(data) != json.loads(json.dumps(hint, sort_keys=True)):
        raise ValueError("the metadata entry did not read back")
    Path(dest).write_bytes(data)


def read_tflite_hint(model: Path | bytes) -> dict[str, Any] | None:
    """The `mobilec.delegate` metadata entry of a .tflite, or None."""
    from ai_edge_litert import schema_py_generated as fb

    buf = model if isinstance(model, (bytes, bytearray)) else Path(model).read_bytes()
    root = fb.Model.GetRootAs(buf, 0)
    for i in range(root.MetadataLength()):
        entry = root.Metadata(i)
        if _as_bytes(entry.Name()) != METADATA_NAME.encode():
            continue
        b = root.Buffers(entry.Buffer())
        raw = bytes(buf[b.Offset(): b.Offset() + b.Size()]) if b.Offset() > 1 else \
            b.DataAsNumpy().tobytes()
        return json.loads(raw.decode())
    return None


def _as_bytes(value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value or b"")
