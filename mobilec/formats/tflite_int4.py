"""4-bit weight quantization of a .tflite with ai-edge-quantizer.

The TFLite converter has no int4 mode; ai-edge-quantizer rewrites the float32
.tflite instead. Its `weight_only_wi4_afp32` recipe stores channel-wise int4
weights that LiteRT dequantizes before float compute: the smallest file, with
activations (and so accuracy) kept in float.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from mobilec.errors import ConversionError, UnsupportedError
from mobilec.formats.tflite_convert import convert_tflite
from mobilec.state import Artifact, ModelState

RECIPE = "weight_only_wi4_afp32"


def float32_tflite(state: ModelState, route: str | None = None) -> bytes:
    """The float32 .tflite of the current model, converted once per model version and route."""
    key = ("tflite_float32_bytes", state.model_version, route)
    if key not in state.memo:
        state.memo[key] = convert_tflite(state, "float32", route)
    return state.memo[key]


def build_int4(state: ModelState, artifact: Artifact, dest: Path, route: str | None = None
               ) -> None:
    dest.write_bytes(quantize_int4(float32_tflite(state, route)))
    artifact.quantizer = f"ai-edge-quantizer {RECIPE}"


def quantize_int4(float_model: bytes) -> bytes:
    try:
        from ai_edge_quantizer import quantizer, recipe
    except ImportError as exc:
        raise UnsupportedError(f"int4 .tflite needs ai-edge-quantizer, which does not import "
                               f"here ({exc})", hint="pip install ai-edge-quantizer==0.10.0, or "
                               "use quantize mode int8 or dynamic") from None
    try:
        # The quantizer prints a size summary on stdout; keep stdout for --json output.
        with contextlib.redirect_stdout(sys.stderr):
            q = quantizer.Quantizer(bytearray(float_model), getattr(recipe, RECIPE)())
            result = q.quantize()
    except Exception as exc:  # noqa: BLE001 - the quantizer raises many types
        text = str(exc).strip().splitlines()
        raise ConversionError(f"ai-edge-quantizer ({RECIPE}) failed: "
                              f"{(text[0] if text else type(exc).__name__)[:300]}") from exc
    if not result.quantized_model:
        raise ConversionError(f"ai-edge-quantizer ({RECIPE}) produced no model")
    return bytes(result.quantized_model)
