"""Applying the quantize plan the Core ML way: coremltools.optimize on an mlprogram
(int8/int4 linear weights, k-means palettization), quantization_utils on a neuralnetwork."""

from __future__ import annotations

from typing import Any

import numpy as np

from mobilec.errors import UnsupportedError

WEIGHT_THRESHOLD = 2048  # coremltools.optimize leaves smaller weight tensors in float
INT4_BLOCK = 32


def compress_mlprogram(base: Any, mode: str, bits: int) -> Any:
    if mode in ("float32", "float16"):
        return base
    import coremltools.optimize as cto

    opt = cto.coreml
    if mode in ("dynamic", "int8", "qat"):
        config = opt.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8",
                                             granularity="per_channel",
                                             weight_threshold=WEIGHT_THRESHOLD)
        return opt.linear_quantize_weights(base, opt.OptimizationConfig(global_config=config))
    if mode == "int4":
        config = opt.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int4",
                                             granularity="per_block", block_size=INT4_BLOCK,
                                             weight_threshold=WEIGHT_THRESHOLD)
        return opt.linear_quantize_weights(base, opt.OptimizationConfig(global_config=config))
    if mode == "palettize":
        config = opt.OpPalettizerConfig(mode="kmeans", nbits=bits,
                                        weight_threshold=WEIGHT_THRESHOLD)
        return opt.palettize_weights(base, opt.OptimizationConfig(global_config=config))
    raise UnsupportedError(f"quantization '{mode}' is not available for Core ML")


def compress_neuralnetwork(base: Any, mode: str, bits: int) -> Any:
    if mode == "float32":
        return base
    from coremltools.models.neural_network import quantization_utils as qu

    if mode == "float16":
        return qu.quantize_weights(base, nbits=16)
    if mode in ("dynamic", "int8", "qat"):
        return qu.quantize_weights(base, nbits=8, quantization_mode="linear")
    if mode == "int4":
        return qu.quantize_weights(base, nbits=4, quantization_mode="linear")
    if mode == "palettize":
        # coremltools' own "kmeans" mode writes a 2-D table into a 1-D proto field under
        # numpy 2; the same k-means through a custom LUT function avoids that bug.
        return qu.quantize_weights(base, nbits=bits, quantization_mode="custom_lut",
                                   lut_function=_kmeans_lut)
    raise UnsupportedError(f"quantization '{mode}' is not available for Core ML")


def _kmeans_lut(nbits: int, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from coremltools.models.neural_network.quantization_utils import (
        _get_kmeans_lookup_table_and_weight,
    )

    lut, qw = _get_kmeans_lookup_table_and_weight(nbits, weights)
    return np.asarray(lut, dtype=np.float32).reshape(-1), qw
