"""Delegate manifests: what runs each artifact on the device, and how to load it.

For every placed artifact, `<artifact file name>.delegate.json` beside it says which
delegate to use, with which options, what it falls back to, which of the model's
ops that delegate can take (measured by mobilec.delegates.opcompat), the real input/output
names, and the warnings (NNAPI's deprecation, ops that fall back). A `.tflite` also
carries the hint inside the file, as a flatbuffer metadata entry named
`mobilec.delegate`, so an app can read it from the model it ships. report.md gets a
ready-to-paste loading snippet per target (Kotlin / Swift).

Hooks: convert calls `prepare_for_placement` just before placing each artifact and
`write_manifests` once everything is placed; report calls `markdown_sections`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mobilec._version import __version__
from mobilec.policy.targets import NNAPI_CHECK_API, NNAPI_DEPRECATED_API, NNAPI_WARNING, TARGETS
from mobilec.state import Artifact, ModelState
from mobilec.util.fs import atomic_write_text, remove_artifact

METADATA_NAME = "mobilec.delegate"
MANIFEST_SUFFIX = ".delegate.json"
MANIFEST_VERSION = 1

FALLBACK_TEXT = {"xnnpack": "the XNNPACK CPU delegate", "cpu_only": "Core ML on the CPU only",
                 None: "the CPU"}


# ----------------------------------------------------------------------------- convert hooks


def prepare_for_placement(state: ModelState, art: Artifact, built: Path) -> Path:
    """Measure op compatibility for the artifact's delegate and return the file to place.

    For .tflite that is a copy of the built (and verified) file with the delegate hint
    in its metadata; the copy is loaded once more so a broken write never gets placed.
    """
    from mobilec.delegates import opcompat

    key = ("op_compat", str(built), art.delegate)
    if key not in state.memo:
        try:
            state.memo[key] = opcompat.check(built, art.format, art.delegate)
        except Exception as exc:  # noqa: BLE001 - a checker failure must not lose the artifact
            state.memo[key] = {"error": f"{type(exc).__name__}: {str(exc).strip()[:200]}"}
    compat = state.memo[key]
    if "error" not in compat:
        art.op_compat = opcompat.summary(compat)
    warnings = _warnings(art, compat)
    for w in warnings["notes"]:
        if w not in art.notes:
            art.notes.append(w)
    manifest = {
        "mobilec_manifest": MANIFEST_VERSION, "mobilec_version": __version__,
        "artifact": art.path.name, "format": art.format, "target": art.target,
        "role": art.role, "quantization": art.quantization, "precision": art.precision,
        "delegate": art.delegate, "fallback": art.fallback,
        "options": _options(state, art), "input_layout": art.input_layout,
        **_io(built, art.format), "op_compatibility": compat,
        "warnings": warnings["all"], "docs": _docs(art),
    }
    if art.io_quant is not None:
        manifest["io_quant"] = art.io_quant
    if art.delegate == "nnapi":
        manifest["deprecation"] = {"delegate": "nnapi", "from_android": 15,
                                   "from_api_level": NNAPI_DEPRECATED_API,
                                   "then_runs_on": art.fallback}
    art.manifest = manifest
    if art.format != "tflite":
        return built
    hinted = state.work_dir / "hinted" / (art.target or "baseline") / built.name
    hinted.parent.mkdir(parents=True, exist_ok=True)
    try:
        embed_tflite_hint(built, hinted, tflite_hint(manifest))
    except Exception as exc:  # noqa: BLE001 - ship the verified file rather than none
        art.notes.append(f"delegate hint not written into the .tflite metadata: {exc}"[:200])
        return built
    return hinted


def write_manifests(state: ModelState) -> list[Path]:
    """`<artifact>.delegate.json` beside every placed artifact (after renames are final)."""
    written: list[Path] = []
    for art in state.artifacts:
        manifest = art.manifest
        if manifest is None or not art.path.exists():
            continue
        manifest = {**manifest, "artifact": art.path.name, "status": art.status}
        if art.error:
            manifest["error"] = art.error
            manifest["warnings"] = [f"do not ship: {art.error}", *manifest["warnings"]]
        path = manifest_path(art.path)
        for stale in _twins(state, art):
            if stale != path and stale.exists():
                remove_artifact(stale)
        atomic_write_text(path, json.dumps(manifest, indent=2, default=str) + "\n")
        try:
            art.delegate_manifest = str(path.relative_to(state.out_dir))
        except ValueError:
            art.delegate_manifest = str(path)
        written.append(path)
    return written


def manifest_path(artifact: Path) -> Path:
    """`digits-int8.tflite` -> `digits-int8.tflite.delegate.json`.

    The whole file name, not the stem: the cpu target ships `digits-int8.tflite` and
    `digits-int8.onnx` side by side, and each needs its own manifest.
    """
    return artifact.with_name(artifact.name + MANIFEST_SUFFIX)


def _twins(state: ModelState, art: Artifact) -> list[Path]:

    return [manifest_path(art.path.with_name(state.artifact_name(art.format, art.quantization, u)))
            for u in (False, True)]


# ----------------------------------------------------------------------------- content


def _options(state: ModelState, art: Artifact) -> dict[str, Any]:
    prof = TARGETS.get(art.target or "")
    options: dict[str, Any] = dict(prof.options) if prof else {}
    if art.format == "coreml":
        from mobilec.formats.coreml import coreml_config

        cfg = coreml_config(state)
        options["compute_units"] = cfg.compute_units  # the recipe overrides the profile
        options.update({k: v for k, v in (art.coreml or {}).items()
                        if k != "compute_units"})
    elif not prof:
        options["num_threads"] = 1 if art.delegate in ("xnnpack", "ort-cpu") else None
        options = {k: v for k, v in options.items() if v is not None}
    return options


def _docs(art: Artifact) -> str:
    prof = TARGETS.get(art.target or "")
    if prof and prof.docs:
        return prof.docs
    return {"tflite": TARGETS["cpu"].docs, "onnx": "https://onnxruntime.ai/docs/execution-providers/",
            "coreml": TARGETS["ios-coreml"].docs}.get(art.format, "")


def _warnings(art: Artifact, compat: dict[str, Any]) -> dict[str, list[str]]:
    """(every warning for the manifest, the short ones that also go into the report's note)."""
    notes: list[str] = []
    extra: list[str] = []
    fallback = FALLBACK_TEXT.get(art.fallback, art.fallback or "the CPU")
    if art.delegate == "nnapi":
        notes.append("NNAPI is deprecated from Android 15 (API 35): there this model runs on "
                     f"{fallback}")
        if art.quantization not in ("int8", "int8-io", "qat"):
            extra.append(f"{art.quantization} ops: NNAPI accelerators want full-integer (int8) "
                         "models; float ops usually end up on the CPU")
        need = compat.get("min_android_api")
        if need:
            extra.append(f"the NNAPI-supported ops need Android API {need}+ "
                         f"(checked against API {NNAPI_CHECK_API})")
    bad = compat.get("unsupported") or []
    if bad:
        n_bad = compat["total"] - compat["supported"]
        notes.append(f"{art.delegate} delegate cannot run {', '.join(bad)} ({n_bad} of "
                     f"{compat['total']} ops): they fall back to {fallback}")
        extra.append("each fallback splits the graph: tensors are copied between the delegate "
                     "and the CPU at every boundary, which can cost more than it saves")
    if "error" in compat:
        extra.append(f"op compatibility could not be measured: {compat['error']}")
    if art.delegate == "gpu" and art.quantization in ("int8", "int8-io", "dynamic", "int4"):
        extra.append("the GPU delegate computes in float: int8 weights are dequantized on load")
    eps = compat.get("execution_providers") or {}
    for ep, info in eps.items():
        if info.get("unsupported_ops"):
            extra.append(f"onnxruntime {ep} EP: {', '.join(info['unsupported_ops'])} not "
                         f"supported ({info['supported_nodes']}/{info['total_nodes']} nodes, "
                         f"{info['partitions']} partition(s))")
    if art.delegate == "nnapi":  # the manifest gets the long form of the deprecation note
        notes_for_manifest = [NNAPI_WARNING, *notes[1:]]
    else:
        notes_for_manifest = notes
    return {"notes": notes, "all": notes_for_manifest + extra}


def _io(path: Path, fmt: str) -> dict[str, list[dict[str, Any]]]:
    """The artifact's own input/output names, shapes and dtypes (what the app must use)."""
    try:
        if fmt == "tflite":
            return _tflite_io(path)
        if fmt == "onnx":
            return _onnx_io(path)
        if fmt == "coreml":
            from mobilec.formats.coreml import describe_io

            return describe_io(path)
    except Exception:  # noqa: BLE001 - the manifest is still useful without I/O details
        pass
    return {"inputs": [], "outputs": []}


def _tflite_io(path: Path) -> dict[str, list[dict[str, Any]]]:
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path))
    sigs = it.get_signature_list()

    def row(name: str, d: dict[str, Any]) -> dict[str, Any]:
        out = {"name": name, "shape": [int(x) for x in d["shape"]],
               "dtype": np.dtype(d["dtype"]).name}
        scale, zero = d.get("quantization", (0.0, 0))
        if np.dtype(d["dtype"]).kind in "iu" and scale:
            out["quantization"] = {"scale": float(scale), "zero_point": int(zero)}
        return out

    if sigs:
        runner = it.get_signature_runner(next(iter(sigs)))
        return {"inputs": [row(n, d) for n, d in runner.get_input_details().items()],
                "outputs": [row(n, d) for n, d in runner.get_output_details().items()]}
    return {"inputs": [row(d["name"], d) for d in it.get_input_details()],
            "outputs": [row(d["name"], d) for d in it.get_output_details()]}


def _onnx_io(path: Path) -> dict[str, list[dict[str, Any]]]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}

    def row(v: Any) -> dict[str, Any]:
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in t.shape.dim]
        return {"name": v.name, "shape": dims,
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name}

    return {"inputs": [row(v) for v in graph.input if v.name not in inits],
            "outputs": [row(v) for v in graph.output]}


# ----------------------------------------------------------------------------- .tflite metadata


def tflite_hint(manifest: dict[str, Any]) -> dict[str, Any]:
    """The part of the manifest an app needs at load time (kept small: it ships in the model)."""
    compat = manifest.get("op_compatibility") or {}
    return {"mobilec_manifest": MANIFEST_VERSION, "target": manifest["target"],
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


# ----------------------------------------------------------------------------- report.md


def markdown_sections(state: ModelState) -> list[str]:
    """'## Loading on device': per target a snippet with the artifact's real names."""
    blocks: list[str] = []
    for target in dict.fromkeys(state.recipe.targets):
        arts = [a for a in state.artifacts if a.target == target and a.manifest
                and a.path.exists()]
        for art in _main_artifacts(arts):
            blocks.append(_snippet(state, art))
    if not blocks:
        return []
    head = ("## Loading on device\n\nReady to paste; file names, input/output names and "
            "shapes are the artifacts' own. Each artifact's `.delegate.json` has the options, "
            "the op compatibility and the fallback.")
    return [head + "\n\n" + "\n\n".join(blocks)]


def _main_artifacts(arts: list[Artifact]) -> list[Artifact]:
    """One artifact per format: the target's own quantization, not the float32 extra."""
    chosen: dict[str, Artifact] = {}
    for a in sorted(arts, key=lambda a: (a.status != "ok", a.quantization == "float32")):
        chosen.setdefault(a.format, a)
    return list(chosen.values())


def _snippet(state: ModelState, art: Artifact) -> str:
    m = art.manifest
    title = f"### {art.target}: `{art.path.name}` ({art.quantization}, {art.delegate}"
    title += f" → {art.fallback})" if art.fallback else ")"
    lines = [title, ""]
    if art.status != "ok":
        lines += [f"> **{art.status}**: {art.error}", ""]
    for w in m["warnings"][:1] if art.delegate == "nnapi" else []:
        lines += [f"> {w}", ""]
    if art.format == "coreml":
        lines += ["```swift", _swift(art, m), "```"]
    elif art.format == "onnx":
        lines += ["```kotlin", _kotlin_ort(art, m), "```"]
    else:
        lines += ["```kotlin", _kotlin_tflite(art, m), "```"]
    return "\n".join(lines)


def _shape_text(t: dict[str, Any]) -> str:
    """The shape an app feeds: dynamic (batch) dimensions as 1."""
    return "[" + ", ".join(str(d if isinstance(d, int) and d > 0 else 1) for d in t["shape"]) + "]"


def _numel(t: dict[str, Any]) -> int:
    n = 1
    for d in t["shape"]:
        n *= d if isinstance(d, int) and d > 0 else 1
    return n


_KT_BYTES = {"float32": 4, "float16": 2, "int8": 1, "uint8": 1, "int32": 4, "int64": 8}


def _kotlin_tflite(art: Artifact, m: dict[str, Any]) -> str:
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


def _kotlin_ort(art: Artifact, m: dict[str, Any]) -> str:
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


def _swift(art: Artifact, m: dict[str, Any]) -> str:
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
