"""`mobilec batch`: zoo files, safe output folders, the content cache, failure isolation
(a broken file, a worker that aborts, a model that hangs), interrupt and resume, the
zoo report, and the Ray executor against the local one. Real models, real workers,
a real local Ray; nothing mocked.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ROOT, run_cli

from mobilec.batch.cache import ENTRY_FILE, cache_key, key_parts
from mobilec.batch.run import run_batch
from mobilec.batch.task import localize_inputs, pack, unpack
from mobilec.batch.zoo import load_zoo, plan_jobs
from mobilec.errors import MobilecError, RecipeError
from mobilec.util.fs import TMP_PREFIX

# Small on purpose: dynamic int8 weights, .tflite + .onnx, a small eval set.
BASE = {"version": 1, "data": {"source": "digits", "eval_samples": 100, "calibration_samples": 50},
        "stages": [{"quantize": {"mode": "dynamic"}}], "targets": ["cpu"],
        "output": {"report": ["json", "md"]}}
HOOKS = '''\
import os, time

def crash():
    print("about to abort", flush=True)
    os.abort()

def hang():
    time.sleep(600)
'''


def write_zoo(directory: Path, models: list[Any], name: str = "zoo.yaml", **extra: Any) -> Path:
    (directory / "base.yaml").write_text(yaml.safe_dump(BASE, sort_keys=False))
    path = directory / name
    path.write_text(yaml.safe_dump({"recipe": "base.yaml", "models": models, **extra},
                                   sort_keys=False))
    return path


def by_name(zoo: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in zoo["models"]}


def without_timings(value: Any) -> Any:
    """A report with what legitimately differs between runs removed: times, and where it ran."""
    drop = {"seconds", "latency_ms", "wall_seconds", "model_seconds", "out_dir", "output_dir",
            "executor",
            "workers", "slower_than_float32"}
    if isinstance(value, dict):
        return {k: _untimed_note(v) if k == "note" else without_timings(v)
                for k, v in value.items() if k not in drop}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def _untimed_note(note: str | None) -> str | None:
    """An artifact note without the sentence that quotes measured latencies."""
    import re

    text = re.sub(r"slower than float32 on this host:[^;]*; measure on the device before shipping",
                  "", note or "")
    return "; ".join(p for p in text.split("; ") if p.strip()) or None


# ----------------------------------------------------------------------------- fast: planning

def test_zoo_paths_names_overrides_and_folders(tmp_path: Path) -> None:
    zdir = tmp_path / "z"
    (zdir / "sub" / "deep").mkdir(parents=True)
    for p in ("sub/a.keras", "sub/deep/a.keras", "top.h5"):
        (zdir / p).write_bytes(b"x")
    sm = zdir / "sub" / "sm"
    sm.mkdir()
    (sm / "saved_model.pb").write_bytes(b"x")
    (zdir / "sub" / "results").mkdir()   # an earlier run's output folder: not models
    (zdir / "sub" / "results" / "report.json").write_text("{}")
    (zdir / "sub" / "results" / "m-float32.onnx").write_bytes(b"x")
    outside = tmp_path / "elsewhere" / "m.onnx"
    outside.parent.mkdir()
    outside.write_bytes(b"x")
    zoo_path = write_zoo(zdir, [
        {"path": "top.h5", "set": {"quantize.mode": "float16"}},
        "sub",                                       # a folder: every model in it
        str(outside),                                # absolute, outside the zoo folder
        "../elsewhere/m.onnx",                       # the same file again, via ..
        {"path": "top.h5", "name": "custom-name"},
    ], set={"data.eval_samples": 50})
    zoo = load_zoo(zoo_path)
    out = tmp_path / "out"
    jobs = plan_jobs(zoo, out, ["verify.min_snr_db=15"])
    names = [j.name for j in jobs]
    assert names[:4] == ["top.h5", "sub__a.keras", "sub__deep__a.keras", "sub__sm"]
    assert names[4] == "m.onnx" and names[5].startswith("m.onnx-") and names[6] == "custom-name"
    for j in jobs:
        # one component, inside the output folder: nothing can escape it
        assert "/" not in j.name and ".." not in j.name.split("-")[0].split("__")
        assert j.out_dir.parent == out and j.out_dir.resolve().is_relative_to(out)
        assert j.recipe.model.path.is_absolute() and j.recipe.output.dir is None
        assert j.recipe.data.eval_samples == 50 and j.recipe.verify.min_snr_db == 15
    assert jobs[0].model == (zdir / "top.h5").resolve()
    assert jobs[0].recipe.stage("quantize").mode == "float16"
    assert jobs[1].recipe.stage("quantize").mode == "dynamic"
    assert jobs[4].model == jobs[5].model == outside.resolve()
    assert jobs[0].recipe.name == "top" and jobs[3].recipe.name == "sm"
    # the zoo's data paths resolve against the recipe, the models against the zoo
    assert jobs[0].recipe.source.endswith("base.yaml")


def test_zoo_errors_say_where(tmp_path: Path) -> None:
    (tmp_path / "m.keras").write_bytes(b"x")
    bad = write_zoo(tmp_path, ["m.keras"], executr="ray")
    with pytest.raises(RecipeError) as err:
        load_zoo(bad)
    assert "zoo.yaml:4: executr" in err.value.render() and "did you mean 'executor'" in err.value.render()
    bad_model = write_zoo(tmp_path, [{"path": "m.keras", "sett": {}}])
    with pytest.raises(RecipeError, match="did you mean 'set'"):
        load_zoo(bad_model)
    typo = write_zoo(tmp_path, [{"path": "m.keras", "set": {"quantize.mode": "int3"}}])
    with pytest.raises(RecipeError) as err:
        plan_jobs(load_zoo(typo), tmp_path / "out")
    assert "m.keras" in err.value.message and "int3" in err.value.message
    assert err.value.exit_code == 2
    with pytest.raises(MobilecError, match="base recipe"):
        run_batch(None, models=["m.keras"], out=tmp_path / "o")


def test_cache_key_covers_model_recipe_data_and_versions(tmp_path: Path) -> None:
    (tmp_path / "m.keras").write_bytes(b"one")
    zoo = load_zoo(write_zoo(tmp_path, ["m.keras", {"path": "m.keras", "set": {"quantize.mode":
                                                                               "float16"}}]))
    a, b = plan_jobs(zoo, tmp_path / "out1")
    a2, _ = plan_jobs(zoo, tmp_path / "out2")  # another --out: same key
    opts = {"evaluate": True}
    k = cache_key(key_parts(a.recipe, "sha-1", opts))
    assert k == cache_key(key_parts(a2.recipe, "sha-1", opts))
    assert k != cache_key(key_parts(a.recipe, "sha-2", opts))                  # model bytes
    assert k != cache_key(key_parts(b.recipe, "sha-1", opts))                  # recipe
    assert k != cache_key(key_parts(a.recipe, "sha-1", {"evaluate": False}))   # options
    parts = key_parts(a.recipe, "sha-1", opts)
    assert {"mobilec", "tensorflow", "onnx", "onnxruntime", "tf2onnx", "coremltools",
            "ai-edge-litert"} <= set(parts["versions"])
    # versions come from package metadata: computing a key never imports TensorFlow
    code = ("import sys; from mobilec.batch.cache import tool_versions; v = tool_versions(); "
            "assert 'tensorflow' not in sys.modules, 'imported'; print(v['tensorflow'])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()[:1].isdigit()


def test_inputs_are_read_in_place_or_shipped(tmp_path: Path) -> None:
    """What a Ray worker on another host does with a model it cannot see."""
    from mobilec.util.fs import sha256_path

    model = tmp_path / "m.keras"
    model.write_bytes(b"model bytes")
    spec = {"name": "m", "recipe": {"model": {"path": str(model)}, "data": None}}
    digests = {"model": sha256_path(model)}
    fetched: list[str] = []

    def fetch(key: str) -> bytes:
        fetched.append(key)
        return pack(model)

    same, alias = localize_inputs(spec, digests, fetch, tmp_path / "in")
    assert same == spec and alias is None and fetched == []   # same bytes here: used in place
    moved = dict(spec, recipe={"model": {"path": "/nonexistent/host-a/m.keras"}, "data": None})
    local, alias = localize_inputs(moved, digests, fetch, tmp_path / "in")
    assert fetched == ["model"] and alias == "/nonexistent/host-a/m.keras"
    assert Path(local["recipe"]["model"]["path"]).read_bytes() == b"model bytes"
    # shipped archives cannot write outside their folder
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(tarfile.TarError):
        unpack(buf.getvalue(), tmp_path / "x")
    assert not (tmp_path / "escape.txt").exists()


def test_workers_that_cannot_start_fail_the_run_with_the_reason(tmp_path: Path) -> None:
    """TensorFlow that will not import: three workers die starting, then every model fails
    with that reason (instead of one respawn per model, each blamed on its model)."""
    import zipfile

    fake = tmp_path / "fake" / "tensorflow"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('simulated: this TensorFlow is broken')\n")
    for name in ("a.keras", "b.keras"):
        with zipfile.ZipFile(tmp_path / name, "w") as zf:  # passes the format check only
            zf.writestr("config.json", "{}")
            zf.writestr("model.weights.h5", "")
    zoo = write_zoo(tmp_path, ["a.keras", "b.keras"], workers=1)
    proc = run_cli("batch", str(zoo), "--out", str(tmp_path / "out"), "--json",
                   env={"PYTHONPATH": str(tmp_path / "fake")}, timeout=120)
    assert proc.returncode == 3, proc.stderr
    report = json.loads(proc.stdout)
    for m in report["models"]:
        assert m["status"] == "failed"
        assert "worker processes cannot start" in m["error"]
        assert "simulated: this TensorFlow is broken" in m["error"]


# ----------------------------------------------------------------------------- slow: real zoos

@pytest.fixture(scope="module")
def demo_onnx(demo_h5: Path, models_dir: Path) -> Path:
    """The demo network as .onnx, converted here with tf2onnx."""
    path = models_dir / "digits.onnx"
    if not path.exists():
        from mobilec.util.tfenv import import_tf, import_tf_keras

        tf = import_tf()
        import tf2onnx

        model = import_tf_keras().models.load_model(str(demo_h5), compile=False)
        spec = [tf.TensorSpec([None, 8, 8, 1], tf.float32, name="image")]
        tf2onnx.convert.from_keras(model, input_signature=spec, opset=17, output_path=str(path))
    return path


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory, demo_keras: Path, demo_h5: Path,
            demo_savedmodel: Path, demo_onnx: Path) -> Path:
    import shutil

    d = tmp_path_factory.mktemp("zoo")
    (d / "models").mkdir()
    shutil.copyfile(demo_keras, d / "models" / "digits.keras")
    shutil.copyfile(demo_h5, d / "models" / "digits.h5")
    shutil.copyfile(demo_onnx, d / "models" / "digits.onnx")
    shutil.copytree(demo_savedmodel, d / "models" / "digits_sm")
    (d / "models" / "broken.keras").write_bytes(b"PK\x03\x04 this is not a zip archive")
    return d


ZOO_MODELS = [
    "models/digits.keras",
    {"path": "models/digits.h5", "set": {"quantize.mode": "float16"}},
    "models/digits_sm",
    "models/digits.onnx",
    "models/broken.keras",
    {"path": "models/digits.keras", "name": "over-budget", "set": {"budget.max_size_bytes": 50000}},
]


@pytest.fixture(scope="module")
def first_run(zoo_dir: Path) -> tuple[dict[str, Any], float, Path]:
    zoo = write_zoo(zoo_dir, ZOO_MODELS)
    start = time.perf_counter()
    report = run_batch(zoo, out=zoo_dir / "out", workers=2)
    return report, time.perf_counter() - start, zoo


@pytest.mark.slow
def test_zoo_runs_to_completion_with_per_model_status(first_run: tuple, zoo_dir: Path) -> None:
    report, _, _ = first_run
    models = by_name(report)
    status = {n: (m["status"], m["error"]) for n, m in models.items()}
    assert {n: s for n, (s, _) in status.items()} == {
        "models__digits.keras": "ok", "models__digits.h5": "ok", "models__digits_sm": "ok",
        "models__digits.onnx": "ok", "models__broken.keras": "failed", "over-budget": "budget"}, status
    assert "broken.keras" in models["models__broken.keras"]["error"]
    assert report["totals"]["exit_code"] == 3
    assert report["totals"]["ok"] == 4 and report["totals"]["failed"] == 1
    # each model its own folder, report and artifacts; the per-model override took effect
    h5 = models["models__digits.h5"]["report"]
    assert {a["quantization"] for a in h5["artifacts"]} >= {"float16"}
    out = zoo_dir / "out"
    for name, m in models.items():
        if m["status"] in ("ok", "budget"):
            assert json.loads((out / name / "report.json").read_text()) == m["report"]
            assert (out / name / ENTRY_FILE).exists()
            assert all((out / name / a["path"]).exists() for a in m["report"]["artifacts"]
                       if a["status"] == "ok")
    assert not (out / "models__broken.keras").exists()
    assert models["over-budget"]["report"]["budget"]["violations"]
    assert not list(out.glob(TMP_PREFIX + "*"))
    # the zoo report: json, md and a self-contained html with the chart
    on_disk = json.loads((out / "zoo-report.json").read_text())
    assert on_disk["totals"] == report["totals"]
    md = (out / "zoo-report.md").read_text()
    assert "| models__digits.h5 | ok | cpu/digits-float16.tflite |" in md
    assert "## Failures" in md and "broken.keras" in md and "## Budget violations" in md
    html = (out / "zoo-report.html").read_text()
    assert "<svg" in html and "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    assert html.count("<circle") >= 10


@pytest.mark.slow
def test_rerun_is_cached_and_fast_then_only_changes_rerun(first_run: tuple, zoo_dir: Path) -> None:
    report, first_s, zoo = first_run
    # Through the CLI, with --json: stdout holds only the zoo report.
    start = time.perf_counter()
    proc = run_cli("batch", str(zoo), "--out", str(zoo_dir / "out"), "--json")
    second_s = time.perf_counter() - start
    assert proc.returncode == 3, proc.stderr
    again = json.loads(proc.stdout)
    statuses = {m["name"]: m["status"] for m in again["models"]}
    assert statuses.pop("models__broken.keras") == "failed"
    assert set(statuses.values()) == {"cached"}, statuses
    print(f"first run {first_s:.1f}s, cached re-run {second_s:.2f}s "
          f"({second_s / first_s * 100:.1f}%, including the CLI's own start-up)")
    assert second_s <= 0.10 * first_s
    for name, m in by_name(again).items():
        if m["status"] == "cached":
            assert m["report"] == by_name(report)[name]["report"]
    # cached results keep their meaning for CI: the over-budget model still counts
    assert again["totals"]["exit_code"] == 3
    # A changed recipe for one model reruns only that model.
    changed = [m if not (isinstance(m, dict) and m.get("name") == "over-budget") else
               {**m, "set": {"budget.max_size_bytes": 60000}} for m in ZOO_MODELS]
    zoo2 = write_zoo(zoo_dir, changed, name="zoo-changed.yaml")
    third = run_batch(zoo2, out=zoo_dir / "out", workers=2)
    statuses = {m["name"]: m["status"] for m in third["models"]}
    assert statuses == {"models__digits.keras": "cached", "models__digits.h5": "cached",
                        "models__digits_sm": "cached", "models__digits.onnx": "cached",
                        "models__broken.keras": "failed", "over-budget": "budget"}
    assert "60000" in str(by_name(third)["over-budget"]["report"]["budget"]["violations"])


HANG_TIMEOUT_S = 30


@pytest.mark.slow
def test_crash_and_hang_are_isolated_interrupt_resumes(tmp_path: Path, demo_keras: Path) -> None:
    """A worker that aborts fails only its model (the pool restarts); SIGTERM keeps what is
    complete and the next run resumes; a hung model is stopped by --timeout."""
    (tmp_path / "hooks.py").write_text(HOOKS)
    zoo = write_zoo(tmp_path, [
        str(demo_keras),
        {"path": str(demo_keras), "name": "aborts", "set": {"data.python": "hooks.py:crash"}},
        {"path": str(demo_keras), "name": "hangs", "set": {"data.python": "hooks.py:hang"}},
    ], workers=1)
    out, tmpdir = tmp_path / "out", tmp_path / "tmp"
    tmpdir.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "mobilec.cli", "batch", str(zoo), "--out",
                             str(out), "--trust-code"],  # the hooks are the recipe's own code
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TMPDIR": str(tmpdir)})
    try:
        deadline = time.monotonic() + 150
        # wait until the hanging model has started (one worker: the others are then finished)
        log = out / ".mobilec-logs" / "worker-0.log"
        while time.monotonic() < deadline and "=== hangs ===" not in (
                log.read_text(errors="replace") if log.exists() else ""):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        assert (out / "digits.keras" / ENTRY_FILE).exists(), list(out.iterdir())
        time.sleep(1)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr
    assert "2 of 3 models finished" in stderr and "run the same command again" in stderr, stderr
    assert "aborts: FAILED" in stderr and "worker process aborted (SIGABRT)" in stderr, stderr
    assert not list(out.glob(TMP_PREFIX + "*")), "an interrupted run must leave no partial output"
    assert not (out / "hangs").exists() and not (out / "aborts").exists(), list(out.iterdir())
    # The busy worker was stopped with SIGTERM: its work dir and its run lock went with it
    # (SIGKILLed, it left both). onnxruntime keeps its session id, .ses, there.
    assert sorted(p.name for p in tmpdir.iterdir() if p.name != ".ses") == []
    _no_orphans()

    # generous for the model that aborts during load on a busy machine (at a load average of
    # 20 on 2 cores its load took more than 10 s); the hang is stopped
    report = run_batch(zoo, out=out, timeout=HANG_TIMEOUT_S, trust_code=True)
    models = by_name(report)
    print({n: (m["status"], m["error"]) for n, m in models.items()})
    assert models["digits.keras"]["status"] == "cached"      # resumed, not redone
    assert models["aborts"]["status"] == "failed" and "SIGABRT" in models["aborts"]["error"]
    assert models["hangs"]["status"] == "failed" and f"timed out after {HANG_TIMEOUT_S} s" in models["hangs"]["error"]
    assert report["totals"]["exit_code"] == 3
    _no_orphans()


def _no_orphans() -> None:
    """Every worker this test process started has been stopped and reaped."""
    import multiprocessing

    assert not [p for p in multiprocessing.active_children() if p.name.startswith("mobilec-worker")]
    workers = []
    for proc in Path("/proc").iterdir():
        try:
            stat = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            cmd = (proc / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if int(stat[1]) == os.getpid() and b"spawn_main" in cmd:
            workers.append(proc.name)
    assert not workers, f"left-over worker processes: {workers}"


@pytest.mark.slow
def test_ray_executor_matches_local(first_run: tuple, zoo_dir: Path) -> None:
    ray = pytest.importorskip("ray")
    local = by_name(first_run[0])
    subset = [ZOO_MODELS[0], ZOO_MODELS[1], ZOO_MODELS[4]]
    zoo = write_zoo(zoo_dir, subset, name="zoo-ray.yaml", executor="ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        report = run_batch(zoo, out=zoo_dir / "out-ray")
    finally:
        ray.shutdown()
    assert report["executor"] == "ray"
    got = by_name(report)
    assert {n: m["status"] for n, m in got.items()} == {
        "models__digits.keras": "ok", "models__digits.h5": "ok", "models__broken.keras": "failed"}
    for name, m in got.items():
        assert without_timings(m) == without_timings(local[name]), name
        if m["report"]:
            # the artifacts came back to the driver's output folder
            for a in m["report"]["artifacts"]:
                assert (zoo_dir / "out-ray" / name / a["path"]).is_file()
