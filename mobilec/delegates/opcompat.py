"""Op compatibility: which of an artifact's ops its delegate can take, measured on the
artifact's real op list (never guessed from the model's layers).

- GPU (.tflite): TensorFlow Lite's model analyzer with `gpu_compatibility=True`, plus
  the same per-op rules mirrored here from the checker it calls
  (tensorflow/lite/tools/versioning/gpu_compatibility.cc). The mirror is needed:
  the analyzer in the TF 2.21 / LiteRT 2.3 wheels is built without that checker and
  prints "looks compatible" for every model (checked: its binary lacks the checker's
  messages, and a 2-D SLICE, rejected by the checker's source, passes).
- NNAPI (.tflite): the NNAPI delegate's documented op and dtype support per Android
  API level (table below), checked against the real op list and tensor dtypes.
- .onnx: onnxruntime's mobile usability checker (NNAPI and Core ML EP partitions);
  the CPU execution provider runs every op.
- Core ML: the converted program's own ops (coremltools only emits ops Core ML has).
- CPU (.tflite, XNNPACK): every builtin op runs on LiteRT's CPU kernels; XNNPACK takes
  the ones it accelerates. Only custom / Flex ops need more.

Every checker returns the same dict: supported, total, unsupported (op names that fall
back, in graph order), details (index, op, reason), checked_with, plus extras.
"""

from __future__ import annotations

import contextlib
import io
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mobilec.policy.targets import NNAPI_CHECK_API

# ----------------------------------------------------------------------------- NNAPI table
#
# Source: the TFLite NNAPI delegate's documented support, i.e. NNAPIDelegateKernel::Validate
# (tensorflow/lite/delegates/nnapi/nnapi_delegate.cc) and the Android NDK NeuralNetworks
# operation reference (https://developer.android.com/ndk/reference/group/neural-networks),
# summarised at https://ai.google.dev/edge/litert/android/delegates/nnapi.
# op -> {dtype of the op's activation input: the lowest Android API level that takes it}.
# API 27 = NNAPI 1.0 (Android 8.1), 28 = 1.1, 29 = 1.2, 30 = 1.3 (signed int8 tensors).
_F = "float32"
_Q = ("uint8", "int8")


def _row(float_api: int | None = 27, quant_api: int | None = 27, int8_api: int | None = None,
         **extra: int) -> dict[str, int]:
    row: dict[str, int] = {}
    if float_api is not None:
        row[_F] = float_api
    if quant_api is not None:
        row["uint8"] = quant_api
        # NNAPI < 1.3 has no signed int8 tensor; the delegate maps int8 per op from 1.2.
        row["int8"] = int8_api if int8_api is not None else max(quant_api, 29)
    row.update(extra)
    return row


NNAPI_OPS: dict[str, dict[str, int]] = {
    "ADD": _row(int32=30),
    "MUL": _row(int32=30),
    "SUB": _row(28, 29, int32=30),
    "DIV": _row(28, None),
    "AVERAGE_POOL_2D": _row(),
    "MAX_POOL_2D": _row(),
    "L2_POOL_2D": _row(27, None),
    "CONV_2D": _row(),
    "DEPTHWISE_CONV_2D": _row(),
    "TRANSPOSE_CONV": _row(29, 29),
    "FULLY_CONNECTED": _row(),
    "SOFTMAX": _row(),
    "LOG_SOFTMAX": _row(29, None),
    "RESHAPE": _row(),
    "SQUEEZE": _row(28, 28),
    "EXPAND_DIMS": _row(29, 29, float16=29, int32=29),
    "CONCATENATION": _row(float16=27),
    "PACK": _row(30, None, int8_api=30, int32=30),
    "SPLIT": _row(29, 29, int8_api=30, int32=29),
    "SPLIT_V": _row(30, 30, int32=30),
    "SLICE": _row(29, 29, int32=29),
    "STRIDED_SLICE": _row(28, 28),
    "TRANSPOSE": _row(28, 28),
    "PAD": _row(28, 29),
    "PADV2": _row(29, 29),
    "SPACE_TO_BATCH_ND": _row(28, 28),
    "BATCH_TO_SPACE_ND": _row(28, 28),
    "SPACE_TO_DEPTH": _row(),
    "DEPTH_TO_SPACE": _row(),
    "RESIZE_BILINEAR": _row(27, 29),
    "RESIZE_NEAREST_NEIGHBOR": _row(29, 29),
    "RELU": _row(),
    "RELU6": _row(),
    "RELU_N1_TO_1": _row(),
    "LOGISTIC": _row(),
    "TANH": _row(27, 29),
    "HARD_SWISH": _row(),
    "LEAKY_RELU": _row(29, 29),
    "PRELU": _row(29, 29),
    "ELU": _row(30, None),
    "L2_NORMALIZATION": _row(27, 29),
    "LOCAL_RESPONSE_NORMALIZATION": _row(27, None),
    "MEAN": _row(28, 29),
    "SUM": _row(29, None),
    "REDUCE_PROD": _row(29, None),
    "REDUCE_MAX": _row(29, 29),
    "REDUCE_MIN": _row(29, 29),
    "REDUCE_ANY": {"bool": 29},
    "MAXIMUM": _row(29, 29, int32=29),
    "MINIMUM": _row(29, 29, int32=29),
    "ABS": _row(29, None),
    "EXP": _row(29, None),
    "LOG": _row(29, None),
    "RSQRT": _row(29, None),
    "SQRT": _row(29, None),
    "SIN": _row(29, None),
    "POW": _row(29, None),
    "NEG": _row(29, None, int32=29),
    "FLOOR": _row(27, None),
    "SQUARED_DIFFERENCE": _row(28, 29, int8_api=30, int32=30),
    "ARG_MAX": _row(29, 29, float16=29, int32=29),
    "ARG_MIN": _row(29, 29, float16=29, int32=29),
    "TOPK_V2": _row(29, 29, int32=29),
    "GATHER": _row(29, 29, float16=29, int32=29),
    "SELECT": _row(29, 29, int32=29),
    "TILE": _row(29, 29, int32=29),
    "CAST": _row(29, 29, int8_api=30, int32=29),
    "LESS": _row(29, 29, int32=29, bool=29),
    "LESS_EQUAL": _row(29, 29, int32=29, bool=29),
    "GREATER": _row(29, 29, int32=29, bool=29),
    "GREATER_EQUAL": _row(29, 29, int32=29, bool=29),
    "EQUAL": _row(29, 29, int32=29, bool=29),
    "NOT_EQUAL": _row(29, 29, int32=29, bool=29),
    "LOGICAL_AND": {"bool": 29},
    "LOGICAL_OR": {"bool": 29},
    "LOGICAL_NOT": {"bool": 29},
    # float -> uint8 from 1.2; float -> int8 (what the TFLite int8 converter emits) from 1.3
    "QUANTIZE": {"float32": 30},
    "DEQUANTIZE": {"uint8": 27, "int8": 29, "float16": 27},
    "EMBEDDING_LOOKUP": _row(27, None),
    "HASHTABLE_LOOKUP": _row(27, None),
    "LSTM": _row(28, None),
    "UNIDIRECTIONAL_SEQUENCE_LSTM": _row(29, None),
    "BIDIRECTIONAL_SEQUENCE_LSTM": _row(29, None),
    "UNIDIRECTIONAL_SEQUENCE_RNN": _row(29, None),
    "RNN": _row(27, None),
    "SVDF": _row(28, None),
    "FILL": {"int32": 30, "int64": 30},
    "DENSIFY": {"float32": 30, "int8": 30, "float16": 30},
}

# ----------------------------------------------------------------------------- GPU table
#
# The ops CheckGpuDelegateCompatibility (gpu_compatibility.cc, what the analyzer runs)
# has a case for; every other builtin op is "Not supported op". Per-op constraints that
# can be read from the flatbuffer are checked in _gpu_reason.
GPU_OPS = frozenset({
    "ADD", "ADD_N", "AVERAGE_POOL_2D", "BATCH_MATMUL", "CAST", "CONCATENATION", "CONV_2D",
    "CUMSUM", "DENSIFY", "DEPTHWISE_CONV_2D", "DEPTH_TO_SPACE", "DEQUANTIZE",
    "EMBEDDING_LOOKUP", "DYNAMIC_UPDATE_SLICE", "FULLY_CONNECTED", "GATHER", "HARD_SWISH",
    "LSTM", "MAX_POOL_2D", "MEAN", "MUL", "PACK", "ONE_HOT", "QUANTIZE", "RELU_N1_TO_1",
    "PRELU", "RESHAPE", "SELECT", "SELECT_V2", "SLICE", "SOFTMAX", "SPACE_TO_DEPTH", "SPLIT",
    "SPLIT_V", "STRIDED_SLICE", "TILE", "TRANSPOSE", "TRANSPOSE_CONV", "RESIZE_BILINEAR",
    "RESIZE_NEAREST_NEIGHBOR", "RELU", "RELU6", "LEAKY_RELU", "REDUCE_MAX", "REDUCE_MIN",
    "REDUCE_PROD", "SUM", "PAD", "PADV2", "MIRROR_PAD", "ABS", "CEIL", "COS", "ELU", "EXP",
    "FLOOR", "GELU", "LOG", "LOGISTIC", "NEG", "RSQRT", "SIGN", "SIN", "SQRT", "SQUARE",
    "TANH", "ATAN2", "DIV", "EQUAL", "FLOOR_DIV", "FLOOR_MOD", "GREATER", "GREATER_EQUAL",
    "LOGICAL_AND", "LESS", "LESS_EQUAL", "MAXIMUM", "MINIMUM", "NOT_EQUAL", "POW",
    "SQUARED_DIFFERENCE", "SUB", "STABLEHLO_CLAMP",
    # custom ops the GPU delegate implements
    "Convolution2DTransposeBias", "MaxPoolingWithArgmax2D", "MaxUnpooling2D", "Resampler",
})
GPU_CHECKED_WITH = ("TFLite model analyzer (gpu_compatibility=True) + the GPU delegate "
                    "compatibility rules of tensorflow/lite/tools/versioning/gpu_compatibility.cc")


@dataclass
class TensorInfo:
    dtype: str
    rank: int
    const: bool


@dataclass
class OpInfo:
    index: int
    name: str
    inputs: list[TensorInfo | None] = field(default_factory=list)
    outputs: list[TensorInfo] = field(default_factory=list)

    @property
    def activation(self) -> TensorInfo | None:
        """The op's first runtime (non-constant) input: what decides its dtype."""
        live = [t for t in self.inputs if t is not None and not t.const]
        return live[0] if live else next((t for t in self.inputs if t is not None), None)


# ----------------------------------------------------------------------------- .tflite ops


def tflite_ops(source: Path | bytes) -> list[OpInfo]:
    """Every operator of the main subgraph with its tensors' dtypes, ranks and const-ness."""
    from ai_edge_litert import schema_py_generated as fb

    buf = Path(source).read_bytes() if not isinstance(source, (bytes, bytearray)) else bytes(source)
    model = fb.Model.GetRootAs(buf, 0)
    op_names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    type_names = {v: k.lower() for k, v in vars(fb.TensorType).items() if not k.startswith("_")}
    sub = model.Subgraphs(0)

    def tensor(i: int) -> TensorInfo | None:
        if i < 0:
            return None
        t = sub.Tensors(i)
        b = model.Buffers(t.Buffer()) if t.Buffer() < model.BuffersLength() else None
        const = b is not None and (b.DataLength() > 0 or b.Offset() > 1)
        rank = t.ShapeSignatureLength() or t.ShapeLength()
        return TensorInfo(type_names.get(t.Type(), str(t.Type())), rank, const)

    ops: list[OpInfo] = []
    for k in range(sub.OperatorsLength()):
        op = sub.Operators(k)
        code = model.OperatorCodes(op.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        name = op_names.get(builtin, str(builtin))
        if name == "CUSTOM" and code.CustomCode():
            name = code.CustomCode().decode()
        ops.append(OpInfo(k, name, [tensor(op.Inputs(j)) for j in range(op.InputsLength())],
                          [t for t in (tensor(op.Outputs(j)) for j in range(op.OutputsLength()))
                           if t is not None]))
    return ops


def _result(ops: list[OpInfo], reasons: dict[int, str], delegate: str, checked_with: str,
            **extra: Any) -> dict[str, Any]:
    bad = [o for o in ops if o.index in reasons]
    return {"delegate": delegate, "supported": len(ops) - len(bad), "total": len(ops),
            "unsupported": list(dict.fromkeys(o.name for o in bad)),
            "details": [{"index": o.index, "op": o.name, "reason": reasons[o.index]} for o in bad],
            "ops": dict(Counter(o.name for o in ops)), "checked_with": checked_with, **extra}


# ----------------------------------------------------------------------------- GPU


def analyzer_report(model: Path | bytes) -> str:
    """TFLite's model analyzer with the GPU check; it prints, so its output is captured."""
    from mobilec.util.tfenv import import_tf

    tf = import_tf()
    content = model if isinstance(model, (bytes, bytearray)) else Path(model).read_bytes()
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):
        tf.lite.experimental.Analyzer.analyze(model_content=bytes(content), gpu_compatibility=True)
    return sink.getvalue()


_OP_LINE = re.compile(r"^\s*Op#(\d+) (\S+?)\(")
_GPU_WARNING = "GPU COMPATIBILITY WARNING:"


def parse_analyzer(text: str) -> dict[int, str]:
    """Op index -> the analyzer's GPU warning, for the ops of Subgraph#0 it flagged."""
    warnings: dict[int, str] = {}
    current: int | None = None
    for line in text.splitlines():
        if line.startswith("Subgraph#") and not line.startswith("Subgraph#0"):
            break
        m = _OP_LINE.match(line)
        if m:
            current = int(m.group(1))
        elif line.startswith(_GPU_WARNING) and current is not None and "Subgraph#" not in line:
            warnings[current] = line[len(_GPU_WARNING):].strip()
    return warnings


def _gpu_reason(op: OpInfo) -> str | None:
    if op.name not in GPU_OPS:
        return f"Not supported op {op.name}"
    first = op.inputs[0] if op.inputs else None
    if op.name in ("SLICE", "STRIDED_SLICE") and first is not None and first.rank not in (3, 4):
        return f"{op.name} supports 3 or 4 dimensional tensors only (got {first.rank}D)"
    if op.name == "CAST" and first is not None and op.outputs:
        pair = (first.dtype, op.outputs[0].dtype)
        ok = (pair[0] == "bool" and pair[1] in ("float16", "float32")) or \
             (pair[0] in ("float16", "float32") and pair[1] == "bool") or \
             (pair[0] in ("float32", "int32") and pair[1] in ("float32", "int32"))
        if not ok:
            return f"Not supported Cast case: {pair[0]} -> {pair[1]}"
    if op.name == "GATHER" and first is not None and first.dtype == "int32":
        return "GATHER does not accept INT32 input"
    if op.name == "DEQUANTIZE" and first is not None and first.dtype == "int16":
        return "Unsupported dequantization type (int16)"
    if op.name == "FULLY_CONNECTED" and first is not None and first.const:
        return "FullyConnected doesn't support constant input"
    return None


def gpu_compat(path: Path) -> dict[str, Any]:
    ops = tflite_ops(path)
    reasons = {o.index: r for o in ops if (r := _gpu_reason(o))}
    analyzer = parse_analyzer(analyzer_report(path))
    for index, text in analyzer.items():
        reasons.setdefault(index, text)
    return _result(ops, reasons, "gpu", GPU_CHECKED_WITH, analyzer_flagged=len(analyzer))


# ----------------------------------------------------------------------------- NNAPI


def _nnapi_need(op: OpInfo) -> tuple[int | None, str]:
    """(lowest Android API that runs the op on NNAPI, or None; why not)."""
    row = NNAPI_OPS.get(op.name)
    if row is None:
        return None, f"{op.name} is not an NNAPI operation (runs on the CPU fallback)"
    act = op.activation
    dtype = act.dtype if act is not None else "float32"
    if op.name == "DEQUANTIZE" and act is not None and act.dtype == "float16" and not act.const:
        return 30, ""
    if dtype not in row:
        return None, f"NNAPI {op.name} does not take {dtype} tensors"
    hybrid = dtype == "float32" and any(t is not None and t.const and t.dtype in _Q
                                        for t in op.inputs)
    if hybrid and op.name in _NO_HYBRID:  # dynamic-range (float activations, int8 weights)
        return None, f"NNAPI has no hybrid (float activations, int8 weights) {op.name}"
    if hybrid:
        return max(row[dtype], 29), ""  # hybrid operators arrived with NNAPI 1.2
    return row[dtype], ""


_NO_HYBRID = frozenset({"UNIDIRECTIONAL_SEQUENCE_LSTM", "BIDIRECTIONAL_SEQUENCE_LSTM",
                        "UNIDIRECTIONAL_SEQUENCE_RNN"})


def nnapi_compat(path: Path, api_level: int = NNAPI_CHECK_API) -> dict[str, Any]:
    ops = tflite_ops(path)
    reasons: dict[int, str] = {}
    needed = 27
    for op in ops:
        api, why = _nnapi_need(op)
        if api is None:
            reasons[op.index] = why
        elif api > api_level:
            reasons[op.index] = f"{op.name} needs Android API {api} on NNAPI (checked: {api_level})"
        else:
            needed = max(needed, api)
    return _result(ops, reasons, "nnapi",
                   "NNAPI delegate op/dtype support table (mobilec.delegates.opcompat.NNAPI_OPS, from "
                   "nnapi_delegate.cc Validate and the NDK NeuralNetworks reference)",
                   checked_api_level=api_level, min_android_api=needed)


# ----------------------------------------------------------------------------- CPU


def xnnpack_compat(path: Path) -> dict[str, Any]:
    ops = tflite_ops(path)
    reasons = {o.index: f"custom op {o.name} needs its own kernel linked into the app"
               for o in ops if o.name.startswith("Flex") or o.name not in _builtin_names()}
    return _result(ops, reasons, "xnnpack",
                   "LiteRT CPU builtin kernels (XNNPACK takes the ops it accelerates)")


def _builtin_names() -> set[str]:
    from ai_edge_litert import schema_py_generated as fb

    return {k for k in vars(fb.BuiltinOperator) if not k.startswith("_")}


# ----------------------------------------------------------------------------- ONNX


def onnx_compat(path: Path) -> dict[str, Any]:
    """CPU EP: every node. NNAPI / Core ML EPs: onnxruntime's mobile usability checker."""
    import onnx
    from onnxruntime.tools.mobile_helpers import usability_checker as uc
    from onnxruntime.tools.onnx_model_utils import ModelProtoWithShapeInfo, optimize_model

    graph = onnx.load(str(path), load_external_data=False).graph
    ops = [OpInfo(i, n.op_type) for i, n in enumerate(graph.node)]
    eps: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        # Same steps as check_onnx_model_mobile_usability: basic ORT optimizations first.
        opt = Path(tmp) / "model.onnx"
        optimize_model(Path(path), opt, use_external_initializers=True)
        model = ModelProtoWithShapeInfo(opt).model_with_shape_info
        dynamic = bool(uc.check_shapes(model.graph)[0])
        checks = {"nnapi": lambda fixed: uc.check_nnapi_partitions(model, fixed),
                  "coreml-mlprogram": lambda fixed: uc.check_coreml_partitions(
                      model, fixed, "coreml_supported_mlprogram_ops.md"),
                  "coreml-neuralnetwork": lambda fixed: uc.check_coreml_partitions(
                      model, fixed, "coreml_supported_neuralnetwork_ops.md")}
        with contextlib.redirect_stdout(io.StringIO()):
            for name, check in checks.items():
                info = check(True)
                eps[name] = _partition(info)
                if dynamic:
                    eps[name]["if_input_shapes_fixed"] = _partition(check(False))
    return _result(ops, {}, "ort-cpu", "onnxruntime CPUExecutionProvider (every ONNX op); "
                   "NNAPI/Core ML EPs: onnxruntime.tools.check_onnx_model_mobile_usability",
                   execution_providers=eps, dynamic_input_shapes=dynamic)


def _partition(info: Any) -> dict[str, Any]:
    return {"supported_nodes": info.num_supported_nodes, "total_nodes": info.num_nodes,
            "partitions": info.num_partitions, "unsupported_ops": sorted(info.unsupported_ops),
            "suitability": info.suitability().name}


# ----------------------------------------------------------------------------- Core ML


def coreml_program_ops(path: Path) -> list[str]:
    """The compute ops of a saved .mlpackage (MIL program) or .mlmodel (neural network)."""
    import coremltools as ct

    spec = ct.utils.load_spec(str(path))
    if spec.WhichOneof("Type") == "mlProgram":
        return [op.type for f in spec.mlProgram.functions.values()
                for block in f.block_specializations.values() for op in block.operations
                if op.type != "const"]
    if spec.WhichOneof("Type") == "neuralNetwork":
        return [layer.WhichOneof("layer") for layer in spec.neuralNetwork.layers]
    return []


def coreml_compat(path: Path) -> dict[str, Any]:
    ops = [OpInfo(i, n) for i, n in enumerate(coreml_program_ops(path))]
    # coremltools only emits ops of Core ML's own op set; the runtime then places each
    # on the Neural Engine, GPU or CPU itself (MLModelConfiguration.computeUnits).
    return _result(ops, {}, "coreml", "ops of the converted Core ML program (coremltools)")


# ----------------------------------------------------------------------------- dispatch


def check(path: Path, fmt: str, delegate: str | None) -> dict[str, Any]:
    """Op compatibility of the artifact at `path` with `delegate`."""
    if fmt == "tflite":
        if delegate == "gpu":
            return gpu_compat(path)
        if delegate == "nnapi":
            return nnapi_compat(path)
        return xnnpack_compat(path)
    if fmt == "onnx":
        return onnx_compat(path)
    if fmt == "coreml":
        return coreml_compat(path)
    raise ValueError(f"no op-compatibility checker for format {fmt}")


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The report's op_compat field: supported/total and the ops that fall back."""
    return {k: result[k] for k in ("supported", "total", "unsupported", "checked_with")}
