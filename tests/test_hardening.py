"""Hostile and broken inputs: every one is refused with a clear, located message (exit 2),
nothing runs that was not asked for, nothing is allocated that cannot fit, nothing is written."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, write_recipe

from mobilec.errors import MobilecError
from mobilec.util.fs import sha256_path

# ----------------------------------------------------------------------------- model builders


def _tiny_onnx(path: Path, external: str | None = None) -> Path:
    """A real ONNX classifier (Flatten -> MatMul -> Softmax); weights optionally external."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    shape = [1, 8, 8, 1]
    w = np.random.default_rng(0).standard_normal((64, 10)).astype("float32")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"], axis=1),
         helper.make_node("MatMul", ["f", "w"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [shape[0], 10])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if external is None:
        onnx.save(model, str(path))
    else:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location="weights.bin", size_threshold=0)
        if external != "weights.bin":  # point the tensor somewhere else, as a hostile file would
            m = onnx.load(str(path), load_external_data=False)
            for t in m.graph.initializer:
                for entry in t.external_data:
                    if entry.key == "location":
                        entry.value = external
            onnx.save(m, str(path))
    return path


def _pooling_onnx(path: Path, shape: list[int]) -> Path:
    """A parameter-free ONNX model (GlobalAveragePool) with the given input shape."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["p"]),
         helper.make_node("Flatten", ["p"], ["y"], axis=1)],
        "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [shape[0], shape[1]])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def real_files(demo_keras: Path, demo_h5: Path, tmp_path_factory: pytest.TempPathFactory
               ) -> dict[str, bytes]:
    """One genuine file per format, for truncating."""
    from mobilec.util.tfenv import import_tf, import_tf_keras

    d = tmp_path_factory.mktemp("real")
    tf, tfk = import_tf(), import_tf_keras()
    small = tfk.Sequential([tfk.Input((8, 8, 1)), tfk.layers.Flatten(), tfk.layers.Dense(10)])
    tflite = tf.lite.TFLiteConverter.from_keras_model(small).convert()
    return {"keras": demo_keras.read_bytes(), "h5": demo_h5.read_bytes(),
            "onnx": _tiny_onnx(d / "tiny.onnx").read_bytes(), "tflite": tflite}


@pytest.fixture(scope="module")
def keras_builders() -> tuple:
    from mobilec.util.tfenv import import_keras3, import_tf_keras

    return import_keras3(), import_tf_keras()


def _compress_refuses(recipe: Path, *needles: str, **kw) -> MobilecError:
    """In-process compress must raise a MobilecError (exit 2) naming each needle, write nothing."""
    from mobilec.api import compress

    with pytest.raises(MobilecError) as info:
        compress(recipe, **kw)
    text = info.value.render()
    assert info.value.exit_code == 2, text
    for needle in needles:
        assert needle in text, f"{needle!r} not in: {text}"
    assert not (recipe.parent / "out").exists(), "a refused run wrote its output dir"
    return info.value


def _assert_clean_cli_failure(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, f"{needle!r} not in: {proc.stderr[-2000:]}"


# ----------------------------------------------------------------------------- broken files

DAMAGE = ["zero-byte", "truncated", "garbage", "garbage-with-valid-header"]
HEADERS = {"keras": None, "h5": b"\x89HDF\r\n\x1a\n", "onnx": b"\x08\x08\x12\x04junk",
           "tflite": b"\x1c\x00\x00\x00TFL3"}


def _damaged(kind: str, damage: str, real: bytes) -> bytes:
    rng = np.random.default_rng(len(kind) * 31 + len(damage))
    junk = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    if damage == "zero-byte":
        return b""
    if damage == "truncated":
        return real[: len(real) // 2]
    if damage == "garbage":
        return junk
    if kind == "keras":  # a zip that looks like a .keras, with a config that is not JSON
        import io

        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            zf.writestr("config.json", junk)
            zf.writestr("metadata.json", "{}")
            zf.writestr("model.weights.h5", junk)
        return buf.getvalue()
    return HEADERS[kind] + junk


@pytest.mark.parametrize("damage", DAMAGE)
@pytest.mark.parametrize("kind", ["keras", "h5", "onnx", "tflite"])
def test_broken_model_file_is_refused_and_nothing_is_written(
        kind: str, damage: str, real_files: dict[str, bytes], tmp_path: Path) -> None:
    model = tmp_path / f"model.{kind}"
    model.write_bytes(_damaged(kind, damage, real_files[kind]))
    before = sha256_path(model)
    err = _compress_refuses(write_recipe(tmp_path, model), str(model))
    text = err.render().lower()
    if damage == "zero-byte":
        assert "empty" in text
    elif kind == "tflite":
        assert "output of mobilec" in err.render()
    else:
        assert any(w in text for w in ("not a", "corrupt", "cannot", "unrecognised", "no graph",
                                       "could not")), text
    assert sha256_path(model) == before, "the input model was modified"


def test_keras_archive_with_corrupt_weights(demo_keras: Path, tmp_path: Path) -> None:
    """A real config with damaged weights gets as far as Keras, which must fail cleanly."""
    model = tmp_path / "model.keras"
    with zipfile.ZipFile(demo_keras) as src, zipfile.ZipFile(model, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(item, data[: len(data) // 3] if item.filename.endswith(".h5") else data)
    _compress_refuses(write_recipe(tmp_path, model), "Keras could not load", str(model))


def test_tflite_input_is_refused_by_validate_and_compress(real_files: dict[str, bytes],
                                                          tmp_path: Path) -> None:
    model = tmp_path / "model.tflite"
    model.write_bytes(real_files["tflite"])
    recipe = write_recipe(tmp_path, model)
    for command in ("validate", "compress"):
        _assert_clean_cli_failure(run_cli(command, str(recipe)), ".tflite is an output of mobilec",
                                  "point model.path at")
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- code in models


@pytest.fixture(scope="module")
def lambda_models(keras_builders: tuple, tmp_path_factory: pytest.TempPathFactory
                  ) -> dict[str, Path]:
    """Models whose Lambda layers would run Python code when deserialized."""
    keras, tfk = keras_builders
    d = tmp_path_factory.mktemp("lambda")
    inp = keras.Input((8, 8, 1))
    x = keras.layers.Flatten()(inp)
    x = keras.layers.Lambda(lambda t: t * 2.0, name="double")(x)
    keras.Model(inp, keras.layers.Dense(10, activation="softmax")(x)).save(d / "lambda.keras")
    # Hidden one level down: a Sequential (holding the Lambda) used as a layer.
    inner = keras.Sequential([keras.Input((64,)), keras.layers.Lambda(lambda t: t + 1.0,
                                                                      name="sneaky")], name="inner")
    inp = keras.Input((8, 8, 1))
    out = keras.layers.Dense(10)(inner(keras.layers.Flatten()(inp)))
    keras.Model(inp, out).save(d / "nested.keras")
    inp = tfk.Input((8, 8, 1))
    x = tfk.layers.Lambda(lambda t: t * 2.0, name="double")(tfk.layers.Flatten()(inp))
    tfk.Model(inp, tfk.layers.Dense(10, activation="softmax")(x)).save(str(d / "lambda.h5"),
                                                                      save_format="h5")
    return {p.name: p for p in d.iterdir()}


@pytest.mark.parametrize("name, layer", [("lambda.keras", "double"), ("nested.keras", "sneaky"),
                                         ("lambda.h5", "double")])
def test_lambda_layer_is_refused_without_the_flag(lambda_models: dict[str, Path], tmp_path: Path,
                                                  name: str, layer: str) -> None:
    proc = run_cli("compress", str(write_recipe(tmp_path, lambda_models[name])))
    _assert_clean_cli_failure(proc, f"Lambda layer(s) {layer}", "--unsafe-deserialization")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["lambda.keras", "lambda.h5"])
def test_lambda_layer_loads_with_the_flag(lambda_models: dict[str, Path], tmp_path: Path,
                                          name: str) -> None:
    from mobilec.api import compress

    recipe = write_recipe(tmp_path, lambda_models[name], stages=[{"convert": {"formats": ["tflite"]}}])
    report = compress(recipe, unsafe_deserialization=True, evaluate=False)
    assert report["exit_code"] == 0, json.dumps(report)[:3000]
    arts = [a for a in report["artifacts"] if a["status"] == "ok"]
    assert arts and all((tmp_path / "out" / a["path"]).is_file() for a in arts)


@pytest.mark.parametrize("location", ["../outside.bin", "ABSOLUTE", "link.bin"])
def test_onnx_external_data_outside_its_folder_is_refused(tmp_path: Path, location: str) -> None:
    secret = tmp_path / "outside.bin"
    secret.write_bytes(np.ones((64, 10), "float32").tobytes())
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    if location == "ABSOLUTE":
        location = str(secret)
    elif location == "link.bin":  # a symlink inside the folder that leads out of it
        (model_dir / "link.bin").symlink_to(secret)
    model = _tiny_onnx(model_dir / "model.onnx", external=location)
    err = _compress_refuses(write_recipe(tmp_path, model), str(model), "external data")
    assert "outside" in err.render() or "absolute" in err.render(), err.render()


def test_onnx_external_data_inside_its_folder_is_fine(tmp_path: Path) -> None:
    from mobilec.sources.onnx_input import read_model

    model = _tiny_onnx(tmp_path / "model.onnx", external="weights.bin")
    assert (tmp_path / "weights.bin").is_file()
    assert read_model(model).graph.initializer[0].name == "w"


# ----------------------------------------------------------------------------- hostile data

class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("payload", ["object-array", "code-on-unpickle"])
def test_npz_with_pickled_objects_is_refused_and_never_unpickled(demo_h5: Path, tmp_path: Path,
                                                                payload: str) -> None:
    marker = tmp_path / "pwned"
    x = np.empty(4, dtype=object)
    x[:] = [_Payload(marker) if payload == "code-on-unpickle" else {"a": i} for i in range(4)]
    np.savez(tmp_path / "eval.npz", x=x, y=np.arange(4))
    recipe = write_recipe(tmp_path, demo_h5, data={"source": "npz", "eval": "eval.npz"})
    _compress_refuses(recipe, "pickled", "eval.npz")
    assert not marker.exists(), "the pickle was loaded: code from a data file ran"


# ----------------------------------------------------------------------------- resource bombs


def _limited(max_bytes: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (max_bytes, max_bytes))
    return apply


def test_yaml_alias_bomb_is_refused_quickly_in_bounded_memory(tmp_path: Path) -> None:
    """Billion laughs: 10 levels of 10 aliases = 10^10 nodes; refused within 1 GiB of memory."""
    lines = ["version: 1", "model: {path: m.keras}", "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text("\n".join(lines) + "\n")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "mobilec.cli", "validate", str(recipe)],
                          capture_output=True, text=True, timeout=60, preexec_fn=_limited(1 << 30))
    _assert_clean_cli_failure(proc, "bomb.yaml", "alias bomb")
    assert time.monotonic() - start < 30


def test_recipe_input_shape_too_large_is_refused(tmp_path: Path) -> None:
    recipe = tmp_path / "big.yaml"
    recipe.write_text("version: 1\nmodel:\n  path: m.keras\n  input_shape: [1, 100000, 100000, 3]\n")
    _assert_clean_cli_failure(run_cli("validate", str(recipe)), "big.yaml:4", "model.input_shape",
                              "30000000000 elements")


@pytest.fixture(scope="module")
def huge_input_models(keras_builders: tuple, tmp_path_factory: pytest.TempPathFactory
                      ) -> dict[str, Path]:
    """Parameter-free models whose input is 60000x60000x3 (10.8 G elements, 43 GB a sample)."""
    keras, tfk = keras_builders
    d = tmp_path_factory.mktemp("huge")
    inp = keras.Input((60000, 60000, 3))
    k3 = keras.Model(inp, keras.layers.GlobalAveragePooling2D()(inp))
    k3.save(d / "huge.keras")
    k3.export(str(d / "huge_savedmodel"), format="tf_saved_model", verbose=False)
    inp = tfk.Input((60000, 60000, 3))
    tfk.Model(inp, tfk.layers.GlobalAveragePooling2D()(inp)).save(str(d / "huge.h5"), save_format="h5")
    _pooling_onnx(d / "huge.onnx", [1, 3, 60000, 60000])
    return {p.name: p for p in d.iterdir()}


@pytest.mark.parametrize("name", ["huge.keras", "huge.h5", "huge_savedmodel", "huge.onnx"])
def test_model_with_a_huge_input_is_refused_before_allocating(
        huge_input_models: dict[str, Path], tmp_path: Path, name: str) -> None:
    recipe = tmp_path / "huge.yaml"  # no data: nothing but the model itself could allocate
    recipe.write_text(f"version: 1\nmodel: {{path: '{huge_input_models[name]}'}}\n"
                      f"output: {{dir: '{tmp_path / 'out'}'}}\n")
    start = time.monotonic()
    _compress_refuses(recipe, "10,800,000,000 elements per sample", str(huge_input_models[name]))
    assert time.monotonic() - start < 60


# ----------------------------------------------------------------------------- failures inside load


def test_a_crash_inside_load_writes_nothing(demo_h5: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """An unexpected bug while loading stops the run (exit 3) before the output dir exists."""
    import mobilec.stages as stages
    from mobilec.api import compress
    from mobilec.errors import StageError

    real = stages.get_stage

    def broken(name: str):
        if name == "load":
            def load(state, config):
                raise MemoryError("simulated: a model too big for this host")
            return load
        return real(name)

    monkeypatch.setattr("mobilec.pipeline.get_stage", broken)
    with pytest.raises(StageError, match="load failed: internal error in load"):
        compress(write_recipe(tmp_path, demo_h5))
    assert not (tmp_path / "out").exists()


def test_outputs_get_ordinary_file_modes(tmp_path: Path) -> None:
    """Atomic writes go through mkstemp (mode 0600); outputs must get 0666 & ~umask like any file."""
    from mobilec.util.fs import atomic_write_text

    status = Path("/proc/self/status")
    if not status.exists():
        pytest.skip("needs /proc to read the umask without changing it")
    umask = int(next(ln.split()[1] for ln in status.read_text().splitlines()
                     if ln.startswith("Umask:")), 8)
    atomic_write_text(tmp_path / "report.json", json.dumps({}))
    assert (tmp_path / "report.json").stat().st_mode & 0o777 == 0o666 & ~umask
