"""The output directory under stress: a second run at the same time, a directory that cannot be
written, a disk that fills up. Each gives a clear error, leaves nothing half-written and never
touches the inputs."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import can_mount, tmpfs, write_recipe

from mobilec.util.fs import TMP_PREFIX, output_lock, sha256_path


def _compress_cmd(recipe: Path, out: Path, command: str = "compress") -> list[str]:
    return [sys.executable, "-m", "mobilec.cli", command, str(recipe), "--out", str(out)]


def _env(tmpdir: Path | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    return env


def _tree(directory: Path) -> dict[str, str]:
    """Every file under a directory with its hash: what 'untouched' is checked against."""
    if not directory.exists():
        return {}
    return {str(p.relative_to(directory)): sha256_path(p) for p in sorted(directory.rglob("*"))
            if p.is_file() and p.name != ".mobilec.lock"}


def _assert_complete(out: Path) -> None:
    """No temp files, and every artifact present is a whole model."""
    leftovers = [p for p in out.rglob("*") if p.name.startswith(TMP_PREFIX)]
    assert not leftovers, f"temp files left behind: {leftovers}"
    for art in out.rglob("*.tflite"):
        from ai_edge_litert.interpreter import Interpreter

        Interpreter(model_path=str(art)).allocate_tensors()
    for art in out.rglob("*.onnx"):
        import onnx

        onnx.checker.check_model(onnx.load(str(art)))
    for report in out.glob("report.json"):
        json.loads(report.read_text())


@pytest.fixture
def recipe(demo_keras: Path, tmp_path: Path) -> Path:
    return write_recipe(tmp_path, demo_keras, name="safe", stages=[
        {"quantize": {"mode": "int8"}}, {"convert": {"formats": ["tflite"]}}])


def _inputs(recipe: Path) -> dict[str, str]:
    from mobilec.recipe.loader import load_recipe

    return {"recipe": sha256_path(recipe), "model": sha256_path(load_recipe(recipe).model.path)}


# ----------------------------------------------------------------------------- two runs at once


@pytest.mark.slow
def test_second_run_into_the_same_dir_refuses_and_never_interleaves(recipe: Path, tmp_path: Path
                                                                    ) -> None:
    """Run A holds the output dir (frozen mid-convert with SIGSTOP, so the timing is certain);
    run B, started meanwhile, must refuse with A's pid and change nothing; then A completes."""
    out = tmp_path / "shared-out"
    first = subprocess.Popen(_compress_cmd(recipe, out), stderr=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, text=True, env=_env())
    try:
        assert first.stderr is not None
        for line in first.stderr:
            if "[mobilec] convert: started" in line:
                first.send_signal(signal.SIGSTOP)
                break
        else:
            pytest.fail(f"run A ended before convert: exit {first.wait()}")
        during = _tree(out)
        second = subprocess.run(_compress_cmd(recipe, out), capture_output=True, text=True,
                                timeout=300, env=_env())
        assert second.returncode == 2, second.stderr[-2000:]
        assert f"another mobilec run (pid {first.pid}) is writing to this output directory" \
            in second.stderr, second.stderr[-2000:]
        assert "Traceback" not in second.stderr
        assert "[mobilec] load: started" not in second.stderr, "refuse before loading, not after"
        assert _tree(out) == during, "the refused run changed the output dir"
    finally:
        first.send_signal(signal.SIGCONT)
    rest = first.communicate(timeout=300)[1]
    assert first.returncode == 0, rest[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert {a["status"] for a in report["artifacts"]} == {"ok"}
    _assert_complete(out)
    with output_lock(out):  # released on exit: the next run may take it
        pass


@pytest.mark.slow
@pytest.mark.parametrize("command", ["compress", "diagnose"])  # one runner, one lock
def test_lock_taken_while_loading_is_still_refused(recipe: Path, tmp_path: Path,
                                                   command: str) -> None:
    """The up-front probe passed, then another holder took the dir during load: the real
    lock, taken after load, must refuse all the same and write nothing."""
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen(_compress_cmd(recipe, out, command), stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, env=_env())
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:  # past the probe: it found the dir free
        lines.append(line)
        if "[mobilec] load: started" in line:
            break
    with output_lock(out):  # this test process is now "the other run"
        rest = proc.communicate(timeout=300)[1]
    stderr = "".join(lines) + rest
    assert "[mobilec] load: ok" in stderr, "the lock was meant to be taken during load"
    assert proc.returncode == 2, stderr[-2000:]
    assert f"another mobilec run (pid {os.getpid()})" in stderr, stderr[-2000:]
    assert [p.name for p in out.iterdir()] == []  # the lock lives outside the output dir


def test_lock_is_released_when_the_holder_is_killed(tmp_path: Path) -> None:
    """A run that dies by SIGKILL (no cleanup at all) must not block the next one."""
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from mobilec.util.fs import output_lock\n"
        "with output_lock(Path(sys.argv[1])):\n print('locked', flush=True); time.sleep(60)"),
        str(tmp_path)], stdout=subprocess.PIPE, text=True, env=_env())
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    from mobilec.errors import MobilecError

    with pytest.raises(MobilecError, match=f"pid {holder.pid}"), output_lock(tmp_path):
        pass
    holder.kill()
    holder.wait()
    with output_lock(tmp_path):
        pass


# ----------------------------------------------------------------------------- unwritable output


@pytest.fixture
def readonly_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory this process cannot write: chmod for a normal user; root ignores modes,
    so for root a read-only tmpfs."""
    d = tmp_path / "readonly"
    if os.geteuid() != 0:
        d.mkdir()
        d.chmod(0o555)
        yield d
        d.chmod(0o755)
    elif can_mount():
        with tmpfs(d, "ro,size=64k") as mounted:
            yield mounted
    else:
        pytest.skip("running as root without mount: no way to make a directory unwritable")


@pytest.mark.parametrize("where", ["the dir itself", "a missing subdir"])
def test_output_dir_not_writable_fails_fast_and_clearly(recipe: Path, readonly_dir: Path,
                                                        where: str) -> None:
    out = readonly_dir if where == "the dir itself" else readonly_dir / "new" / "out"
    before = _inputs(recipe)
    start = time.monotonic()
    res = subprocess.run(_compress_cmd(recipe, out), capture_output=True, text=True, timeout=120,
                         env=_env())
    assert res.returncode == 2, res.stderr[-2000:]
    assert "output directory is not writable" in res.stderr and str(readonly_dir) in res.stderr
    assert "Traceback" not in res.stderr
    assert "[mobilec] load: started" not in res.stderr, "the check must come before the slow work"
    assert time.monotonic() - start < 60
    assert _inputs(recipe) == before
    assert list(readonly_dir.iterdir()) == []


# ----------------------------------------------------------------------------- disk full


@pytest.mark.slow
def test_disk_full_on_the_output_filesystem(recipe: Path, tmp_path: Path) -> None:
    """A 200 KB tmpfs for the output dir: the first float32 artifact (~340 KB) cannot fit."""
    if not can_mount():
        pytest.skip("needs root and mount for a small tmpfs")
    before = _inputs(recipe)
    with tmpfs(tmp_path / "small", "size=200k") as small:
        out = small / "out"
        res = subprocess.run(_compress_cmd(recipe, out), capture_output=True, text=True,
                             timeout=300, env=_env())
        assert res.returncode == 2, res.stderr[-2000:]
        assert "cannot write output: no space left on the device" in res.stderr, res.stderr[-2000:]
        assert "Traceback" not in res.stderr
        assert not (out / "report.json").exists()
        _assert_complete(out)
    assert _inputs(recipe) == before


@pytest.mark.slow
def test_disk_full_simulated_with_a_file_size_limit(recipe: Path, tmp_path: Path) -> None:
    """RLIMIT_FSIZE (works without privileges): files over 150 KB cannot be written anywhere,
    temp dir included. The float32 conversions fail with the reason, int8 (~90 KB) succeeds."""
    limit = 150_000
    tmpdir, out = tmp_path / "tmp", tmp_path / "out"
    tmpdir.mkdir()
    before = _inputs(recipe)

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    res = subprocess.run(_compress_cmd(recipe, out), capture_output=True, text=True, timeout=300,
                         env=_env(tmpdir), preexec_fn=limit_file_size)
    assert "Traceback" not in res.stderr and "internal error" not in res.stderr, res.stderr[-3000:]
    assert res.returncode == 3, res.stderr[-2000:]  # some artifacts failed: the report says which
    report = json.loads((out / "report.json").read_text())
    by_key = {(a["format"], a["quantization"]): a for a in report["artifacts"]}
    float_tflite = by_key[("tflite", "float32")]
    assert float_tflite["status"] == "failed"
    assert "file too large" in float_tflite["error"], float_tflite["error"]
    assert by_key[("tflite", "int8")]["status"] == "ok"
    for a in report["artifacts"]:
        if a["status"] == "ok":
            assert (out / a["path"]).stat().st_size < limit
    _assert_complete(out)
    assert [p.name for p in tmpdir.iterdir() if p.name != ".ses"] == []  # .ses: onnxruntime's id
    assert _inputs(recipe) == before


# ----------------------------------------------------------------------------- SIGKILL leftovers


@pytest.mark.parametrize("command", ["compress", "diagnose"])  # one runner, one work dir
def test_work_dirs_of_killed_runs_are_swept(recipe: Path, tmp_path: Path, command: str) -> None:
    """SIGKILL allows no cleanup: the killed run's work dir stays in the temp dir. A later run
    removes it once its owner is gone and it is old enough; live or recent ones stay."""
    from mobilec.util.fs import sweep_stale_work_dirs

    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    proc = subprocess.Popen(_compress_cmd(recipe, tmp_path / "out", command), stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, env=_env(tmpdir))
    assert proc.stderr is not None
    for line in proc.stderr:
        if "[mobilec] load: started" in line:
            proc.kill()
            break
    proc.wait()
    left = [p for p in tmpdir.iterdir() if p.name.startswith(f"{TMP_PREFIX}work-{proc.pid}-")]
    assert len(left) == 1, sorted(p.name for p in tmpdir.iterdir())
    young_dead = left[0]
    old_dead = tmpdir / f"{TMP_PREFIX}work-{proc.pid}-older"
    old_dead.mkdir()
    (old_dead / "model.tflite").write_bytes(b"half")
    old_alive = tmpdir / f"{TMP_PREFIX}work-{os.getpid()}-mine"
    old_alive.mkdir()
    two_hours_ago = time.time() - 7200
    for d in (old_dead, old_alive):
        os.utime(d, (two_hours_ago, two_hours_ago))
    assert sweep_stale_work_dirs(tmpdir) == [old_dead]
    assert young_dead.exists() and old_alive.exists() and not old_dead.exists()
