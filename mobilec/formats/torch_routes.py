"""Conversion routes that start from a PyTorch model: `.onnx` (dynamo exporter),
`.tflite` (litert_torch) and Core ML (coremltools on the ExportedProgram).

Each function writes one artifact and raises ConversionError/UnsupportedError
with the converter's reason; verifying the result against eager PyTorch is the
caller's job (the format's route loop), except that an `.onnx` must load in
onnxruntime before it is returned.
"""

from __future__ import annotations

import contextlib
import io
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mobilec.errors import ConversionError, UnsupportedError, first_line
from mobilec.sources.batch import Inputs, as_list, first_n, length, take
from mobilec.sources.pytorch import count_params, eval_mode, to_tensor

# Past this many bytes of weights an .onnx cannot be one file (protobuf's 2 GiB limit).
ONNX_SINGLE_FILE_LIMIT = 1_800_000_000
LITERT_TORCH_MODES = ("float32", "dynamic", "int8-io")
COREML_MODES = ("float32", "float16", "dynamic", "int8")
CALIBRATION_LIMIT = 200
# The dynamo exporter writes opset-18 ops (Split with num_outputs, Reduce* with axes inputs)
# and only down-converts them on request, which leaves graphs onnxruntime rejects at 17
# ("Unrecognized attribute: num_outputs for operator Split"): it never goes below 18.
DYNAMO_MIN_OPSET = 18
QAT_QUANTIZER = "coremltools.optimize.torch LinearQuantizer (qat)"


def torch_to_onnx(program_or_module: Any, example_inputs: tuple[Any, ...], dest: Path,
                  opset: int | None = None) -> Path:
    """torch.onnx.export(dynamo=True) into one self-contained `.onnx` (weights inside).

    An ExportedProgram keeps its dynamic dims; a module is exported with the example
    shapes. The opset is at least DYNAMO_MIN_OPSET (a lower one, meant for tf2onnx, is
    raised). The file is loaded in onnxruntime before it is returned.
    """
    import torch

    dest = Path(dest)
    args = tuple(to_tensor(a) for a in example_inputs)
    model = program_or_module
    params = count_params(model.module() if isinstance(model, torch.export.ExportedProgram)
                          else model)
    # The exporter's default is a side file (<name>.onnx.data); ship one file where it fits.
    external = params * 4 > ONNX_SINGLE_FILE_LIMIT
    opset = max(opset or DYNAMO_MIN_OPSET, DYNAMO_MIN_OPSET)
    try:
        with _quiet():
            torch.onnx.export(model, args, str(dest), dynamo=True, external_data=external,
                              opset_version=opset, verbose=False)
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types
        raise ConversionError(f"torch.onnx.export (dynamo) failed: {first_line(exc, 400)}") from exc
    try:
        import onnxruntime as ort

        ort.InferenceSession(str(dest), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - a file onnxruntime cannot load is a failed route
        raise ConversionError(f"the exported .onnx does not load in onnxruntime: "
                              f"{first_line(exc, 400)}") from exc
    return dest


def onnx_files(dest: Path) -> list[Path]:
    """Every file of an .onnx artifact (the model and its external-data file, if any)."""
    side = Path(str(dest) + ".data")
    return [p for p in (Path(dest), side) if p.exists()]


def torch_to_tflite(module: Any, example_inputs: tuple[Any, ...], dest: Path, mode: str,
                    calibration: Inputs | None = None,
                    input_names: list[str] | None = None,
                    output_names: list[str] | None = None) -> Path:
    """litert_torch.convert; `dynamic` and `int8-io` through its PT2E quantizer.

    What litert-torch 0.10 gives: float32; dynamic (int8 weights, float I/O); static
    int8 always with int8 I/O (so `int8` with float I/O is not a litert_torch mode:
    the ONNX bridge covers it). No float16 option.

    `input_names` (the forward arguments'): the inputs go in as keyword arguments, so the
    signature takes them by the source's names, and int64 stays int64 — as the onnx2tf
    route's artifacts take them (litert_torch's own default: args_0, args_1 as int32).
    """

    if mode not in LITERT_TORCH_MODES:
        raise UnsupportedError(
            f"litert_torch cannot produce {mode} .tflite (it does {', '.join(LITERT_TORCH_MODES)})",
            hint="the ONNX bridge route (onnx2tf + TFLite converter) covers the other modes")
    import litert_torch
    import torch

    module = eval_mode(module)
    args = tuple(to_tensor(a) for a in example_inputs)
    quant_config = None
    x64 = any(a.dtype in (torch.int64, torch.float64) for a in args)
    try:
        with _quiet():
            if mode != "float32":
                module, quant_config = _litert_pt2e(module, args, mode, calibration)
            named_module, named = _keyword_inputs(module, args, input_names, output_names)
            try:
                edge = litert_torch.convert(named_module, () if named else args, named,
                                            quant_config=quant_config, enable_x64=x64)
            except Exception as exc:  # noqa: BLE001 - a module that will not take keywords
                if named is None or "keyword" not in str(exc):
                    raise
                edge = litert_torch.convert(module, args, quant_config=quant_config,
                                            enable_x64=x64)
            edge.export(str(dest))
    except UnsupportedError:
        raise
    except Exception as exc:  # noqa: BLE001 - the converter raises many types
        raise ConversionError(f"litert_torch.convert ({mode}) failed: {first_line(exc, 400)}") from exc
    return Path(dest)


def _keyword_inputs(module: Any, args: tuple[Any, ...], names: list[str] | None,
                    outputs: list[str] | None = None) -> tuple[Any, dict[str, Any] | None]:
    """(a module taking the inputs by keyword, {name: example}); (module, None) when the names
    cannot be keywords. An ExportedProgram's module takes positional inputs only: a wrapper
    maps the keywords back to positions. With `outputs` (the source's output names) the
    wrapper returns {name: tensor}, which litert_torch makes the signature's output names
    (else output_0, output_1, ...)."""
    import torch
    from torch.utils import _pytree as pytree

    keywords = bool(names) and len(names) == len(args) and len(set(names)) == len(names) and \
        all(n.isidentifier() for n in names)
    if not keywords and not outputs:
        return module, None

    def named_outputs(out: Any) -> Any:
        leaves = pytree.tree_leaves(out)
        if outputs and len(leaves) == len(outputs) and len(set(outputs)) == len(outputs):
            return dict(zip(outputs, leaves, strict=True))
        return out

    class NamedIO(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = module
            self.training = False  # the inner module is in eval mode already

        def forward(self, *positional: Any, **inputs: Any) -> Any:
            return named_outputs(self.inner(*positional, *[inputs[n] for n in names or []
                                                           if n in inputs]))

    return NamedIO(), dict(zip(names, args, strict=True)) if keywords and names else None


def _litert_pt2e(module: Any, args: tuple[Any, ...], mode: str,
                 calibration: Inputs | None) -> tuple[Any, Any]:
    import torch
    from litert_torch.quantize.pt2e_quantizer import (
        PT2EQuantizer,
        get_symmetric_quantization_config,
    )
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e


    dynamic = mode == "dynamic"
    if not dynamic and calibration is None:
        raise UnsupportedError("int8-io needs calibration data and the recipe has none",
                               hint="add a data: section, or use quantize mode dynamic")
    quantizer = PT2EQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic))
    prepared = prepare_pt2e(torch.export.export(module, args).module(), quantizer)
    # Per-channel observers need at least one pass even for dynamic mode, or the
    # scales stay scalar; the graph is traced at the example batch: one sample a step.
    samples = [a[:1] for a in args] if calibration is None else \
        first_n(calibration, CALIBRATION_LIMIT)
    with torch.no_grad():
        for i in range(length(samples)):
            prepared(*[to_tensor(a) for a in as_list(take(samples, slice(i, i + 1)))])
    # fold_quantize=False: litert_torch folds the weights itself (as its tests do)
    return convert_pt2e(prepared, fold_quantize=False), QuantConfig(pt2e_quantizer=quantizer)


def torch_to_coreml(program: Any, dest: Path, mode: str = "float32",
                    check: Callable[[str, Any], None] | None = None) -> tuple[Path, str]:
    """coremltools.convert on the ExportedProgram (mlprogram); returns (path, route).

    Routes: the program with core-ATen decompositions only (`run_decompositions({})`,
    what coremltools documents), then the fully decomposed program. Off macOS the
    model is not compiled or run (skip_model_load): the caller checks structure only.
    `check(route, program)`: verifies the decomposed program before coremltools gets it
    (raises to fail the route: nothing is built from a graph that differs from the source).
    """
    if mode not in COREML_MODES:
        raise UnsupportedError(f"Core ML from PyTorch does {', '.join(COREML_MODES)}, not {mode}")
    import coremltools as ct

    precision = ct.precision.FLOAT16 if mode == "float16" else ct.precision.FLOAT32
    failures: list[str] = []
    for route, prepare in (("coreml-exported-program", lambda ep: ep.run_decompositions({})),
                           ("coreml-decomposed", lambda ep: ep.run_decompositions())):
        try:
            prepared = prepare(program)
            if check is not None:
                check(route, prepared)
            with _quiet():
                mlmodel = ct.convert(prepared, convert_to="mlprogram",
                                     compute_precision=precision, skip_model_load=True)
                if mode in ("dynamic", "int8"):
                    # int8 weights (linear, per-channel); activations stay float
                    cfg = ct.optimize.coreml.OptimizationConfig(
                        global_config=ct.optimize.coreml.OpLinearQuantizerConfig(
                            mode="linear_symmetric", dtype="int8"))
                    mlmodel = ct.optimize.coreml.linear_quantize_weights(mlmodel, cfg)
                if Path(dest).exists():
                    shutil.rmtree(dest)
                mlmodel.save(str(dest))
            return Path(dest), route
        except Exception as exc:  # noqa: BLE001 - coremltools raises many types
            failures.append(f"{route}: {first_line(exc, 400)}")
    raise ConversionError("coremltools could not convert the program: " + "; ".join(failures))


def qat_to_coreml(module: Any, example_inputs: tuple[Any, ...], dest: Path,
                  input_names: list[str], output_names: list[str], dynamic_batch: bool
                  ) -> tuple[Path, str]:
    """coremltools on a finalized LinearQuantizer model (coremltools.optimize.torch): its
    quantize/dequantize pairs become Core ML int8 weights and quantized activations (iOS17);
    returns (path, route). Such a model goes through TorchScript, as coremltools documents:
    torch.export refuses its reference-quantized graph (aten.dequantize.self). Float32
    compute, so the file computes what the measured PyTorch graph computes."""
    import coremltools as ct
    import torch

    args = tuple(to_tensor(a)[:1] for a in example_inputs)
    batch: Any = ct.RangeDim(1, 4096, 1) if dynamic_batch else 1
    try:
        with _quiet(), torch.no_grad():
            traced = torch.jit.trace(eval_mode(module), args)
            mlmodel = ct.convert(
                traced, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
                compute_precision=ct.precision.FLOAT32, skip_model_load=True,
                inputs=[ct.TensorType(name=n, shape=(batch, *a.shape[1:]))
                        for n, a in zip(input_names, args, strict=True)],
                outputs=[ct.TensorType(name=n) for n in output_names])
            # TorchScript leaves the output shapes empty: the traced ones (batch 1), as the
            # structural check and an app's code read them from the spec
            spec = mlmodel.get_spec()
            outs = [t for t in torch.utils._pytree.tree_leaves(traced(*args))
                    if isinstance(t, torch.Tensor)]
            for feature, out in zip(spec.description.output, outs, strict=False):
                if not feature.type.multiArrayType.shape:
                    feature.type.multiArrayType.shape.extend(list(out.shape))
            mlmodel = ct.models.MLModel(spec, weights_dir=mlmodel.weights_dir,
                                        skip_model_load=True)
            if Path(dest).exists():
                shutil.rmtree(dest)
            mlmodel.save(str(dest))
    except Exception as exc:  # noqa: BLE001 - tracing and coremltools raise many types
        raise ConversionError(f"coremltools could not convert the QAT model: "
                              f"{first_line(exc, 400)}") from exc
    return Path(dest), "coreml-qat-torchscript"


def coreml_structure(dest: Path) -> dict[str, Any]:
    """Inputs and outputs read from the saved spec (no Core ML runtime needed)."""
    import coremltools as ct

    spec = ct.utils.load_spec(str(dest))

    def shapes(features: Any) -> list[dict[str, Any]]:
        return [{"name": f.name, "shape": list(f.type.multiArrayType.shape)} for f in features]

    return {"inputs": shapes(spec.description.input), "outputs": shapes(spec.description.output),
            "spec_version": spec.specificationVersion}


@contextlib.contextmanager
def _quiet() -> Any:
    # The exporters print progress bars and banners on stdout; mobilec's --json needs it clean.
    with contextlib.redirect_stdout(io.StringIO()):
        yield
