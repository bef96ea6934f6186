"""Shared fixtures: small real models built once per session, and ways to run mobilec."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# pytest-xdist workers set COLUMNS=80 and LINES=24; the CLI children inherit them, and a
# child in a 160-column tmux window then lays its table out for 80 (test_ci_cli's tmux
# tests failed only under `make test`'s two workers). A serial run has neither.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.pop("COLUMNS", None)
    os.environ.pop("LINES", None)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


def shared_session_build(tmp_path_factory: pytest.TempPathFactory, name: str,
                         build: Callable[[Path], Path]) -> Path:
    """`build(directory)` once per test run, returning the path it made.

    Under pytest-xdist (`make test` runs two workers) every worker has its own session, so a
    session fixture would train its model once per worker. Here the first worker to ask builds
    it in the run's shared temp root while holding a lock; the others wait and reuse the
    finished files (a `.done` marker is written last, so a half-built one is never reused)."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return build(tmp_path_factory.mktemp(name))
    root = tmp_path_factory.getbasetemp().parent / "shared"
    root.mkdir(exist_ok=True)
    target, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir()
            made = build(target)
            done.write_text(str(made.relative_to(target)))
        return target / done.read_text()


@pytest.fixture(scope="session")
def demo_keras(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo digits CNN (Keras 3 .keras, ~85k params), trained once per session."""

    def build(directory: Path) -> Path:
        import make_demo_model

        from mobilec.util.tfenv import configure_environment

        configure_environment()
        model = make_demo_model.build()
        make_demo_model.train(model)
        path = directory / "digits.keras"
        model.save(path)
        return path

    return shared_session_build(tmp_path_factory, "demo_keras", build)


@pytest.fixture(scope="session")
def demo_h5(demo_keras: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same network as a tf_keras .h5 (the form tf_keras/Keras 2 users have)."""

    def build(directory: Path) -> Path:
        from mobilec.sources.keras_bridge import keras3_to_tf_keras
        from mobilec.util.tfenv import import_keras3

        k3 = import_keras3().saving.load_model(demo_keras, compile=False)
        path = directory / "digits.h5"
        keras3_to_tf_keras(k3).save(str(path), save_format="h5")
        return path

    return shared_session_build(tmp_path_factory, "demo_h5", build)


@pytest.fixture(scope="session")
def demo_savedmodel(demo_keras: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same network exported as a plain SavedModel (Keras 3 model.export)."""

    def build(directory: Path) -> Path:
        from mobilec.util.tfenv import import_keras3

        k3 = import_keras3().saving.load_model(demo_keras, compile=False)
        path = directory / "digits_savedmodel"
        k3.export(str(path), format="tf_saved_model", verbose=False)
        return path

    return shared_session_build(tmp_path_factory, "demo_savedmodel", build)


def write_recipe(directory: Path, model: Path, *, name: str = "t", stages: list[Any] | None = None,
                 targets: list[str] | None = None, data: dict[str, Any] | None = None,
                 **extra: Any) -> Path:
    """A recipe file in `directory` (data defaults to the built-in digits)."""
    recipe: dict[str, Any] = {
        "version": 1, "name": name, "model": {"path": str(model)},
        "data": data if data is not None else {"source": "digits", "eval_samples": 360,
                                               "calibration_samples": 100},
        "stages": stages or [], "targets": targets or ["cpu"],
        "output": {"dir": str(directory / "out"), "report": ["json", "md"]},
    }
    recipe.update(extra)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.fixture
def recipe_factory(tmp_path: Path):
    def make(model: Path, **kw: Any) -> Path:
        return write_recipe(tmp_path, model, **kw)

    return make


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the real `mobilec` command in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "mobilec.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=full_env)


def signal_at_stage(args: list[str], stage: str, delay: float, sig: int, *,
                    cwd: Path | None = None, env: dict[str, str] | None = None
                    ) -> tuple[int, str, float]:
    """Run `mobilec <args>`; `delay` s after '[mobilec] <stage>: started' on stderr send
    `sig`. Returns (exit code, stderr, seconds from the signal to the exit)."""
    proc = subprocess.Popen([sys.executable, "-m", "mobilec.cli", *args], cwd=cwd, env=env,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines: list[str] = []
    sent_at = None
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if f"[mobilec] {stage}: started" in line:
                time.sleep(delay)
                sent_at = time.monotonic()
                proc.send_signal(sig)
                break
        rest = proc.communicate(timeout=120)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = "".join(lines) + rest
    assert sent_at is not None, f"stage {stage} never started:\n{stderr[-3000:]}"
    return proc.returncode, stderr, time.monotonic() - sent_at


def can_mount() -> bool:
    """Whether tests may mount a tmpfs (a small or read-only file system): root on Linux."""
    return os.geteuid() == 0 and shutil.which("mount") is not None and sys.platform == "linux"


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at `path` (skips the test if it cannot be mounted)."""
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def torch_state(module: Any, train: tuple[Any, Any], evaluate: tuple[Any, Any], calibration: Any,
                tmp: Path) -> Any:
    """A ModelState for a PyTorch module as load leaves it (a dynamic-batch program, NCHW)."""
    from mobilec.recipe.schema import Recipe
    from mobilec.sources.data import Dataset, Split
    from mobilec.sources.pytorch import describe_io, export_program
    from mobilec.state import ModelState

    xe = evaluate[0]
    state = ModelState(recipe=Recipe.model_validate({"model": {"path": "model.pt2"}}),
                       out_dir=tmp / "out", work_dir=tmp / "work")
    state.torch_module = module
    state.torch_program = export_program(module, (xe[:1],), dynamic_batch=True)
    state.inputs, state.outputs = describe_io(state.torch_program)
    state.input_layout = "NCHW"
    state.data = Dataset(Split(*train), Split(*evaluate), Split(calibration))
    return state


def compress(recipe: Path, **kw: Any) -> dict[str, Any]:
    """In-process compress (TensorFlow is imported once per test session)."""
    from mobilec.api import compress as _compress

    return _compress(recipe, **kw)


#: The status of a Core ML artifact here: run and measured on macOS; elsewhere structure
#: checked only, and reported `unverified` (never `ok`).
COREML_STATUS = "ok" if sys.platform == "darwin" else "unverified"


def artifact(report: dict[str, Any], fmt: str, quant: str, target: str | None = "cpu"
             ) -> dict[str, Any]:
    for a in report["artifacts"]:
        if a["format"] == fmt and a["quantization"] == quant and (target is None or a["target"] == target):
            return a
    raise AssertionError(f"no {fmt} {quant} artifact for {target}: "
                         f"{[(a['format'], a['quantization'], a['target']) for a in report['artifacts']]}")


def read_report(out_dir: Path) -> dict[str, Any]:
    return json.loads((out_dir / "report.json").read_text())


# An int8 trap: three pixels that are always 0 in the digits get input weights of 1000 in the
# first Dense layer. The float model never notices; int8 calibration sees no signal there, but
# the layer's weight scale is set by the outliers, and every other weight rounds to zero.
DEAD_PIXELS = [0, 32, 39]  # always 0 in scikit-learn's digits (checked in the fixture)
OUTLIER = 1000.0


@pytest.fixture(scope="session")
def outlier_h5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    def build(directory: Path) -> Path:
        from mobilec.sources.data import digits_split
        from mobilec.util.tfenv import import_tf_keras

        keras = import_tf_keras()
        train, _ = digits_split()
        flat = train.x.reshape(len(train.x), -1)
        assert np.all(flat[:, DEAD_PIXELS] == 0)
        keras.utils.set_random_seed(0)
        x = keras.Input((8, 8, 1), name="image")
        h = keras.layers.Flatten(name="flat")(x)
        h = keras.layers.Dense(32, activation="relu", name="embed")(h)
        h = keras.layers.Dense(256, activation="relu", name="fc1")(h)
        h = keras.layers.Dense(128, activation="relu", name="fc2")(h)
        model = keras.Model(x, keras.layers.Dense(10, activation="softmax", name="probs")(h))
        kernel, bias = model.get_layer("embed").get_weights()
        kernel[DEAD_PIXELS, :] = OUTLIER
        model.get_layer("embed").set_weights([kernel, bias])
        model.compile(keras.optimizers.Adam(2e-3), "sparse_categorical_crossentropy")
        model.fit(train.x, train.y, epochs=10, batch_size=32, verbose=0)
        assert np.all(model.get_layer("embed").get_weights()[0][DEAD_PIXELS] == OUTLIER)
        path = directory / "outlier.h5"
        model.save(str(path), save_format="h5")
        return path

    return shared_session_build(tmp_path_factory, "outlier", build)


# ----------------------------------------------------------------------------- pytest-xdist
# `make test` runs the suite on two workers with `--dist loadfile`: each file is one unit of
# work, so its module fixtures are built once, on one worker. The tests that time a signal
# against a running child are one unit together, so they never overlap each other.
# (xdist's own `loadgroup` marks do nothing under pytest 9: it renames `item._nodeid`, which
# pytest 9 no longer reads; hence a scheduler of our own below.)
SERIAL_GROUP = "signals"
SERIAL_FILES = {"test_interrupts.py", "test_progress.py", "test_file_safety.py",
                "test_ci_cli.py", "test_output_safety.py"}
SERIAL_TESTS = {"test_crash_and_hang_are_isolated_interrupt_resumes"}
#: Files that take minutes: handed out first, so the two workers finish together.
#: (Seconds of one idle-run estimate; only the order matters.)
LONG_FILES = {"test_batch.py": 200, "test_pytorch.py": 200, "test_torch_training.py": 200,
              "test_coreai.py": 120, "test_onnx.py": 120, "test_ci.py": 100}


def work_unit(nodeid: str) -> str:
    """The xdist unit of a test: its file, or SERIAL_GROUP."""
    path, _, rest = nodeid.partition("::")
    name = Path(path).name
    if name in SERIAL_FILES or rest.split("::")[-1].split("[")[0] in SERIAL_TESTS:
        return SERIAL_GROUP
    return name


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class FileOrGroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return FileOrGroupScheduling(config, log)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return

    def weight(item: pytest.Item) -> float:
        unit = work_unit(item.nodeid)
        return float("inf") if unit == SERIAL_GROUP else LONG_FILES.get(unit, 0)

    items.sort(key=lambda item: -weight(item))  # stable: the order inside a file is kept
