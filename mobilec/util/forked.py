"""Running one call in a forked copy of this process, so that native code which aborts
fails one route instead of the whole run.

Why a fork and not util/child.py's fresh interpreter: the call needs what this process
already holds (torch, an exported program of any size), and a fresh child would pay the
torch import (seconds) and a round trip of the program through a file on every build. A
fork costs milliseconds and shares the memory copy-on-write. Measured cause: coreai-torch's
MLIR type inference met a shape it could not infer on a bridged ConvNeXt
("LLVM ERROR: Failed to infer result type(s)") and called abort(): SIGABRT took mobilec and
every other artifact of the run with it.

The child has only the forking thread. A thread pool the parent started (torch's OpenMP
workers, an MLIR context's threads) does not exist there, so the call must not rely on
one: `run_forked` callers set torch to one thread in the child, as torch's own DataLoader
workers do.
"""

from __future__ import annotations

import gc
import os
import select
import signal
import tempfile
import time
import warnings
from collections.abc import Callable

from mobilec.errors import ConversionError, ConverterCrash
from mobilec.util.child import last_error_line

#: Longest message the child hands back about a Python exception.
MESSAGE_BYTES = 4000


def run_forked(call: Callable[[], None], *, what: str, timeout_s: float) -> None:
    """Run `call()` in a forked child and wait. Returns when it returned; a Python exception
    in it, a fatal signal (SIGABRT, SIGSEGV, ...) or `timeout_s` without an answer becomes a
    ConversionError about `what` (with the child's last error line for a signal). An
    interrupt of this process kills the child before it propagates."""
    with tempfile.TemporaryFile() as stderr:
        read_fd, write_fd = os.pipe()
        # Every object this process holds moves out of the collector's reach in the child:
        # a collection there would touch (and so copy) the whole heap, page by page.
        pid = -1
        gc.freeze()
        try:
            with warnings.catch_warnings():
                # JAX (imported by litert-torch) warns at every fork that its threads may
                # deadlock the child; this child runs no JAX code.
                warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called",
                                        category=RuntimeWarning)
                pid = os.fork()
            if pid == 0:  # the child: never returns into the caller's stack
                gc.disable()
                _child(call, read_fd, write_fd, stderr.fileno())
        finally:
            if pid != 0:
                gc.unfreeze()
        os.close(write_fd)
        try:
            message = _read_until_exit(read_fd, timeout_s, pid, what)
            _, status = os.waitpid(pid, 0)
        finally:
            os.close(read_fd)
            _reap(pid)
        if os.WIFSIGNALED(status):
            stderr.seek(0)
            text = stderr.read().decode(errors="replace")
            name = signal.Signals(os.WTERMSIG(status)).name
            raise ConverterCrash(f"{what} crashed ({name}): {last_error_line(text)}")
        code = os.WEXITSTATUS(status)
        if code or message:
            raise ConversionError(f"{what} failed: {message or f'the child exited {code}'}")


def _child(call: Callable[[], None], read_fd: int, write_fd: int, stderr_fd: int) -> None:
    code = 0
    try:
        os.close(read_fd)
        os.dup2(stderr_fd, 2)  # native errors (LLVM's) land where the parent reads them
        call()
    except BaseException as exc:  # noqa: BLE001 - everything goes back as text
        text = str(exc).strip().splitlines()
        message = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
        os.write(write_fd, message.encode(errors="replace")[:MESSAGE_BYTES])
        code = 1
    os._exit(code)  # no atexit handlers, no interpreter teardown of the parent's state


def _read_until_exit(read_fd: int, timeout_s: float, pid: int, what: str) -> str:
    """What the child wrote before closing its end (at exit), or a timeout."""
    chunks = []
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([read_fd], [], [], left)[0]:
            os.kill(pid, signal.SIGKILL)
            raise ConversionError(f"{what} did not finish in {timeout_s:.0f} s")
        chunk = os.read(read_fd, 1 << 16)
        if not chunk:
            return b"".join(chunks).decode(errors="replace").strip()
        chunks.append(chunk)


def _reap(pid: int) -> None:
    """Kill and collect the child if it is still there (an interrupt while waiting)."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    except ChildProcessError:
        pass
