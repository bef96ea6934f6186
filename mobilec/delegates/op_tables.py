"""The delegates' op tables: what NNAPI (per Android API level and dtype) and the GPU
delegate document they take. Pure data, checked against real op lists by opcompat."""

from __future__ import annotations

# ----------------------------------------------------------------------------- NNAPI table
#
# Source: the TFLite NNAPI delegate's documented support, i.e. NNAPIDelegateKernel::Validate
# (tensorflow/lite/delegates/nnapi/nnapi_delegate.cc) and the Android NDK NeuralNetworks
# operation reference (https://developer.android.com/ndk/reference/group/neural-networks),
# summarised at https://ai.google.dev/edge/litert/android/delegates/nnapi.
# op -> {dtype of the op's activation input: the lowest Android API level that takes it}.
# API 27 = NNAPI 1.0 (Android 8.1), 28 = 1.1, 29 = 1.2, 30 = 1.3 (signed int8 tensors).
_F = "float32"
QUANT_DTYPES = ("uint8", "int8")


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
