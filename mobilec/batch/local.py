"""The local executor: a pool of reused worker processes, one model at a time each.

Why not concurrent.futures.ProcessPoolExecutor: when one of its workers dies
(a TF abort, a segfault, the OOM killer) the whole pool is marked broken and
every pending future fails, with no way to tell which model did it. Here the
driver knows which model each worker holds, so a dead or timed-out worker
fails exactly its model, is replaced, and the rest go on.

Workers are started with 'spawn' (never fork: TensorFlow's threads do not
survive it), import TensorFlow once at start-up, and then take model after
model. Their stdout/stderr go to a log file per worker, so converter noise
never reaches the driver's terminal (or its --json stdout); the tail of that
log explains a crash.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import mobilec.stages.convert  # noqa: F401 - warm the stage and format modules too
from mobilec.batch.task import configure_worker, run_job
from mobilec.errors import Interrupted
from mobilec.util import signals
from mobilec.util.fs import drop_stale_lock, sweep_stale_work_dirs
from mobilec.util.progress import Progress

STARTUP_GRACE_S = 300.0  # a worker that takes longer to start than this is stuck
MAX_START_FAILURES = 3   # consecutive workers dying before their first model: stop trying
STOP_GRACE_S = 10.0      # a worker stopped with SIGTERM has this long to clean up
Event = Callable[..., None]


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


# ----------------------------------------------------------------------------- worker side

class _PipeProgress(Progress):
    """Stage events go to the driver instead of a terminal."""
    def __init__(self, conn: Connection, key: Any):
        super().__init__(quiet=True)
        self._conn, self._key = conn, key

    def stage_start(self, name: str, detail: str = "") -> None:
        self._conn.send(("stage", self._key, name))


def _redirect_output(log_path: str) -> None:
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _release_memory() -> None:
    """Drop the last model's graphs so a long-lived worker does not grow model after model."""
    import gc
    import sys

    for name in ("tf_keras", "keras"):
        mod = sys.modules.get(name)
        with contextlib.suppress(Exception):
            mod.backend.clear_session()  # type: ignore[union-attr]
    gc.collect()


def worker_main(conn: Connection, log_path: str) -> None:
    """Entry point of a worker process (spawned)."""
    # Ctrl-C reaches the whole process group; the driver decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _redirect_output(log_path)

    configure_worker()  # TensorFlow once per worker, before the first model
    # SIGTERM (the driver stopping a busy worker) unwinds the job like a CLI run, so its
    # work dir, staging dir and output-dir lock are removed on the way out.
    signals.install()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _serve(conn)
    except Interrupted:
        return


def _serve(conn: Connection) -> None:
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return  # the driver is gone
        if msg is None:
            return
        key, spec, out_dir, evaluate, options = msg
        print(f"=== {spec['name']} ===", flush=True)
        conn.send(("start", key, os.getpid()))
        result = run_job(spec, Path(out_dir), _PipeProgress(conn, key), evaluate=evaluate,
                         options=options)
        conn.send(("done", key, result))
        _release_memory()


# ----------------------------------------------------------------------------- driver side

@dataclass
class _Slot:
    index: int
    proc: Any
    conn: Connection
    log: Path
    key: Any = None
    task: Any = None
    sent_at: float = 0.0
    started_at: float | None = None
    dead: bool = False


def _crash_reason(exitcode: int | None, log: Path) -> str:
    if exitcode is not None and exitcode < 0:
        sig = signal.Signals(-exitcode).name
        what = {"SIGKILL": f"was killed ({sig}: out of memory?)",
                "SIGABRT": f"aborted ({sig})", "SIGSEGV": f"crashed ({sig})"}.get(sig, f"died ({sig})")
    else:
        what = f"exited unexpectedly (code {exitcode})"
    tail = _log_tail(log)
    return (f"worker process {what} while converting this model"
            + (f"; last output: {tail}" if tail else "") + f"; full log: {log}")


def _log_tail(log: Path, limit: int = 300) -> str:
    """The last meaningful line the worker printed for its current model."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    text = text.rsplit("=== ", 1)[-1]
    lines = [ln.strip() for ln in text.splitlines()[1:] if ln.strip()]
    return lines[-1][:limit] if lines else ""


class LocalPool:
    """Runs tasks on `workers` reused processes; yields (key, result) as each finishes."""
    def __init__(self, workers: int, log_dir: Path, timeout: float | None = None,
                 on_event: Event | None = None):
        self.workers = max(1, workers)
        self.timeout = timeout
        self.log_dir = log_dir
        self.on_event = on_event or (lambda *a, **k: None)
        self.ctx = mp.get_context("spawn")
        self.slots: list[_Slot] = []
        self.start_failures = 0
        self.start_error = ""

    def _spawn(self, index: int) -> _Slot:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_dir / f"worker-{index}.log"
        parent, child = self.ctx.Pipe(duplex=True)
        proc = self.ctx.Process(target=worker_main, args=(child, str(log)),
                                name=f"mobilec-worker-{index}")
        proc.start()
        child.close()
        return _Slot(index, proc, parent, log)

    def run(self, tasks: list[tuple[Any, dict[str, Any], Path, bool, dict[str, Any]]]
            ) -> Iterator[tuple[Any, dict[str, Any]]]:
        """tasks: (key, spec, out_dir, evaluate, options). Results come back in completion order."""
        pending = deque(tasks)
        for old in self.log_dir.glob("worker-*.log"):
            old.unlink(missing_ok=True)  # last run's; a log explains this run's crashes only
        self.slots = [self._spawn(i) for i in range(min(self.workers, len(pending)))]
        while pending or any(s.key is not None for s in self.slots):
            for s in self.slots:
                if s.key is None and not s.dead and pending:
                    task = pending.popleft()
                    key, spec, out_dir, evaluate, options = task
                    s.conn.send((key, spec, str(out_dir), evaluate, options))
                    s.key, s.task, s.sent_at, s.started_at = key, task, time.monotonic(), None
                    self.on_event("queued", key)
            live = [s for s in self.slots if not s.dead]
            wait([s.conn for s in live] + [s.proc.sentinel for s in live],
                 timeout=self._next_deadline())
            for s in live:
                for key, result in self._service(s):
                    if result is None:
                        pending.appendleft(s.task)  # its worker never started: not its fault
                    else:
                        yield key, result
                if self.start_failures >= MAX_START_FAILURES:
                    while pending:
                        yield pending.popleft()[0], _failed(
                            f"worker processes cannot start: {self.start_error}")
                elif s.dead and pending:
                    self.slots[self.slots.index(s)] = self._spawn(s.index)

    def _next_deadline(self) -> float | None:
        deadlines = [self._deadline(s) for s in self.slots if s.key is not None and not s.dead]
        deadlines = [d for d in deadlines if d is not None]
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None

    def _deadline(self, s: _Slot) -> float | None:
        if self.timeout is None:
            return None
        if s.started_at is None:  # still importing TensorFlow
            return s.sent_at + self.timeout + STARTUP_GRACE_S
        return s.started_at + self.timeout

    def _service(self, s: _Slot) -> Iterator[tuple[Any, dict[str, Any] | None]]:
        """Messages, deaths and timeouts of one worker; a None result means 'run it again'."""
        try:
            while s.conn.poll():
                kind, key, payload = s.conn.recv()
                if kind == "start":
                    s.started_at = time.monotonic()
                    self.start_failures = 0
                    self.on_event("start", key)
                elif kind == "stage":
                    self.on_event("stage", key, stage=payload)
                elif kind == "done":
                    s.key = None
                    yield key, payload
        except (EOFError, OSError):
            pass  # the worker died; the sentinel check below says how
        if s.proc.exitcode is not None or not s.proc.is_alive():
            s.proc.join(1)
            s.dead = True
            _leftovers(s)
            if s.key is not None:
                key, s.key = s.key, None
                reason = _crash_reason(s.proc.exitcode, s.log)
                if s.started_at is None:  # died while starting (importing TensorFlow)
                    self.start_failures += 1
                    self.start_error = reason.replace(" while converting this model", "")
                    yield key, None
                else:
                    yield key, _failed(reason, seconds=time.monotonic() - s.started_at)
            return
        deadline = self._deadline(s)
        if s.key is not None and deadline is not None and time.monotonic() >= deadline:
            self._kill(s)
            key, s.key = s.key, None
            yield key, _failed(f"timed out after {self.timeout:g} s (--timeout); the worker was "
                               f"stopped. Raise --timeout if this model is just slow; log: {s.log}",
                               seconds=self.timeout or 0.0)

    def _kill(self, s: _Slot) -> None:
        """SIGTERM first (the job cleans up its temp files and lock), SIGKILL if it hangs."""
        with contextlib.suppress(Exception):
            s.proc.terminate()
            s.proc.join(STOP_GRACE_S)
            if s.proc.is_alive():
                s.proc.kill()
                s.proc.join(5)
        s.dead = True
        _leftovers(s)

    def close(self) -> None:
        """Stop every worker: politely when idle, by force when busy (an interrupt)."""
        for s in self.slots:
            if s.dead:
                continue
            if s.key is None:
                with contextlib.suppress(Exception):
                    s.conn.send(None)
            else:
                with contextlib.suppress(Exception):
                    s.proc.terminate()  # busy: stop it now; it removes its temp files
        for s in self.slots:
            with contextlib.suppress(Exception):
                s.proc.join(10)
                if s.proc.is_alive():
                    s.proc.kill()
                    s.proc.join(5)
            _leftovers(s)
            with contextlib.suppress(Exception):
                s.conn.close()
        self.slots = []


def _leftovers(s: _Slot) -> None:
    """A worker that died without unwinding (SIGKILL, abort, a native crash) left its work
    dir and its job's run-lock file in the temp dir: its driver removes them."""
    with contextlib.suppress(Exception):
        sweep_stale_work_dirs(pid=s.proc.pid)
        if s.task is not None:
            drop_stale_lock(Path(s.task[2]))


def _failed(reason: str, seconds: float = 0.0) -> dict[str, Any]:
    return {"status": "failed", "report": None, "error": reason, "seconds": round(seconds, 3)}
