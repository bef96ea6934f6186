"""ExecuTorch's XNNPACK modes besides float32 and static int8: `float16`, `dynamic` (int8
weights, int8 activations quantized at run time) and `int4` (ExecuTorch's 8da4w: int4
weights in groups of 32, int8 dynamic activations, through torchao).

Each function rewrites the eager module before it is exported and lowered
(formats/executorch.py::lower); none needs calibration data.

What XNNPACK (ExecuTorch 1.5.1) does with them, measured on the digits CNN:
- float16: every op runs in fp16. ExecuTorch 1.5.1's XNNPACK serializer writes Conv
  weights and biases as fp32 even in an fp16 graph (`op_conv2d.py`: `force_fp32=True`;
  XNNPACK converts them to fp16 when it packs them at load), so a Conv-heavy model would
  shrink less than 2x (digits CNN: 0.618x). `lowering` swaps in a Conv visitor that
  keeps a static fp16 weight fp16 (XNNPACK's own f16 convolution; upstream's PR #9753 did
  the same for Linear): 0.509x, the same outputs, since the fp32 copy held fp16 values.
- int4 (8da4w): torchao quantizes Linear layers only (Conv stays float32), as
  ExecuTorch's own 8da4w does; a Linear whose input width is not a multiple of the group
  size stays float (named in the artifact's notes). An exported graph (`.pt2`) has no
  nn.Linear modules for torchao: there the Linear ops get int4 per-channel weights through
  PT2E (XNNPACK's qc4w), measured 0.332x / 97.5% on the digits CNN .pt2.
- dynamic: XNNPACKQuantizer's dynamic per-channel config (Linear and Conv).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from mobilec.errors import UnsupportedError
from mobilec.sources.batch import Inputs, as_list
from mobilec.sources.pytorch import export_program, to_tensor

#: the modes this module prepares, and what each .pte holds
PRECISION = {
    "float16": "float16 weights and compute (XNNPACK), float32 I/O",
    "dynamic": "int8 weights (per-channel), int8 activations quantized at run time, "
               "float32 I/O",
    "int4": "8da4w: int4 Linear weights (groups of 32), int8 dynamic activations; "
            "other layers float32; float32 I/O",
}
QUANTIZER = {
    "float16": None,
    "dynamic": "PT2E XNNPACKQuantizer, dynamic per-channel",
    "int4": "torchao Int8DynamicActivationIntxWeightConfig (int4, PerGroup 32)",
}
INT4_GROUP = 32


def prepare(module: Any, example: Inputs, mode: str) -> tuple[Any, list[str]]:
    """`module` rewritten for `mode` (a copy: the source module is never changed) and the
    notes to put on the artifact."""
    import copy

    if mode == "float16":
        return _float16(copy.deepcopy(module).half()), []
    if mode == "dynamic":
        return _pt2e_dynamic(module, example), []
    if mode == "int4" and _has_linear(module):
        return _int4_8da4w(copy.deepcopy(module))
    if mode == "int4":
        # An exported graph (a .pt2's ep.module()) has no nn.Linear for torchao to swap:
        # the same int4-weight / dynamic-int8-activation Linear through PT2E, per channel.
        return _pt2e_dynamic(module, example, int4_linear=True), [
            "int4: per-channel int4 Linear weights through PT2E (XNNPACK qc4w), int8 dynamic "
            "activations; torchao's grouped 8da4w needs nn.Linear modules (an eager "
            "model.module), which an exported .pt2 graph has not"]
    raise UnsupportedError(f"ExecuTorch has no {mode} mode here",
                           where="stages.quantize.mode", hint="use " + ", ".join(PRECISION))


@contextmanager
def lowering(mode: str) -> Iterator[None]:
    """Around ExecuTorch's lowering: no autograd, and for float16 the XNNPACK Conv
    visitor that stores a static fp16 weight/bias as fp16 (the stock one forces fp32),
    registered for this lowering only."""
    import torch

    if mode != "float16":
        with torch.no_grad():
            yield
        return
    from executorch.backends.xnnpack.operators.node_visitor import (
        get_node_visitors,
        register_node_visitor,
    )

    # the registered class, read through the public factory (its module binds the name
    # to None: register_node_visitor returns nothing)
    stock = type(get_node_visitors(None, {}, None)[CONV_TARGET])
    register_node_visitor(_fp16_conv_visitor(stock))
    try:
        with torch.no_grad():
            yield
    finally:
        register_node_visitor(stock)


CONV_TARGET = "aten.convolution.default"


def _fp16_conv_visitor(stock: type) -> type:
    import torch

    class Fp16Conv(stock):  # type: ignore[misc, valid-type]
        """The stock Conv visitor, except that a float (unquantized) fp16 constant keeps
        its dtype: define_tensor's force_fp32 is dropped for it, nothing else changes."""

        target = CONV_TARGET

        def define_tensor(self, tensor: Any, *args: Any, force_fp32: bool = False,
                          quant_params: Any = None, **kwargs: Any) -> Any:
            val = tensor.meta.get("val")
            if quant_params is None and getattr(val, "dtype", None) == torch.float16:
                force_fp32 = False
            return super().define_tensor(tensor, *args, force_fp32=force_fp32,
                                         quant_params=quant_params, **kwargs)

    return Fp16Conv


def _float16(inner: Any) -> Any:
    import torch

    class Float16(torch.nn.Module):
        """fp16 inside, float32 I/O: the app feeds and reads float32 like every other .pte."""

        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *args: Any) -> Any:
            out = self.inner(*(a.to(torch.float16) if a.is_floating_point() else a
                               for a in args))
            if isinstance(out, (tuple, list)):
                return type(out)(o.to(torch.float32) for o in out)
            return out.to(torch.float32)

    return Float16(inner)


def _has_linear(module: Any) -> bool:
    import torch

    return any(isinstance(m, torch.nn.Linear) for m in module.modules())


def _pt2e_dynamic(module: Any, example: Inputs, int4_linear: bool = False) -> Any:
    """XNNPACKQuantizer, dynamic int8 activations: int8 per-channel weights on every op it
    takes, or (int4_linear) int4 per-channel weights on Linear only."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer()
    if int4_linear:
        quantizer.set_operator_type(torch.ops.aten.linear.default, get_symmetric_quantization_config(
            is_per_channel=True, is_dynamic=True, weight_qmin=-8, weight_qmax=7))
    else:
        quantizer.set_global(get_symmetric_quantization_config(is_per_channel=True,
                                                               is_dynamic=True))
    args = tuple(to_tensor(a) for a in as_list(example))
    prepared = prepare_pt2e(export_program(module, args).module(), quantizer)
    with torch.no_grad():
        prepared(*args)  # weight observers need one pass; activations are dynamic
    return convert_pt2e(prepared)


def _int4_8da4w(module: Any) -> tuple[Any, list[str]]:
    import torch
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerGroup

    skipped: list[str] = []
    taken: list[str] = []

    def linear_in_groups(m: Any, fqn: str) -> bool:
        if not isinstance(m, torch.nn.Linear):
            return False
        if m.in_features % INT4_GROUP:
            skipped.append(fqn)
            return False
        taken.append(fqn)
        return True

    quantize_(module, Int8DynamicActivationIntxWeightConfig(
        weight_dtype=torch.int4, weight_granularity=PerGroup(INT4_GROUP)),
        filter_fn=linear_in_groups)
    if not taken:
        raise UnsupportedError(
            "int4 (8da4w) quantizes Linear layers whose input width is a multiple of "
            f"{INT4_GROUP}, and this model has none", where="stages.quantize.mode",
            hint="use dynamic or int8 for the .pte")
    notes = [f"int4 (8da4w): {len(taken)} Linear layers in int4; Conv and other layers "
             "float32"]
    if skipped:
        notes.append(f"kept float (input width not a multiple of {INT4_GROUP}): "
                     + ", ".join(skipped[:8]))
    return module.eval(), notes
