"""The quantization-mode table: one row per mode, read by the recipe schema, the plan
check, the artifact planner, `auto` and every format. Adding a mode is one row here plus
a branch in each format that implements it (ARCHITECTURE.md).

Pure data; no heavy imports (`mobilec validate` and `mobilec schema` read it).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Mode:
    name: str
    description: str
    #: format -> the mode that format applies for this plan (.onnx and Core ML keep float
    #: I/O, so int8-io is their int8); a format missing here cannot apply the mode.
    formats: dict[str, str] = field(default_factory=dict)
    calibrates: bool = False  # needs calibration data (activation ranges)
    trains: bool = False  # fine-tunes the model (needs data.train and a trainable source)
    searchable: bool = False  # `quantize: auto` may try it as a candidate
    int8_activations: bool = False  # full-integer: keep_float and equalization apply
    recipe: bool = True  # a value of quantize.mode (float32 is the baseline, not a mode)

    @property
    def quantized(self) -> bool:
        """Weights or activations lose precision: the default quality floor applies."""
        return self.name not in ("float32", "float16")


_ALL_FLOAT = {"tflite": "", "onnx": "", "coreml": "", "executorch": "", "coreai": ""}


def _same(*formats: str) -> dict[str, str]:
    return {f: "" for f in formats}


_ROWS = [
    Mode("float32", "no quantization: the baseline every size ratio is measured against",
         _ALL_FLOAT, recipe=False),
    Mode("dynamic", "int8 weights, float activations (dynamic range; ExecuTorch: int8 "
         "activations quantized at run time; Core AI: int8 weights per channel)",
         _same("tflite", "onnx", "coreml", "executorch", "coreai"), searchable=True),
    Mode("float16", "float16 weights (Core AI: float16 weights, compute and I/O)",
         _same("tflite", "onnx", "coreml", "executorch", "coreai"), searchable=True),
    Mode("int8", "full integer: int8 weights and activations, float I/O",
         _same("tflite", "onnx", "coreml", "executorch"), calibrates=True, searchable=True,
         int8_activations=True),
    Mode("int8-io", "full integer with integer I/O (scale and zero point in the report)",
         {"tflite": "", "onnx": "int8", "coreml": "int8"}, calibrates=True, searchable=True,
         int8_activations=True),
    Mode("int16x8", "int8 weights, int16 activations (TFLite)", _same("tflite"),
         calibrates=True, searchable=True),
    Mode("int4", "4-bit weights (ai-edge-quantizer; Core ML and Core AI blockwise; ExecuTorch "
         "8da4w: int4 Linear weights, int8 dynamic activations)",
         _same("tflite", "coreml", "executorch", "coreai"), searchable=True),
    Mode("palettize", "k-means weight palettes (Core ML; Core AI via coreai-opt)",
         _same("coreml", "coreai")),
    Mode("qat", "quantization-aware fine-tuning, then int8",
         {"tflite": "", "onnx": "", "coreml": "int8", "executorch": ""},
         calibrates=True, trains=True, int8_activations=True),
]

MODES: dict[str, Mode] = {m.name: m for m in _ROWS}
#: what quantize.mode accepts: every recipe row, plus auto (a search over searchable rows)
RECIPE_MODES: tuple[str, ...] = (*(m.name for m in _ROWS if m.recipe), "auto")
SEARCHABLE: tuple[str, ...] = tuple(m.name for m in _ROWS if m.searchable)
INT8_MODES: tuple[str, ...] = tuple(m.name for m in _ROWS if m.int8_activations and not m.trains)
CALIBRATING: tuple[str, ...] = tuple(m.name for m in _ROWS if m.calibrates and not m.trains)


def mode_for_format(mode: str, fmt: str) -> str | None:
    """The mode a format applies for a plan mode, or None when it cannot."""
    row = MODES.get(mode)
    if row is None or fmt not in row.formats:
        return None
    return row.formats[fmt] or mode


def format_modes(fmt: str) -> frozenset[str]:
    """Every mode a format can build (float32 included)."""
    return frozenset(m.name for m in _ROWS if fmt in m.formats)


def is_quantized(mode: str) -> bool:
    row = MODES.get(mode)
    return row.quantized if row is not None else True
