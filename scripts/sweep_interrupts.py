"""Signal and disk-full sweep over real `mobilec compress` and `mobilec batch` runs (issue 27).

For each case the output dir first holds a finished int8 run (the "previous good run");
a second run (float16) into it is then stopped:

- by SIGINT, SIGTERM or SIGKILL at a point of the run (a progress line on stderr, plus a
  delay): inside load, quantize, convert (early, late), evaluate, and right after
  evaluate (report and publish);
- or by a full disk: the output dir is a tmpfs of a given size (200 KB .. the full run).

After each, it checks what the issue asks: the output dir is byte-identical to the
previous good run, or complete (every file its lock lists, report.json readable, nothing
else mobilec wrote); no staging or journal file; 0 files left in the run's temp dir when
Python could clean up (SIGINT/SIGTERM, ENOSPC; after SIGKILL the next run's sweep and
recovery count); every input's sha256 unchanged. A SIGKILLed run is followed by what the
next run does first (recover the journal, remove the staging dir) before the check.

    python scripts/sweep_interrupts.py [--model models/demo/digits.keras] [--quick]

Prints one line per case and totals. Needs root for the tmpfs cases (skipped otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mobilec.util.fs import clean_temp, sha256_path  # noqa: E402
from mobilec.util.publish import recover  # noqa: E402

# (name, stderr line that arms the signal, delay in s)
POINTS = [
    ("load", "[mobilec] load: started", 1.5),
    ("quantize", "[mobilec] quantize: started", 0.0),
    ("convert-early", "[mobilec] convert: started", 0.4),
    ("convert-late", "[mobilec] convert: started", 4.0),
    ("evaluate", "[mobilec] evaluate: started", 0.3),
    ("publish", "[mobilec] evaluate: ok", 0.0),
]
SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}
TMPFS_SIZES = ["200k", "400k", "700k", "1m", "2m", "8m"]


def tree(directory: Path) -> dict[str, str]:
    if not directory.exists():
        return {}
    return {p.relative_to(directory).as_posix(): sha256_path(p)
            for p in sorted(directory.rglob("*")) if p.is_file()}


def complete(directory: Path) -> bool:
    """A finished run: the lock lists exactly mobilec's files, all there, report readable."""
    try:
        lock = json.loads((directory / "mobilec.lock.json").read_text())
        json.loads((directory / "report.json").read_text())
    except (OSError, ValueError):
        return False
    files = set(tree(directory))
    listed = set(lock.get("outputs") or [])
    mine = {f for f in files if f.split("/")[-1] != "user-notes.txt"}
    have = {f for f in listed if (directory / f).exists()}
    return have == listed and all(any(f == x or f.startswith(x + "/") for x in listed)
                                  for f in mine)


def recipe(ws: Path, model: Path, mode: str, name: str) -> Path:
    doc = {"version": 1, "name": "digits", "model": {"path": str(model)},
           "data": {"source": "npz", "eval": str(ws / "eval.npz"), "eval_samples": 1_000_000,
                    "calibration_samples": 100},
           "stages": [{"quantize": {"mode": mode}}], "targets": ["cpu"],
           "output": {"dir": str(ws / "unused"), "report": ["json", "md"]}}
    path = ws / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def run(args: list[str], tmpdir: Path, arm: str | None = None, delay: float = 0.0,
        sig: int | None = None, cwd: Path | None = None) -> tuple[int, str, bool]:
    env = {**os.environ, "TMPDIR": str(tmpdir), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mobilec.cli", *args], env=env, cwd=cwd,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines, sent = [], False
    assert proc.stderr is not None
    for line in proc.stderr:
        lines.append(line)
        if arm and not sent and arm in line:
            time.sleep(delay)
            proc.send_signal(sig)
            sent = True
            break
    rest = proc.communicate(timeout=300)[1]
    return proc.returncode, "".join(lines) + rest, sent


def left_in_tmp(tmpdir: Path) -> list[str]:
    return sorted(p.name for p in tmpdir.iterdir() if p.name != ".ses")  # .ses: onnxruntime's


def check(label: str, out: Path, before: dict[str, str], tmpdir: Path, inputs: dict[str, str],
          killed: bool, code: int, results: list[dict]) -> None:
    if killed and out.exists():
        recover(out)  # what the next run does first, under the lock
        clean_temp(out)
    after = tree(out)
    state = "previous" if after == before else "new-complete" if complete(out) else "BROKEN"
    scratch = [p.name for p in out.iterdir() if p.name.startswith(".mobilec")] \
        if out.exists() else []
    tmp_left = left_in_tmp(tmpdir)
    inputs_ok = all(sha256_path(Path(p)) == h for p, h in inputs.items())
    ok = state != "BROKEN" and not scratch and inputs_ok and (killed or not tmp_left)
    results.append({"case": label, "exit": code, "state": state, "tmp_left": len(tmp_left),
                    "scratch": scratch, "inputs_ok": inputs_ok, "ok": ok})
    print(f"{'ok  ' if ok else 'FAIL'} {label:<34} exit {code:>4}  out: {state:<12} "
          f"temp files left: {len(tmp_left)}{' (SIGKILL)' if killed and tmp_left else ''}"
          f"{'  scratch: ' + str(scratch) if scratch else ''}"
          f"{'' if inputs_ok else '  INPUT CHANGED'}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=str(ROOT / "models/demo/digits.keras"))
    ap.add_argument("--quick", action="store_true", help="SIGTERM only, three points")
    ap.add_argument("--no-tmpfs", action="store_true")
    args = ap.parse_args()
    ws = Path(tempfile.mkdtemp(prefix="mobilec-sweep-"))
    model = Path(args.model).resolve()
    from mobilec.sources.data import digits_split

    _, ev = digits_split()
    np.savez(ws / "eval.npz", x=np.tile(ev.x, (40, 1, 1, 1)), y=np.tile(ev.y, 40))
    first, second = recipe(ws, model, "int8", "first"), recipe(ws, model, "float16", "second")
    inputs = {str(p): sha256_path(p) for p in (model, ws / "eval.npz", first, second)}

    good = ws / "good"
    tmp0 = ws / "tmp0"
    tmp0.mkdir()
    code, err, _ = run(["compress", str(first), "--out", str(good)], tmp0)
    assert code == 0, err[-2000:]
    (good / "user-notes.txt").write_text("mine\n")
    before = tree(good)
    results: list[dict] = []
    sigs = {"SIGTERM": signal.SIGTERM} if args.quick else SIGNALS
    points = [p for p in POINTS if p[0] in ("load", "convert-early", "evaluate")] \
        if args.quick else POINTS
    started = time.monotonic()
    for point, arm, delay in points:
        for sname, sig in sigs.items():
            out, tmpdir = ws / f"o-{point}-{sname}", ws / f"t-{point}-{sname}"
            shutil.copytree(good, out)
            tmpdir.mkdir()
            code, err, sent = run(["compress", str(second), "--out", str(out)], tmpdir, arm,
                                  delay, sig)
            label = f"compress {point} {sname}" + ("" if sent else " (not sent: ran through)")
            check(label, out, before, tmpdir, inputs, sig == signal.SIGKILL, code, results)
    # batch: a zoo of the same model twice, stopped while a worker converts
    for sname, sig in sigs.items():
        zoo = ws / f"zoo-{sname}.yaml"
        zoo.write_text(yaml.safe_dump({"recipe": str(second), "models": [
            {"path": str(model), "name": "a"}, {"path": str(model), "name": "b"}],
            "workers": 1}))
        out, tmpdir = ws / f"ob-{sname}", ws / f"tb-{sname}"
        tmpdir.mkdir()
        code, err, sent = run(["batch", str(zoo), "--out", str(out)], tmpdir, "a", 8.0, sig)
        killed = sig == signal.SIGKILL
        tmp_left = left_in_tmp(tmpdir)
        leftovers = [p.name for p in out.rglob("*") if p.name.startswith(".mobilec-tmp")] \
            if out.exists() else []
        ok = (killed or not tmp_left) and not (leftovers and not killed)
        results.append({"case": f"batch {sname}", "exit": code, "tmp_left": len(tmp_left),
                        "ok": ok})
        print(f"{'ok  ' if ok else 'FAIL'} batch {sname:<28} exit {code:>4}  temp files left: "
              f"{len(tmp_left)}  staging left in out: {len(leftovers)}", flush=True)
    if not args.no_tmpfs and os.geteuid() == 0:
        for size in TMPFS_SIZES:
            mnt = ws / f"fs-{size}"
            mnt.mkdir()
            if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                              capture_output=True).returncode != 0:
                print(f"skip tmpfs {size}: cannot mount")
                continue
            try:
                out = mnt / "out"
                try:
                    shutil.copytree(good, out)
                    base = before
                except OSError:  # the previous run itself does not fit: start empty
                    shutil.rmtree(out, ignore_errors=True)
                    base = {}
                tmpdir = ws / f"tfs-{size}"
                tmpdir.mkdir()
                code, err, _ = run(["compress", str(second), "--out", str(out)], tmpdir)
                check(f"tmpfs {size}", out, base, tmpdir, inputs, False, code, results)
            finally:
                subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    bad = [r for r in results if not r["ok"]]
    print(f"\n{len(results)} cases, {len(results) - len(bad)} ok, {len(bad)} failed; "
          f"{time.monotonic() - started:.0f} s; workspace {ws}")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
