"""SIGINT/SIGTERM during a command: raise Interrupted where Python code can unwind it.

The handler raises `Interrupted` (a BaseException) so every `finally` on the way out removes
its temp files. One place must not see it: a native extension's module initialisation. When
TensorFlow is imported it imports jax (installed with the torch extra), whose nanobind
extension calls back into Python while it initialises; an exception raised there kills the
process with SIGSEGV or SIGABRT before any cleanup (measured: 5 of 50 SIGTERMs sent 1.0-2.5 s
into `load` on a busy 2-core machine). So a signal that arrives inside an import is recorded
and delivered again shortly, until it lands outside the import.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import Any

from mobilec.errors import Interrupted

SIGNALS = (signal.SIGTERM, signal.SIGINT)

# How long a signal that arrived inside an import waits before it is delivered again.
RETRY_SECONDS = 0.1


def install() -> dict[int, Any]:
    """Install the handler for SIGTERM and SIGINT; returns the previous handlers."""
    Interrupted.received = None
    previous: dict[int, Any] = {}
    try:
        # SIGINT too, as Interrupted rather than KeyboardInterrupt: a KeyboardInterrupt that
        # crosses a C-level PyRun_* call (inside TensorFlow's import) sets a CPython flag that
        # makes the process kill itself with SIGINT at exit, whatever exit code we chose.
        for signum in SIGNALS:
            previous[signum] = signal.signal(signum, _on_signal)
    except ValueError:  # not the main thread (e.g. inside a test runner thread)
        pass
    return previous


def restore(previous: dict[int, Any]) -> None:
    """Put back the handlers `install` replaced (an in-process caller gets its own back)."""
    for signum, handler in previous.items():
        try:
            signal.signal(signum, handler)
        except (ValueError, TypeError):  # not the main thread, or a handler set from C
            pass


def _on_signal(signum: int, frame: FrameType | None) -> None:
    Interrupted.received = signum
    if _inside_import(frame):
        timer = threading.Timer(RETRY_SECONDS, _deliver_again, (signum,))
        timer.daemon = True
        timer.start()
        return
    raise Interrupted(signum)


def _deliver_again(signum: int) -> None:
    # Only while our handler is still the one installed: after the command has returned,
    # the default handler would kill the caller.
    if signal.getsignal(signum) is _on_signal:
        os.kill(os.getpid(), signum)


def _inside_import(frame: FrameType | None) -> bool:
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False
