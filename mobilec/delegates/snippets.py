"""Ready-to-paste loading code per runtime (Kotlin for LiteRT and onnxruntime on Android,
Swift for Core ML), filled with an artifact's real file, input and output names and shapes.
Each format names its snippet (Format.loader_snippet); report.md collects them.
"""

from __future__ import annotations

from typing import Any

from mobilec.state import Artifact


def _shape_text(t: dict[str, Any]) -> str:
    """The shape an app feeds: dynamic (batch) dimensions as 1."""
    return "[" + ", ".join(str(d if isinstance(d, int) and d > 0 else 1) for d in t["shape"]) + "]"


def _numel(t: dict[str, Any]) -> int:
    n = 1
    for d in t["shape"]:
        n *= d if isinstance(d, int) and d > 0 else 1
    return n


_KT_BYTES = {"float32": 4, "float16": 2, "int8": 1, "uint8": 1, "int32": 4, "int64": 8}


def kotlin_tflite(art: Artifact, m: dict[str, Any]) -> str:
    ins, outs = m["inputs"], m["outputs"]
    opts = m["options"]
    lines = [f"// app/src/main/assets/{art.path.name}",
             "import org.tensorflow.lite.Interpreter",
             "import org.tensorflow.lite.support.common.FileUtil",
             "import java.nio.ByteBuffer",
             "import java.nio.ByteOrder"]
    if art.delegate == "nnapi":
        pref = "SUSTAINED_SPEED" if opts.get("execution_preference") == "sustained_speed" \
            else "FAST_SINGLE_ANSWER"
        lines += [
            "import android.os.Build",
            "import org.tensorflow.lite.nnapi.NnApiDelegate", "",
            "val options = Interpreter.Options().setNumThreads(4)",
            "// NNAPI is deprecated from Android 15 (API 35): use it on API 27-34, XNNPACK CPU after.",
            "val nnapi = if (Build.VERSION.SDK_INT in 27..34) NnApiDelegate(",
            "    NnApiDelegate.Options()",
            f"        .setAllowFp16({str(bool(opts.get('allow_fp16'))).lower()})",
            f"        .setExecutionPreference(NnApiDelegate.Options.EXECUTION_PREFERENCE_{pref})",
            f"        .setMaxNumberOfDelegatedPartitions({opts.get('max_number_delegated_partitions', 3)})",
            ") else null",
            "nnapi?.let { options.addDelegate(it) }  // ops NNAPI cannot take run on the CPU",
        ]
    elif art.delegate == "gpu":
        lines += [
            "import org.tensorflow.lite.gpu.CompatibilityList",
            "import org.tensorflow.lite.gpu.GpuDelegate", "",
            "val compat = CompatibilityList()",
            "val options = Interpreter.Options()",
            "val gpu = if (compat.isDelegateSupportedOnThisDevice) "
            "GpuDelegate(compat.bestOptionsForThisDevice) else null",
            "if (gpu != null) options.addDelegate(gpu)  // ops the GPU cannot take run on the CPU",
            "else options.setNumThreads(4)               // no usable GPU: XNNPACK CPU",
        ]
    else:
        lines += ["", "val options = Interpreter.Options().setNumThreads(4).setUseXNNPACK(true)"]
    lines.append(f'val interpreter = Interpreter(FileUtil.loadMappedFile(context, "{art.path.name}"), '
                 "options)")
    feeds, fetches = [], []
    for t in ins:
        var = _var(t["name"])
        size = _numel(t) * _KT_BYTES.get(t["dtype"], 4)
        q = t.get("quantization")
        qtext = f", scale {q['scale']:.6g} zero point {q['zero_point']}" if q else ""
        lines.append(f"val {var} = ByteBuffer.allocateDirect({size}).order(ByteOrder.nativeOrder())"
                     f'  // "{t["name"]}" {t["dtype"]} {_shape_text(t)}{qtext}')
        feeds.append(f'"{t["name"]}" to {var}')
    for t in outs:
        var = _var(t["name"])
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in t["shape"]]
        if t["dtype"] == "float32" and len(shape) == 2:
            lines.append(f"val {var} = Array({shape[0]}) {{ FloatArray({shape[1]}) }}"
                         f'  // "{t["name"]}" {_shape_text(t)}')
        else:
            lines.append(f"val {var} = ByteBuffer.allocateDirect({_numel(t) * _KT_BYTES.get(t['dtype'], 4)})"
                         f'.order(ByteOrder.nativeOrder())  // "{t["name"]}" {t["dtype"]} '
                         f"{_shape_text(t)}")
        fetches.append(f'"{t["name"]}" to {var}')
    lines.append(f"interpreter.runSignature(mapOf({', '.join(feeds)}), mapOf({', '.join(fetches)}))")
    close = {"nnapi": "; nnapi?.close()", "gpu": "; gpu?.close()"}.get(art.delegate or "", "")
    lines.append(f"// when done: interpreter.close(){close}")
    return "\n".join(lines)


def kotlin_ort(art: Artifact, m: dict[str, Any]) -> str:
    ins, outs = m["inputs"], m["outputs"]
    t = ins[0] if ins else {"name": "input", "shape": [1], "dtype": "float32"}
    out = outs[0]["name"] if outs else "output"
    shape = ", ".join(f"{d if isinstance(d, int) and d > 0 else 1}L" for d in t["shape"])
    return "\n".join([
        f"// app/src/main/assets/{art.path.name}  (onnxruntime-android)",
        "import ai.onnxruntime.OnnxTensor",
        "import ai.onnxruntime.OrtEnvironment",
        "import ai.onnxruntime.OrtSession",
        "import java.nio.FloatBuffer", "",
        "val env = OrtEnvironment.getEnvironment()",
        "val opts = OrtSession.SessionOptions().apply { setIntraOpNumThreads(4) }  "
        "// CPUExecutionProvider",
        f'val session = env.createSession(context.assets.open("{art.path.name}").readBytes(), opts)',
        f"val input = OnnxTensor.createTensor(env, FloatBuffer.allocate({_numel(t)}), "
        f'longArrayOf({shape}))  // "{t["name"]}" {t["dtype"]} {_shape_text(t)}',
        f'session.run(mapOf("{t["name"]}" to input)).use {{ result ->',
        f'    val {_var(out)} = result.get("{out}").get().value  // "{out}"',
        "}",
    ])


_UNITS = {"ALL": ".all", "CPU_ONLY": ".cpuOnly", "CPU_AND_GPU": ".cpuAndGPU",
          "CPU_AND_NE": ".cpuAndNeuralEngine"}


def swift(art: Artifact, m: dict[str, Any]) -> str:
    ins, outs = m["inputs"], m["outputs"]
    stem = art.path.name.rsplit(".", 1)[0]
    units = _UNITS.get(m["options"].get("compute_units", "ALL"), ".all")
    lines = [f"// Add {art.path.name} to the Xcode target; Xcode compiles it to {stem}.mlmodelc",
             "import CoreML", "",
             "let config = MLModelConfiguration()",
             f"config.computeUnits = {units}",
             f'let url = Bundle.main.url(forResource: "{stem}", withExtension: "mlmodelc")!',
             "let model: MLModel",
             "do { model = try MLModel(contentsOf: url, configuration: config) }",
             "catch {  // fallback: CPU only",
             "    let cpu = MLModelConfiguration(); cpu.computeUnits = .cpuOnly",
             "    model = try MLModel(contentsOf: url, configuration: cpu)",
             "}"]
    feeds = []
    for t in ins:
        var = _var(t["name"])
        dims = ", ".join(str(d) for d in t["shape"])
        dtype = ".float16" if t["dtype"] == "float16" else ".float32"
        lines.append(f"let {var} = try MLMultiArray(shape: [{dims}], dataType: {dtype})"
                     f'  // "{t["name"]}"')
        feeds.append(f'"{t["name"]}": MLFeatureValue(multiArray: {var})')
    lines.append("let out = try model.prediction(from: MLDictionaryFeatureProvider(dictionary: "
                 f"[{', '.join(feeds)}]))")
    for t in outs:
        lines.append(f'let {_var(t["name"])} = out.featureValue(for: "{t["name"]}")!'
                     f".multiArrayValue!  // {_shape_text(t)}")
    return "\n".join(lines)


def _var(name: str) -> str:
    import re

    parts = [p for p in re.split(r"\W+", name) if p]
    if not parts:
        return "x"
    text = parts[0].lower() + "".join(p.capitalize() for p in parts[1:])
    text = text.replace("_", "")
    return text if not text[0].isdigit() else f"t{text}"


def executorch_link_line(art: Artifact) -> str:
    """Which ExecuTorch libraries this .pte needs: its delegate's backend and the kernel
    libraries its operator table calls outside the delegate (what verification loaded)."""
    d = art.delegation or {}
    backend = {"XnnpackBackend": "xnnpack_backend", "CoreMLBackend": "coremldelegate"}.get(
        d.get("backend") or "")
    libs = [*([backend] if backend else []), *(d.get("kernels") or [])]
    if not libs:
        return "needs no delegate and no kernel library outside it"
    return "needs: " + ", ".join(libs) + (
        " (a runtime without quantized_ops_lib fails to load it: error 0x14)"
        if "quantized_ops_lib" in libs else "")


def kotlin_executorch(art: Artifact, m: dict[str, Any]) -> str:
    """ExecuTorch's Android runtime (org.pytorch.executorch): Module.load + forward."""
    ins = m["inputs"] or [{"name": "input", "shape": [1], "dtype": "float32"}]
    lines = [f"// app/src/main/assets/{art.path.name}  (executorch-android; copy the asset to a "
             "file first: Module.load takes a path)",
             f"// {executorch_link_line(art)}",
             "import org.pytorch.executorch.EValue",
             "import org.pytorch.executorch.Module",
             "import org.pytorch.executorch.Tensor", "",
             f'val module = Module.load(File(context.filesDir, "{art.path.name}").path)']
    for i, t in enumerate(ins):
        shape = ", ".join(f"{d if isinstance(d, int) and d > 0 else 1}L" for d in t["shape"])
        kind = "FloatArray" if t["dtype"].startswith("float") else "LongArray" \
            if t["dtype"] == "int64" else "IntArray"
        lines.append(f"val in{i} = Tensor.fromBlob({kind}({_numel(t)}), longArrayOf({shape}))"
                     f'  // "{t["name"]}" {t["dtype"]} {_shape_text(t)}')
    args = ", ".join(f"EValue.from(in{i})" for i in range(len(ins)))
    lines += [f"val outputs = module.forward({args})",
              "val scores = outputs[0].toTensor().dataAsFloatArray"]
    return "\n".join(lines)


def swift_executorch(art: Artifact, m: dict[str, Any]) -> str:
    """ExecuTorch's iOS runtime (ExecuTorch Swift package, Core ML backend linked)."""
    ins = m["inputs"] or [{"name": "input", "shape": [1], "dtype": "float32"}]
    t = ins[0]
    shape = ", ".join(str(d if isinstance(d, int) and d > 0 else 1) for d in t["shape"])
    return "\n".join([
        f"// {art.path.name} in the app bundle; link executorch, backend_coreml and "
        "backend_xnnpack (the fallback)",
        f"// {executorch_link_line(art)}",
        "import ExecuTorch", "",
        f'let path = Bundle.main.path(forResource: "{art.path.stem}", ofType: "pte")!',
        "let module = Module(filePath: path)",
        "try module.load(\"forward\")",
        f"let input = Tensor<Float>([Float](repeating: 0, count: {_numel(t)}), shape: [{shape}])"
        f'  // "{t["name"]}" {t["dtype"]}',
        "let outputs = try module.forward(input)",
    ])


def swift_coreai(art: Artifact, m: dict[str, Any]) -> str:
    """Apple's Core AI framework (iOS 27+): AIModel(contentsOf:), loadFunction(named:),
    run(inputs:) with NDArrays named as the .aimodel's own function inputs."""
    ins = m["inputs"] or [{"name": "input", "shape": [1], "dtype": "float32"}]
    units = {"ALL": "", "CPU_ONLY": " (CPU only: pass SpecializationOptions to the init)"}
    lines = [f"// Add {art.path.name} (a folder) to the Xcode target; Xcode compiles it "
             "ahead of time",
             f"// Core AI places each op on the Neural Engine, GPU or CPU"
             f"{units.get(m['options'].get('compute_units', 'ALL'), '')}",
             "import CoreAI", "",
             f'let url = Bundle.main.url(forResource: "{art.path.stem}", '
             'withExtension: "aimodel")!',
             "let model = try await AIModel(contentsOf: url)",
             'guard let function = try model.loadFunction(named: "main") else { '
             'fatalError("no main function") }']
    feeds = []
    for t in ins:
        var = _var(t["name"])
        scalar = "Float16" if t["dtype"] == "float16" else "Float"
        lines.append(f"let {var} = NDArray(shape: {_shape_text(t)}, scalars: [{scalar}]"
                     f"(repeating: 0, count: {_numel(t)}))  // \"{t['name']}\" {t['dtype']}")
        feeds.append(f'"{t["name"]}": {var}')
    lines.append(f"let outputs = try await function.run(inputs: [{', '.join(feeds)}])")
    for t in m["outputs"]:
        lines.append(f'let {_var(t["name"])} = outputs["{t["name"]}"]  // {t["dtype"]} '
                     f"{_shape_text(t)}")
    return "\n".join(lines)
