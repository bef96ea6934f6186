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

from mobilec.delegates.op_tables import GPU_CHECKED_WITH, GPU_OPS, NNAPI_OPS, QUANT_DTYPES
from mobilec.policy.targets import NNAPI_CHECK_API
from mobilec.util.tfenv import import_tf


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
    hybrid = dtype == "float32" and any(t is not None and t.const and t.dtype in QUANT_DTYPES
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


def tflite_compat(path: Path, delegate: str | None) -> dict[str, Any]:
    """Op compatibility of a .tflite with the delegate that will run it."""
    if delegate == "gpu":
        return gpu_compat(path)
    if delegate == "nnapi":
        return nnapi_compat(path)
    return xnnpack_compat(path)
