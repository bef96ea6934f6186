"""Running an .aimodel on this host with coreai-core's Linux runtime — always in a child
process (formats/coreai_worker.py): the runtime (and the ODIX compiler that `executable()`
runs first) is native code, and a crash must fail one route, not mobilec.

One warm child serves every .aimodel of a run. The format starts it when it begins a build
(`prestart`) if a core is spare, so the child's imports overlap the conversion (else at the
first run); it runs one file per request.
A child that crashes fails that request only (ConversionError naming the signal) and the
next request starts a fresh one; one that hangs past RUN_TIMEOUT_S is killed. Before this,
each run was a new child (three per artifact: verification, evaluate, latency), and their
start-up was most of what verification cost (build + verify was ~2-2.7x the plain
three-call script on the digits CNN).

`timed_outputs` runs a file once for verification, evaluate and latency: the first run of
a file covers the whole eval set when the asked rows are its first rows, and times one
sample in the same request.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from mobilec.errors import ConversionError
from mobilec.formats.coreai_worker import FUNCTION as FUNCTION  # the function every run calls
from mobilec.sources.batch import Inputs, as_list, batch_axes, first_n, inputs_digest, length
from mobilec.state import ModelState
from mobilec.util.child import child_command, child_env, last_error_line, signal_name
from mobilec.util.fs import sha256_path

RUN_TIMEOUT_S = 600
ENTRY = "mobilec.formats.coreai_worker:serve"


class _Worker:
    """One child running coreai_worker.serve; requests and replies are JSON lines."""

    def __init__(self) -> None:
        read_fd, write_fd = os.pipe()
        self.stderr = tempfile.TemporaryFile()
        try:
            # cwd "/": the child outlives the run whose scratch dir is the cwd now
            self.proc = subprocess.Popen(
                child_command(ENTRY, [str(write_fd)]), env=child_env(), pass_fds=(write_fd,),
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self.stderr, cwd="/")
        finally:
            os.close(write_fd)
        self.replies = read_fd
        self.buffer = b""
        self.owner = os.getpid()  # a forked copy of this process must not share the child

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ask(self, request: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise self._died() from None
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.replies], [], [], left)[0]:
                self.stop(kill=True)
                raise ConversionError(f"the .aimodel did not finish in {timeout_s:.0f} s in "
                                      "the Core AI runtime")
            chunk = os.read(self.replies, 1 << 16)
            if not chunk:
                raise self._died()
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return json.loads(line)

    def _died(self) -> ConversionError:
        code = self.proc.wait()
        self.stderr.seek(0)
        err = self.stderr.read().decode(errors="replace")
        self.stop()
        crash = signal_name(code)
        return ConversionError(
            f"the Core AI runtime crashed ({crash}) running the .aimodel" if crash else
            f"the .aimodel failed in the Core AI runtime: {last_error_line(err)}")

    def stop(self, kill: bool = False) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            try:
                self.proc.stdin.close()  # EOF: the child leaves on its own
            except OSError:
                pass
        try:
            if kill:
                self.proc.kill()
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.replies)
        self.replies = -1
        self.stderr.close()


_worker: _Worker | None = None


def prestart(early: bool = False) -> None:
    """Start the runtime child now (if none is running). `early`: the caller is about to
    convert, and the child's imports (~0.4 s of CPU) would overlap the conversion; that
    only pays on a spare core. On a busy host they would take CPU from the conversion
    itself (measured on 2 cores at load 4-5: the digits CNN's build went from 1.05x the
    plain script's CPU to 2.5x), so then the child starts at the first run instead."""
    global _worker
    if early and not spare_core():
        return
    if _worker is not None and _worker.owner != os.getpid():
        _worker = None  # forked: the child answers the parent; start our own
    if _worker is None or not _worker.alive() or _worker.replies < 0:
        if _worker is not None and _worker.replies >= 0:
            _worker.stop()
        _worker = _Worker()


def spare_core() -> bool:
    """Whether this host has a core the running work leaves idle (1-minute load average)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return os.getloadavg()[0] <= (cores or 1) - 1


def shutdown() -> None:
    """Stop the runtime child (at exit; a benchmark stops it to measure a cold start)."""
    global _worker
    if _worker is not None and _worker.replies >= 0 and _worker.owner == os.getpid():
        _worker.stop()
    _worker = None


atexit.register(shutdown)


def worker_pid() -> int | None:
    """The running runtime child's process id, if one is running."""
    return _worker.proc.pid if _worker is not None and _worker.alive() else None


def run_isolated(path: Path, x: Inputs, latency: bool = False, outputs: bool = True,
                 axes: dict[str, Any] | None = None
                 ) -> tuple[list[str], list[np.ndarray], dict[str, float] | None]:
    """Run an .aimodel in the runtime child: (output names, outputs on `x`, latency of one
    sample or None). `axes`: the inputs' and outputs' batch dims (samples-first data goes
    there at each call, sources/batch.py). A runtime crash or error becomes a
    ConversionError."""
    prestart()
    assert _worker is not None
    worker = _worker
    with tempfile.TemporaryDirectory(prefix="mobilec-aimodel-") as tmp:
        xin, out = Path(tmp) / "x.npz", Path(tmp) / "out.npz"
        np.savez(xin, *[np.ascontiguousarray(a) for a in as_list(x)])
        try:
            reply = worker.ask({"path": str(path), "x": str(xin), "out": str(out),
                                "outputs": outputs, "latency": latency, "axes": axes,
                                "tmp": tempfile.gettempdir()}, RUN_TIMEOUT_S)
        finally:
            if worker.replies < 0:
                shutdown()  # it died or hung: the next run starts a fresh child
        if "error" in reply:
            raise ConversionError(f"the .aimodel failed in the Core AI runtime: "
                                  f"{reply['error']}")
        if not outputs:
            return [], [], reply.get("latency")
        with np.load(out) as z:
            outs = [z[f"arr_{i}"] for i in range(len(z.files))]
        return reply["names"], outs, reply.get("latency")


def timed_outputs(state: ModelState, path: Path, x: Inputs) -> tuple[list[str], list[np.ndarray]]:
    """(names, outputs) of the .aimodel on `x`. The first run of a file on the first rows of
    the eval set runs the whole eval set and times one sample in the same request:
    verification, evaluate (after the file is published under its final name: the same
    bytes) and latency are one run."""
    file = sha256_path(path)
    key = ("aimodel_run", file, inputs_digest(x))
    if key not in state.memo:
        full = _covering(state, x)
        names, outs, timing = run_isolated(path, full, latency=True, axes=_axes(state))
        state.memo[("aimodel_run", file, inputs_digest(full))] = (names, outs)
        state.memo[key] = (names, [o[:length(x)] for o in outs])
        state.memo[("aimodel_latency", file)] = timing
    return state.memo[key]


def timed_latency(state: ModelState, path: Path, sample: Inputs) -> dict[str, float]:
    """The latency of one sample: what timed_outputs measured for this file, else a run."""
    got = state.memo.get(("aimodel_latency", sha256_path(path)))
    return got if got is not None else run_isolated(path, first_n(sample, 1), latency=True,
                                                    axes=_axes(state),
                                                    outputs=False)[2]


def _axes(state: ModelState) -> dict[str, Any]:
    return {"inputs": batch_axes(state.inputs),
            "outputs": {t.name: t.batch_axis for t in state.outputs}}


def _covering(state: ModelState, x: Inputs) -> Inputs:
    """The eval inputs when `x` is their first rows (verification's samples), else `x`."""
    ev = state.eval_x
    if ev is None or length(x) > length(ev) or len(as_list(x)) != len(as_list(ev)):
        return x
    if length(x) == length(ev):
        return x
    return ev if inputs_digest(first_n(ev, length(x))) == inputs_digest(x) else x
