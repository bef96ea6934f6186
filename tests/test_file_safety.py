"""Never lose the user's files (issue 27, items 1-5): no output may be an input, files
mobilec did not write are never overwritten, a publish is all or nothing and retires the
previous run's files, no scratch file lands in the user's cwd, and no input blocks a read.

Most tests use a tiny two-input ONNX graph (no TensorFlow import: seconds per run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import can_mount, run_cli, tmpfs

from mobilec.util.fs import TMP_PREFIX, sha256_path


def _two_input_onnx(directory: Path) -> tuple[Path, Path]:
    """y = (a + b) @ W, with a: [N, 64] and b: [M, 64]. onnxruntime's symbolic shape
    inference cannot merge N and M without auto_merge: it gives up and (before mobilec ran
    it inside its work dir) left sym_shape_infer_temp.onnx and <uuid>.data in the cwd."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.RandomState(0)
    w = numpy_helper.from_array(rng.randn(64, 10).astype("float32"), "W")
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("MatMul", ["s", "W"], ["y"])],
        "two", [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 64]),
                helper.make_tensor_value_info("b", TensorProto.FLOAT, ["M", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = directory / "two.onnx"
    onnx.save(model, str(path))
    a = rng.randn(48, 64).astype("float32")
    data = directory / "two.npz"
    np.savez(data, a=a, b=a * 0.5, y=rng.randint(0, 10, 48))
    return path, data


def _recipe(directory: Path, model: Path, data: Path, *, name: str = "t", out: str = "out",
            mode: str = "int8", file: str | None = None) -> Path:
    doc = {"version": 1, "name": name, "model": {"path": str(model)},
           "data": {"source": "npz", "eval": str(data), "eval_samples": 48,
                    "calibration_samples": 16},
           "stages": [{"quantize": {"mode": mode}}, {"convert": {"formats": ["onnx"]}}],
           "targets": ["cpu"], "output": {"dir": out, "report": ["json", "md"]}}
    path = directory / (file or f"{name}.yaml")
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture
def two(tmp_path: Path) -> tuple[Path, Path]:
    return _two_input_onnx(tmp_path)


def _hashes(*paths: Path) -> dict[str, str]:
    return {str(p): sha256_path(p) for p in paths}


def _tree(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): sha256_path(p) for p in sorted(directory.rglob("*"))
            if p.is_file()}


# ----------------------------------------------------------------------------- item 5: FIFOs


@pytest.mark.parametrize("case", ["validate model", "validate data", "compress model",
                                  "compress data", "inspect", "compare"])
def test_a_fifo_input_is_refused_not_read(tmp_path: Path, two: tuple[Path, Path],
                                          case: str) -> None:
    """Reading a FIFO blocks until a writer comes: every command must refuse it (exit 2)."""
    model, data = two
    fifo = tmp_path / ("fifo.npz" if "data" in case else "fifo.onnx")
    os.mkfifo(fifo)
    recipe = _recipe(tmp_path, fifo if "model" in case else model,
                     fifo if "data" in case else data)
    args = {"inspect": ["inspect", str(fifo)],
            "compare": ["compare", str(fifo), str(tmp_path)]}.get(
        case, [case.split()[0], str(recipe)])
    res = run_cli(*args, timeout=60)  # before the fix: blocked for good (TimeoutExpired)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "FIFO (named pipe), not a regular file or directory" in res.stderr, res.stderr
    assert str(fifo.name) in res.stderr and "Traceback" not in res.stderr


# ----------------------------------------------------------------------------- item 1: overlap


def test_an_output_that_is_an_input_is_refused(tmp_path: Path, two: tuple[Path, Path]) -> None:
    """The source model named like the artifact the run would write over it (output.dir: .),
    a recipe saved as report.md in its output dir, --junit naming the model, the file system
    root and $HOME as the output dir: each exit 2, naming both paths; no input changes."""
    model, data = two
    (tmp_path / "cpu").mkdir()
    source = tmp_path / "cpu" / "t-int8.onnx"
    source.write_bytes(model.read_bytes())
    inputs = [source, model, data]
    before = _hashes(*inputs)
    recipe = _recipe(tmp_path, source, data, out=".")
    res = run_cli("compress", str(recipe), timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    assert f"the output {source} would overwrite an input: model {source}" in res.stderr

    out = tmp_path / "o"
    out.mkdir()
    as_report = _recipe(tmp_path, model, data, out=str(out), file="o/report.md")
    res = run_cli("compress", str(as_report), timeout=120)
    assert res.returncode == 2 and f"would overwrite an input: recipe {as_report}" in res.stderr, \
        res.stderr[-2000:]

    recipe = _recipe(tmp_path, model, data, out=str(tmp_path / "o2"))
    inputs += [as_report, recipe]
    before = _hashes(*inputs)
    res = run_cli("compress", str(recipe), "--junit", str(model), timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    assert f"{model}: --junit would overwrite a file that mobilec did not write" in res.stderr

    home = tmp_path / "home"
    home.mkdir()
    for out_dir, said in (("/", "the file system root"), (str(home), "the home directory")):
        res = run_cli("compress", str(recipe), "--out", out_dir, timeout=120,
                      env={"HOME": str(home)})
        assert res.returncode == 2, res.stderr[-2000:]
        assert f"refusing to use {said} as the output directory" in res.stderr
    assert list(home.iterdir()) == [] and not (tmp_path / "o2").exists()
    assert _hashes(*inputs) == before
    assert "Traceback" not in res.stderr


def test_a_savedmodel_folder_is_no_output_dir(tmp_path: Path, two: tuple[Path, Path]) -> None:
    """Writing into an input directory is an overlap too (checked before the model loads)."""
    from mobilec.errors import MobilecError
    from mobilec.util.outguard import check_no_overlap

    folder = tmp_path / "saved"
    folder.mkdir()
    with pytest.raises(MobilecError, match="would overwrite an input: model"):
        check_no_overlap({"output": [folder / "report.json"]}, {"model": folder})
    with pytest.raises(MobilecError, match="output dir"):
        check_no_overlap({"output": []}, {"model": folder}, write_into={"output dir": folder})
    link = tmp_path / "link.onnx"
    link.symlink_to(two[0])  # by real path: a symlink to the model is the model
    with pytest.raises(MobilecError, match="would overwrite an input"):
        check_no_overlap({"output": [link]}, {"model": two[0]})


@pytest.mark.slow
def test_files_mobilec_did_not_write_are_kept(tmp_path: Path, two: tuple[Path, Path]) -> None:
    """The output dir is the model's own folder, where the user keeps a report.md and notes:
    exit 2 listing report.md; --force overwrites it; other user files stay untouched."""
    model, data = two
    (tmp_path / "report.md").write_text("# my notes\n")
    (tmp_path / "notes.txt").write_text("mine\n")
    recipe = _recipe(tmp_path, model, data, out=".")
    before = _tree(tmp_path)
    res = run_cli("compress", str(recipe), timeout=300)
    assert res.returncode == 2, res.stderr[-2000:]
    assert "would overwrite 1 file(s) that mobilec did not write: report.md" in res.stderr
    assert _tree(tmp_path) == before
    res = run_cli("compress", str(recipe), "--force", timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "report.md").read_text() != "# my notes\n"
    assert (tmp_path / "notes.txt").read_text() == "mine\n"
    assert sha256_path(model) == before["two.onnx"] and sha256_path(data) == before["two.npz"]
    res = run_cli("compress", str(recipe), timeout=300)  # now mobilec's: no --force needed
    assert res.returncode == 0, res.stderr[-2000:]


# ----------------------------------------------------------------------------- item 3: stale


@pytest.mark.slow
def test_the_output_dir_holds_exactly_what_the_report_lists(tmp_path: Path,
                                                            two: tuple[Path, Path]) -> None:
    """int8, then dynamic into the same dir: the int8 files go; the user's files stay."""
    model, data = two
    out = tmp_path / "out"
    recipe = _recipe(tmp_path, model, data, out=str(out))
    assert run_cli("compress", str(recipe), timeout=300).returncode == 0
    assert (out / "cpu" / "t-int8.onnx").exists()
    (out / "mine.txt").write_text("mine\n")
    (out / "cpu" / "mine.txt").write_text("mine too\n")
    recipe = _recipe(tmp_path, model, data, out=str(out), mode="dynamic")
    res = run_cli("compress", str(recipe), timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    listed = {a["path"] for a in report["artifacts"]} | \
        {a["delegate_manifest"] for a in report["artifacts"] if a.get("delegate_manifest")}
    lock = json.loads((out / "mobilec.lock.json").read_text())
    assert listed <= set(lock["outputs"])
    assert set(lock["outputs"]) - listed == {"report.json", "report.md", "mobilec.lock.json"}
    assert set(_tree(out)) == set(lock["outputs"]) | {"mine.txt", "cpu/mine.txt"}
    assert not (out / "cpu" / "t-int8.onnx").exists()


@pytest.mark.slow
def test_a_full_disk_leaves_the_previous_run(tmp_path: Path, two: tuple[Path, Path]) -> None:
    """The output dir on a small tmpfs holds a finished run and the user's file that filled
    the rest: a second run into it fails (exit 2, no space) and leaves the dir byte for
    byte as it was: no half-published set, no staging dir, no journal."""
    if not can_mount():
        pytest.skip("needs root and mount for a small tmpfs")
    model, data = two
    with tmpfs(tmp_path / "small", "size=256k") as small:
        out = small / "out"
        assert run_cli("compress", str(_recipe(tmp_path, model, data, out=str(out))),
                       timeout=300).returncode == 0
        with open(out / "filler.bin", "wb", buffering=0) as fh:  # the user's: the disk is full
            try:
                while True:
                    fh.write(b"\0" * 4096)
            except OSError:
                pass
        before = _tree(out)
        recipe = _recipe(tmp_path, model, data, out=str(out), mode="dynamic")
        res = run_cli("compress", str(recipe), timeout=300)
        assert res.returncode == 2, res.stderr[-2000:]
        assert "no space left on the device" in res.stderr and "Traceback" not in res.stderr
        assert _tree(out) == before
        assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


@pytest.mark.slow
def test_batch_keeps_the_users_files_in_a_models_folder(tmp_path: Path,
                                                        two: tuple[Path, Path]) -> None:
    """batch used to rename each model's new folder over the old one, deleting whatever the
    user kept there; now it publishes like compress: stale files go, the user's stay, and
    a zoo whose output folder holds an input is refused up front."""
    model, data = two
    recipe = _recipe(tmp_path, model, data, out="unused")
    zoo = tmp_path / "zoo.yaml"
    zoo.write_text(yaml.safe_dump({"recipe": str(recipe), "workers": 1,
                                   "models": [{"path": str(model), "name": "m"}]}))
    out = tmp_path / "out"
    res = run_cli("batch", str(zoo), "--out", str(out), timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    (out / "m" / "mine.txt").write_text("mine\n")
    res = run_cli("batch", str(zoo), "--out", str(out), "--force",
                  "--set", "stages.0.quantize.mode=dynamic", timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (out / "m" / "mine.txt").read_text() == "mine\n"
    assert (out / "m" / "cpu" / "two-dynamic.onnx").exists()
    assert not (out / "m" / "cpu" / "two-int8.onnx").exists()
    inside = out / "m" / "two.onnx"
    inside.write_bytes(model.read_bytes())
    zoo.write_text(yaml.safe_dump({"recipe": str(recipe), "workers": 1,
                                   "models": [{"path": str(inside), "name": "m"}]}))
    res = run_cli("batch", str(zoo), "--out", str(out), timeout=600)
    assert res.returncode == 2, res.stderr[-2000:]
    assert f"would overwrite an input: m: model {inside}" in res.stderr


# ----------------------------------------------------------------------------- item 4b: cwd


@pytest.mark.slow
def test_onnx_int8_leaves_the_current_directory_empty(tmp_path: Path,
                                                      two: tuple[Path, Path]) -> None:
    model, data = two
    recipe = _recipe(tmp_path, model, data, out=str(tmp_path / "out"))
    cwd = tmp_path / "fresh"
    cwd.mkdir()
    res = run_cli("compress", str(recipe), cwd=cwd, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert sorted(p.name for p in cwd.iterdir()) == []


# ----------------------------------------------------------------------------- item 2: publish


def _stage(root: Path, files: dict[str, str]) -> Path:
    stage = root / f"{TMP_PREFIX}stage-test"
    for rel, text in files.items():
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        (stage / rel).write_text(text)
    return stage


OLD = {"cpu/t-int8.onnx": "old int8", "cpu/t-int8.onnx.delegate.json": "{}",
       "report.json": "old report", "mobilec.lock.json": "old lock"}
NEW = {"cpu/t-float16.onnx": "new f16", "cpu/t-float16.onnx.delegate.json": "{}",
       "report.json": "new report", "mobilec.lock.json": "new lock"}
USER = {"mine.txt": "mine", "cpu/mine.txt": "mine too"}


def _publish_killed_at(root: Path, n: int) -> int:
    """A child publishes NEW over OLD and SIGKILLs itself at its n-th rename."""
    script = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from mobilec.util import publish as p\n"
        "count = [0]\n"
        "real = os.rename\n"
        "def rename(a, b):\n"
        f"    count[0] += 1\n"
        f"    if count[0] == {n}: os.kill(os.getpid(), signal.SIGKILL)\n"
        "    real(a, b)\n"
        "os.rename = rename\n"
        f"root = Path({str(root)!r})\n"
        f"p.publish(root, root / {TMP_PREFIX + 'stage-test'!r}, retire=set({sorted(OLD)!r}))\n")
    return subprocess.run([sys.executable, "-c", script], capture_output=True).returncode


def test_a_publish_killed_at_any_rename_is_rolled_back_or_finished(tmp_path: Path) -> None:
    """SIGKILL at every rename of the swap; the next run's recover() leaves mobilec's files
    exactly the previous run's or exactly the new run's, the user's files untouched."""
    from mobilec.util.publish import pending, recover

    outcomes = []
    for n in range(1, 12):  # 4 old out, 4 new in, the commit: 9 renames, then a clean run
        root = tmp_path / f"k{n}"
        for rel, text in {**OLD, **USER}.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
        _stage(root, NEW)
        code = _publish_killed_at(root, n)
        assert pending(root) == (n <= 9), n  # the next run sees it before it judges the dir
        recover(root)
        assert not pending(root)
        got = {str(p.relative_to(root)): p.read_text() for p in root.rglob("*") if p.is_file()}
        assert got in ({**OLD, **USER}, {**NEW, **USER}), (n, code, sorted(got))
        assert not [p for p in root.iterdir() if p.name.startswith(".mobilec")], n
        outcomes.append("new" if got == {**NEW, **USER} else "old")
    assert "old" in outcomes and "new" in outcomes  # both sides of the commit point were hit


def test_a_failed_publish_rolls_back_in_process(tmp_path: Path, monkeypatch) -> None:
    """An error (disk full, a signal) during the swap undoes it before it propagates."""
    from mobilec.errors import MobilecError
    from mobilec.util import publish as p

    for rel, text in {**OLD, **USER}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    stage = _stage(tmp_path, NEW)
    real, count = os.rename, [0]

    def rename(a, b):  # the 6th rename (the second new file) fails as a full disk would
        count[0] += 1
        if count[0] == 6:
            raise OSError(28, "No space left on device")
        real(a, b)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(MobilecError, match="no space left"):
        p.publish(tmp_path, stage, retire=set(OLD))
    got = {str(q.relative_to(tmp_path)): q.read_text() for q in tmp_path.rglob("*")
           if q.is_file()}
    assert got == {**OLD, **USER}


def test_batch_and_explore_reports_never_replace_a_users_file(tmp_path: Path) -> None:
    """zoo-report.* and explore.* over a user's file: exit 2 (checked before any model runs);
    over an earlier run's: fine."""
    from mobilec.batch.report import ZOO_REPORTS
    from mobilec.errors import MobilecError
    from mobilec.util.publish import check_report_files

    (tmp_path / "zoo-report.md").write_text("# my zoo notes\n")
    with pytest.raises(MobilecError, match="did not write: zoo-report.md") as err:
        check_report_files(tmp_path, ZOO_REPORTS, ("models", "totals"))
    assert "--force" not in str(err.value)  # batch's --force means "convert again"
    (tmp_path / "zoo-report.json").write_text(json.dumps({"models": [], "totals": {}}))
    check_report_files(tmp_path, ZOO_REPORTS, ("models", "totals"))
