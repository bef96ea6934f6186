"""Issue 18 end to end: the real `mobilec` command on the demo model, as a CI job and a person
at a terminal meet it.

- the shared flags (-q, --json, -v) mean the same before and after the sub-command;
- after a run that passes (exit 0), breaks its budget (exit 1) or fails verification (exit 3)
  the output dir holds artifacts, their manifests, the reports and mobilec.lock.json only;
- SIGINT/SIGTERM during convert leave the previous state byte for byte, during evaluate only
  artifacts a finished run verified;
- `mobilec compare` on int8 vs int4, `--junit` against tests/data/junit.xsd, GitHub
  annotations at the recipe line of the budget key, `--locked` with a changed data file;
- the tables at 80, 100 and 160 columns in a real terminal (tmux), `inspect` and `bench`
  without native chatter.

Every run is a subprocess of the installed CLI, and each distinct run happens once per module
(see `cli`): about a dozen runs of the ~85k-parameter demo CNN in all.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import ROOT, signal_at_stage

from mobilec.ci.lockfile import LOCK_NAME
from mobilec.delegates.manifest import MANIFEST_SUFFIX
from mobilec.errors import EXIT_BUDGET, EXIT_OK, EXIT_SIGINT, EXIT_SIGTERM, EXIT_STAGE, EXIT_USAGE
from mobilec.report.table import artifact_cells
from mobilec.report.terminal import COMPACT, FULL, FULL_HEADERS
from mobilec.util.fs import lock_path

XSD = Path(__file__).parent / "data" / "junit.xsd"
DEMO_MODEL = ROOT / "models" / "demo" / "digits.keras"  # `make models/demo/digits.keras`
REPORTS = {"report.json", "report.md", "report.html", LOCK_NAME}
ARTIFACT_EXT = (".tflite", ".onnx", ".mlpackage", ".mlmodel", ".pte")
# What native libraries print when nobody silences them (TensorFlow/absl/LiteRT/onnxruntime).
CHATTER = re.compile(r"^(INFO|WARNING|ERROR): |^[IWE]\d{4} |tensorflow/|oneDNN|TensorFlow Lite|"
                     r"onnxruntime.*\[[WE]:|cuda|absl::", re.M)

# The recipe every run uses (int4 by --set). Written by hand so that the line of each budget
# key is known: annotations must point at it. 400000 bytes is more than any artifact of the
# demo; `--set budget.max_size_bytes=40000` makes the int4 .tflite (48 KB) break it (budgets
# judge the artifacts asked for, not the float32 baselines).
RECIPE = """\
# issue 18: the demo CNN on its own npz data, int8 for the CPU
version: 1
name: digits
model:
  path: {model}
data:
  source: npz
  train: train.npz            # calibration
  eval: eval.npz
  calibration_samples: 200
stages:
  - quantize: {{mode: int8}}
targets: [cpu]
verify: {{min_top1_agreement: 0.99, min_snr_db: 20}}
budget:
  max_accuracy_drop: 0.01
  max_size_bytes: 400000
output:
  dir: out
  report: [json, md, html]
"""


def budget_line(key: str) -> int:
    """The line of `budget.<key>` in RECIPE, counted from 1 (as GitHub counts)."""
    lines = RECIPE.splitlines()
    start = lines.index("budget:")
    return next(i for i, ln in enumerate(lines[start:], start + 1) if ln.startswith(f"  {key}:"))


# ----------------------------------------------------------------------------- running mobilec

@dataclass
class Run:
    args: list[str]
    code: int
    stdout: str
    stderr: str
    out: Path

    def __str__(self) -> str:
        return (f"mobilec {' '.join(self.args)} -> exit {self.code}\n--- stdout\n"
                f"{self.stdout[-3000:]}\n--- stderr\n{self.stderr[-3000:]}")

    @property
    def report(self) -> dict[str, Any]:
        return json.loads((self.out / "report.json").read_text())


def user_env(**extra: str) -> dict[str, str]:
    """The environment of a user's shell: conftest's TF_CPP_MIN_LOG_LEVEL would hide exactly the
    chatter these tests look for, and a GitHub runner's variables would add annotations."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "ABSL_LOG_LEVEL") and not k.startswith("GITHUB_")}
    env["PYTHONUNBUFFERED"] = "1"
    return {**env, **extra}


def mobilec(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 300
            ) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mobilec.cli", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=timeout, env=env or user_env())


@pytest.fixture(scope="module")
def model(request: pytest.FixtureRequest) -> Path:
    """The demo model `make demo` builds, else the session's freshly trained one."""
    return DEMO_MODEL if DEMO_MODEL.exists() else request.getfixturevalue("demo_keras")


@pytest.fixture(scope="module")
def ws(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder like a user's repository: r.yaml, train.npz and eval.npz."""
    from mobilec.sources.data import digits_split

    d = tmp_path_factory.mktemp("ci_cli")
    train, ev = digits_split()
    np.savez(d / "train.npz", x=train.x, y=train.y)
    np.savez(d / "eval.npz", x=ev.x, y=ev.y)
    (d / "r.yaml").write_text(RECIPE.format(model=model))
    return d


INT4 = ("--set", "quantize.mode=int4", "--set", "budget.max_size_bytes=40000")
CI_ENV = {"GITHUB_ACTIONS": "true", "GITHUB_WORKSPACE": "{ws}"}
# Each run once per module, on first use: name -> (arguments, extra environment).
RUNS: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "json_after": (("compress", "r.yaml", "--out", "{out}", "--json"), {}),
    # --locked with the lock of a run on the same inputs: must pass.
    "json_before": (("--json", "compress", "r.yaml", "--out", "{out}",
                     "--locked", "{runs}/json_after/" + LOCK_NAME), {}),
    "q_after": (("compress", "r.yaml", "--out", "{out}", "-q"), {}),
    "q_before": (("-q", "compress", "r.yaml", "--out", "{out}"), {}),
    # int4 of the demo: smaller, no accuracy lost on its 360 eval digits; the int4 .tflite
    # (48 KB) breaks the 40000-byte size budget (exit 1).
    "int4": (("compress", "r.yaml", "--out", "{out}", *INT4, "--junit", "{runs}/int4-junit.xml"),
             CI_ENV),
    # int4 after pruning 90% of the weights with one epoch of fine-tuning: accuracy collapses,
    # so two budget rules break (size and accuracy drop).
    "lossy": (("compress", "r.yaml", "--out", "{out}", *INT4, "--set", "prune.sparsity=0.9",
               "--set", "prune.epochs=1", "--set", "convert.formats=[tflite]",
               "--junit", "{runs}/lossy-junit.xml"), CI_ENV),
    # Verification no conversion can pass: every artifact is .unverified., exit 3.
    "broken": (("compress", "r.yaml", "--out", "{out}", "--set", "verify.min_snr_db=500",
                "--set", "convert.formats=[onnx]"), {}),
}


@pytest.fixture(scope="module")
def cli(ws: Path):
    done: dict[str, Run] = {}

    def get(name: str) -> Run:
        if name not in done:
            if name == "json_before":
                get("json_after")  # its lock is the one to match
            args, extra = RUNS[name]
            fill = {"out": str(ws / "runs" / name), "runs": str(ws / "runs"), "ws": str(ws)}
            args = tuple(a.format(**fill) for a in args)
            res = mobilec(*args, cwd=ws, env=user_env(**{k: v.format(**fill)
                                                         for k, v in extra.items()}))
            done[name] = Run(list(args), res.returncode, res.stdout, res.stderr,
                             ws / "runs" / name)
        return done[name]

    return get


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree(directory: Path) -> dict[str, str]:
    """Every file under a directory (relative path -> sha256): a state to compare with."""
    return {p.relative_to(directory).as_posix(): sha(p)
            for p in sorted(directory.rglob("*")) if p.is_file()}


def is_artifact_name(rel: str) -> bool:
    return rel.endswith(ARTIFACT_EXT)


# ----------------------------------------------------------------------------- shared flags

@pytest.mark.slow
def test_quiet_before_and_after_the_subcommand(cli) -> None:
    after, before = cli("q_after"), cli("q_before")
    for run in (after, before):
        assert run.code == EXIT_OK, run
        # -q: no table and no progress, only the one-line verdict (and errors: none here)
        assert run.stdout.startswith("digits: ok: ") and run.stdout.count("\n") == 1, run
        assert run.stderr == "", run
        assert run.report["exit_code"] == EXIT_OK
    assert [a["path"] for a in after.report["artifacts"]] == \
        [a["path"] for a in before.report["artifacts"]]


@pytest.mark.slow
def test_json_before_and_after_the_subcommand(cli) -> None:
    after, before = cli("json_after"), cli("json_before")
    for run in (after, before):
        assert run.code == EXIT_OK, run
        data = json.loads(run.stdout)  # the whole of stdout is one JSON document
        assert data == run.report  # ... and it is report.json
        assert "[mobilec] convert" not in run.stderr  # --json: no progress either
        assert not CHATTER.search(run.stderr), run
    # --locked with the lock of a run on the same inputs and tools passed (exit 0 above)
    keep = ("path", "format", "quantization", "status", "size_bytes", "accuracy")
    assert [{k: a[k] for k in keep} for a in json.loads(after.stdout)["artifacts"]] == \
        [{k: a[k] for k in keep} for a in json.loads(before.stdout)["artifacts"]]


# ----------------------------------------------------------------------------- the output dir

@pytest.mark.slow
@pytest.mark.parametrize("name, code", [("json_after", EXIT_OK), ("int4", EXIT_BUDGET),
                                        ("lossy", EXIT_BUDGET), ("broken", EXIT_STAGE)])
def test_output_dir_holds_artifacts_manifests_reports_and_the_lockfile_only(
        cli, ws: Path, name: str, code: int) -> None:
    run = cli(name)
    assert run.code == code, run
    rep = run.report
    files = set(tree(run.out))
    on_disk = {a["path"] for a in rep["artifacts"] if (run.out / a["path"]).exists()}
    expected = REPORTS | on_disk | {p + MANIFEST_SUFFIX for p in on_disk}
    assert files == expected, (sorted(files - expected), sorted(expected - files))
    assert not [f for f in files if Path(f).name.startswith(".")]  # no .mobilec.lock, no temp
    run_lock = lock_path(run.out)  # outside the output dir, removed on release
    assert not run_lock.is_relative_to(run.out.resolve()) and not run_lock.exists()
    if name == "broken":
        assert {a["status"] for a in rep["artifacts"]} == {"failed-verification"}
        assert on_disk and all(".unverified." in p for p in on_disk)
    else:
        assert all(a["status"] == "ok" for a in rep["artifacts"] if a["path"] in on_disk)
    # mobilec.lock.json pins this run's inputs and tools
    lock = json.loads((run.out / LOCK_NAME).read_text())
    assert lock["recipe"]["sha256"] == rep["recipe_sha256"]
    assert lock["inputs"]["data.eval"] == {"path": "eval.npz", "sha256": sha(ws / "eval.npz"),
                                           "kind": "file"}
    assert lock["inputs"]["data.train"]["sha256"] == sha(ws / "train.npz")
    assert lock["inputs"]["model"]["sha256"] == rep["model"]["sha256"]
    assert {"tensorflow", "onnxruntime", "ai-edge-litert", "numpy"} <= set(lock["tools"])
    assert lock["seeds"]


# ----------------------------------------------------------------------------- signals

def _interrupt(ws: Path, recipe: str, out: Path, stage: str, delay: float, sig: int
               ) -> tuple[int, str, Path]:
    """compress, and `sig` `delay` seconds after '[mobilec] <stage>: started'."""
    tmpdir = out.parent / f"tmp-{out.name}"
    tmpdir.mkdir()
    code, stderr, _ = signal_at_stage(["compress", recipe, "--out", str(out)], stage, delay,
                                      sig, cwd=ws, env=user_env(TMPDIR=str(tmpdir)))
    assert f"[mobilec] {stage}: ok" not in stderr, \
        f"the signal landed after {stage} had finished; give it more work:\n{stderr[-2000:]}"
    expected = EXIT_SIGINT if sig == signal.SIGINT else EXIT_SIGTERM
    assert code == expected, stderr[-3000:]
    assert "Traceback" not in stderr and "interrupted by" in stderr, stderr[-3000:]
    # Nothing may stay in $TMPDIR (work dir, run lock) but onnxruntime's session id, .ses
    assert [p.name for p in tmpdir.iterdir() if p.name != ".ses"] == []
    return code, stderr, tmpdir


SIGNALS = pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM],
                                  ids=["SIGINT", "SIGTERM"])


@pytest.mark.slow
@SIGNALS
def test_signal_during_convert_leaves_the_previous_run_untouched(cli, ws: Path, tmp_path: Path,
                                                                 sig: int) -> None:
    """The output dir already holds a finished run; a second run into it is interrupted while
    it converts. Nothing is published before every artifact is verified, so every file
    (artifacts, manifests, reports, lockfile) is the previous run's, byte for byte."""
    out = tmp_path / "out"
    shutil.copytree(cli("json_after").out, out)
    before = tree(out)
    _interrupt(ws, "r.yaml", out, "convert", 0.4, sig)
    assert tree(out) == before


@pytest.fixture(scope="module")
def long_eval(ws: Path) -> str:
    """r.yaml with 80 copies of the eval set, so that evaluate lasts seconds. Same model,
    calibration data and targets: the same artifacts, byte for byte."""
    ev = np.load(ws / "eval.npz")
    np.savez(ws / "eval-long.npz", x=np.tile(ev["x"], (80, 1, 1, 1)), y=np.tile(ev["y"], 80))
    text = (ws / "r.yaml").read_text().replace("eval: eval.npz", "eval: eval-long.npz")
    (ws / "r-long.yaml").write_text(text.replace("calibration_samples: 200",
                                                 "calibration_samples: 200\n  eval_samples: 1000000"))
    return "r-long.yaml"


@pytest.mark.slow
@SIGNALS
def test_signal_during_evaluate_leaves_the_previous_run_untouched(cli, ws: Path, tmp_path: Path,
                                                                  long_eval: str, sig: int
                                                                  ) -> None:
    """Convert has built and verified every artifact, then evaluate is interrupted: nothing
    was published (a run publishes once, after its report), so the output dir is the
    previous run's, byte for byte, and holds no staging or journal file."""
    out = tmp_path / "out"
    shutil.copytree(cli("json_after").out, out)
    before = tree(out)
    _interrupt(ws, long_eval, out, "evaluate", 0.3, sig)
    assert tree(out) == before
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


# ----------------------------------------------------------------------------- compare

def _lost_accuracy(base: dict[str, Any], new: dict[str, Any]) -> bool:
    """Independently of mobilec.ci.compare: did an artifact of the new run score lower than the
    base run's of the same target and format (float32 with float32, int4 with int8)?"""
    def key(a: dict[str, Any]) -> tuple[Any, ...]:
        return a["target"], a["format"], a["quantization"] == "float32"

    before = {key(a): a.get("accuracy") for a in base["artifacts"]}
    return any(a.get("accuracy") is not None and before.get(key(a)) is not None
               and a["accuracy"] < before[key(a)] - 1e-9 for a in new["artifacts"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["int4", "lossy"])
def test_compare_int8_with_int4(cli, ws: Path, name: str) -> None:
    base, new = cli("json_after"), cli(name)
    a, b = str(base.out), str(new.out / "report.json")  # an output dir and a report.json
    t8 = next(x for x in base.report["artifacts"] if x["format"] == "tflite"
              and x["quantization"] == "int8")
    t4 = next(x for x in new.report["artifacts"] if x["format"] == "tflite"
              and x["quantization"] == "int4")

    # A wide terminal: at 100 columns the table's width depends on the host latency change
    # (e.g. '+1027.7%' on a busy machine), and past 100 columns it shortens artifact names
    # ('…digits-int4.tflite'). Fitting the width is test_ci's render_text tests' job.
    wide = user_env(COLUMNS="200")
    text = mobilec("compare", a, b, cwd=ws, env=wide)
    assert text.returncode == EXIT_OK, text.stderr  # no gate: a change is shown, not failed
    assert "int8→int4" in text.stdout and t4["path"] in text.stdout
    size_change = f"{(t4['size_bytes'] - t8['size_bytes']) / t8['size_bytes'] * 100:+.1f}%"
    assert size_change in text.stdout, text.stdout  # the size delta of the int4 tflite

    lost = _lost_accuracy(base.report, new.report)
    assert lost == (name == "lossy")  # what the demo measures; the gate must agree either way
    gated = mobilec("compare", a, b, "--max-accuracy-loss", "0", cwd=ws, env=wide)
    assert gated.returncode == (EXIT_BUDGET if lost else EXIT_OK), gated.stdout
    assert ("regression(s):" in gated.stdout) == lost
    if lost:
        acc = f"{t8['accuracy'] * 100:.2f}% → {t4['accuracy'] * 100:.2f}%"
        assert acc in " ".join(gated.stdout.split()), gated.stdout

    md = mobilec("compare", a, b, "--md", "--max-accuracy-loss", "0", cwd=ws)
    assert md.returncode == gated.returncode
    assert md.stdout.startswith("### ❌" if lost else "### ✅"), md.stdout
    assert "| artifact | quant |" in md.stdout and f"`{t4['path']}`" in md.stdout

    for args in (("compare", a, b, "--json", "--max-accuracy-loss", "0"),
                 ("--json", "compare", a, b, "--max-accuracy-loss", "0")):
        js = mobilec(*args, cwd=ws)
        data = json.loads(js.stdout)
        assert js.returncode == data["exit_code"] == gated.returncode
        assert data["passed"] is not lost
        row = next(r for r in data["artifacts"] if r["new"]["path"] == t4["path"])
        assert row["base"]["quantization"] == "int8"
        assert row["metrics"]["size_bytes"]["delta"] == t4["size_bytes"] - t8["size_bytes"]
        assert row["metrics"]["accuracy"]["delta"] == pytest.approx(t4["accuracy"]
                                                                    - t8["accuracy"])


@pytest.mark.slow
def test_compare_identical_runs_exits_0(cli, ws: Path) -> None:
    one, two = cli("q_after"), cli("q_before")
    gates = ("--max-accuracy-loss", "0", "--max-size-increase", "0")
    same = mobilec("compare", str(one.out), str(one.out), *gates, "--max-latency-increase", "0",
                   cwd=ws)
    assert same.returncode == EXIT_OK and "no regression" in same.stdout, same.stdout
    # two runs of the same recipe: the same bytes, so the same sizes and accuracies
    twice = mobilec("compare", str(one.out), str(two.out), *gates, cwd=ws)
    assert twice.returncode == EXIT_OK, twice.stdout


# ----------------------------------------------------------------------------- JUnit, annotations

def _over_budget(rep: dict[str, Any]) -> set[tuple[str, str]]:
    """(rule, artifact) pairs the budget of r.yaml (with --set budget.max_size_bytes=40000)
    should fail, from the report's numbers."""
    out = set()
    for a in rep["artifacts"]:
        if a["status"] == "ok" and a["role"] == "artifact":
            if a["size_bytes"] > 40000:
                out.add(("max_size_bytes", a["path"]))
            if a["accuracy_drop"] is not None and a["accuracy_drop"] > 0.01:
                out.add(("max_accuracy_drop", a["path"]))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["int4", "lossy"])
def test_junit_validates_and_fails_one_case_per_violated_budget_rule(cli, ws: Path,
                                                                     name: str) -> None:
    xmlschema = pytest.importorskip("xmlschema")  # in the `test` extra
    run = cli(name)
    assert run.code == EXIT_BUDGET, run
    xml = (ws / "runs" / f"{name}-junit.xml").read_text()
    xmlschema.XMLSchema(str(XSD)).validate(xml)
    expected = _over_budget(run.report)
    assert expected and len(run.report["budget"]["violations"]) == len(expected)
    suite = ET.fromstring(xml.encode()).find("testsuite")
    assert suite is not None
    failing = [c for c in suite.iter("testcase")
               if c.find("failure") is not None and ".budget." in c.get("classname", "")]
    assert {(c.get("classname", "").rsplit(".", 1)[-1], c.get("name")) for c in failing} \
        == expected
    assert len(failing) == len(expected)
    assert int(suite.get("failures", "-1")) == len(failing)  # verification passed everywhere
    assert int(suite.get("errors", "-1")) == 0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["int4", "lossy"])
def test_github_annotations_point_at_the_budget_key_line(cli, name: str) -> None:
    run = cli(name)
    errors = [ln for ln in run.stdout.splitlines() if ln.startswith("::error")]
    rules = sorted({rule for rule, _ in _over_budget(run.report)})
    assert len(errors) == len(rules), run  # one per violated rule, its artifacts in the message
    for rule in rules:
        line = budget_line(rule)  # 16 and 17, not the `budget:` line
        limit = {"max_size_bytes": "40000", "max_accuracy_drop": "0.01"}[rule]
        prefix = f"::error file=r.yaml,line={line},title=mobilec budget%3A {rule} = {limit}::"
        hit = [e for e in errors if e.startswith(prefix)]
        assert len(hit) == 1, (prefix, errors)
        for v in run.report["budget"]["violations"]:
            assert (v in hit[0]) == (rule in v)
    assert not any(ln.startswith("::") for ln in cli("json_after").stdout.splitlines())


# ----------------------------------------------------------------------------- lockfile

@pytest.mark.slow
def test_locked_with_a_changed_data_file_exits_2_naming_it_and_both_hashes(cli, ws: Path,
                                                                           tmp_path: Path) -> None:
    lock = cli("json_after").out / LOCK_NAME
    for name in ("r.yaml", "train.npz", "eval.npz"):  # the same repository, one file edited
        shutil.copy(ws / name, tmp_path / name)
    old = sha(tmp_path / "eval.npz")
    ev = np.load(tmp_path / "eval.npz")
    np.savez(tmp_path / "eval.npz", x=ev["x"], y=np.roll(ev["y"], 1))  # relabelled
    new = sha(tmp_path / "eval.npz")
    start = time.monotonic()
    res = mobilec("compress", "r.yaml", "--out", "out", "--locked", str(lock), cwd=tmp_path)
    assert res.returncode == EXIT_USAGE, res.stderr
    err = res.stderr
    assert "differs from the lock in 1 way(s)" in err, err
    assert f"data file eval.npz changed: sha256 {old[:12]}… in the lock, {new[:12]}… now" in err
    assert "Traceback" not in err and "[mobilec] load: started" not in err  # refused up front
    assert not (tmp_path / "out").exists()
    assert time.monotonic() - start < 60


# ----------------------------------------------------------------------------- the terminal

def tmux_screen(command: str, width: int, cwd: Path, env: dict[str, str] | None = None,
                timeout: float = 240) -> tuple[int, str]:
    """Run `command` in a detached tmux window `width` columns wide; return its exit code and
    the screen (scrollback included; lines the terminal wrapped are joined again, so a line
    longer than `width` is one the terminal had to wrap)."""
    sock = Path(tempfile.mkdtemp(prefix="mobilec-tmux-")) / "socket"  # a private server
    tmux = ["tmux", "-S", str(sock), "-f", "/dev/null"]
    script = f"{command}; echo __EXIT=$?; sleep 600"
    subprocess.run([*tmux, "new-session", "-d", "-x", str(width), "-y", "50", "-c", str(cwd),
                    "bash", "--norc", "--noprofile", "-c", script], check=True,
                   env=env or user_env())
    try:
        deadline = time.monotonic() + timeout
        while True:
            screen = subprocess.run([*tmux, "capture-pane", "-p", "-J", "-S", "-"],
                                    capture_output=True, text=True, check=True).stdout
            found = re.search(r"^__EXIT=(\d+)$", screen, re.M)
            if found:
                text = screen[:found.start()].rstrip("\n")
                return int(found.group(1)), "\n".join(ln.rstrip() for ln in text.splitlines())
            if time.monotonic() > deadline:
                raise AssertionError(f"no exit after {timeout}s:\n{screen}")
            time.sleep(0.5)
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
        shutil.rmtree(sock.parent, ignore_errors=True)


needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")


@pytest.mark.slow
@needs_tmux
@pytest.mark.parametrize("width", [80, 100, 160])
def test_compress_table_in_tmux(ws: Path, tmp_path: Path, width: int) -> None:
    out = tmp_path / "out"
    code, screen = tmux_screen(f"{sys.executable} -m mobilec.cli compress r.yaml --out {out}",
                               width, ws)
    assert code == EXIT_OK, screen
    lines = screen.splitlines()
    assert all(len(ln) <= width for ln in lines), f"the terminal had to wrap a line:\n{screen}"
    cols = FULL if width >= 120 else COMPACT
    head = next(i for i, ln in enumerate(lines) if ln.startswith("artifact "))
    assert lines[head].split() == " ".join(FULL_HEADERS[i] for i in cols).split(), screen
    rep = json.loads((out / "report.json").read_text())
    table = lines[head:head + 2 + len(rep["artifacts"])]
    assert "…" not in "\n".join(table), screen  # no header, number or path cut
    for a in rep["artifacts"]:
        cells = artifact_cells(a)
        row = next(ln for ln in table if ln.startswith(a["path"] + " "))
        assert row.split() == " ".join(cells[i] for i in cols).split(), (row, cells)
    assert not CHATTER.search(screen), screen


@needs_tmux
@pytest.mark.parametrize("width", [80, 100, 160])
def test_targets_table_in_tmux(tmp_path: Path, width: int) -> None:
    from mobilec.policy.targets import describe

    code, screen = tmux_screen(f"{sys.executable} -m mobilec.cli targets", width, ROOT)
    assert code == EXIT_OK, screen
    lines = screen.splitlines()
    assert all(len(ln) <= width for ln in lines), f"the terminal had to wrap a line:\n{screen}"
    assert lines[0].split() == ["target", "artifacts", "quant", "delegate", "fallback"]
    assert "…" not in screen
    flat = " ".join(screen.split())
    for t in describe():
        assert any(ln.startswith(t["target"] + " ") for ln in lines[2:]), t["target"]
        assert " ".join(t["constraints"].split()) in flat


@needs_tmux
def test_targets_wide_in_a_narrow_terminal_keeps_words_whole() -> None:
    """--wide at 50 columns: every column, no header or value folded mid-word ("artifac/ts",
    ".mlpack/age"); the terminal wraps the table's lines, the sentences wrap between words."""
    from mobilec.policy.targets import describe

    code, screen = tmux_screen(f"{sys.executable} -m mobilec.cli targets --wide", 50, ROOT)
    assert code == EXIT_OK, screen
    lines = screen.splitlines()
    assert lines[0].split() == ["target", "artifacts", "quant", "delegate", "fallback"], screen
    for t in describe():
        row = next(ln for ln in lines if ln.startswith(t["target"] + " "))
        assert t["artifacts"] in row and t["quantization"] in row, (row, screen)
    notes = lines[lines.index("") + 1:]
    assert notes and all(len(ln) <= 50 for ln in notes), screen


# ----------------------------------------------------------------------------- inspect, bench

@pytest.mark.slow
def test_inspect_prints_plain_shapes(cli, ws: Path) -> None:
    tflite = cli("json_after").out / "cpu" / "digits-int8.tflite"
    res = mobilec("inspect", str(tflite), cwd=ws)
    assert res.returncode == EXIT_OK, res.stderr
    assert "[1, 8, 8, 1]" in res.stdout and "[1, 10]" in res.stdout, res.stdout
    assert "np." not in res.stdout and "int32(" not in res.stdout
    assert not CHATTER.search(res.stdout + res.stderr), res.stdout + res.stderr
    js = mobilec("--json", "inspect", str(tflite), cwd=ws)
    assert json.loads(js.stdout)["inputs"][0]["shape"] == [1, 8, 8, 1]


@pytest.mark.slow
def test_bench_is_quiet_unless_verbose(cli, ws: Path) -> None:
    tflite = str(cli("json_after").out / "cpu" / "digits-int8.tflite")
    announce = "INFO: Created TensorFlow Lite XNNPACK delegate"
    res = mobilec("bench", tflite, "--runs", "5", cwd=ws)
    assert res.returncode == EXIT_OK, res.stderr
    assert announce not in res.stdout + res.stderr
    assert not CHATTER.search(res.stdout + res.stderr), res.stdout + res.stderr
    assert "input [1, 8, 8, 1] float32" in res.stdout
    for verbose in (("bench", tflite, "--runs", "5", "-v"), ("-v", "bench", tflite, "--runs", "5")):
        loud = mobilec(*verbose, cwd=ws)
        assert loud.returncode == EXIT_OK and announce in loud.stdout + loud.stderr
