"""File-descriptor level redirection: native libraries (TFLite, XNNPACK, onnxruntime) print
straight to fds 1 and 2, past Python's sys.stdout/sys.stderr."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def redirect_fd(fd: int, target_fd: int, active: bool = True) -> Iterator[None]:
    if not active:
        yield
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved = os.dup(fd)
    try:
        os.dup2(target_fd, fd)
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os.dup2(saved, fd)
        os.close(saved)


@contextlib.contextmanager
def stdout_to_stderr(active: bool = True) -> Iterator[None]:
    """With --json, stdout must hold only JSON, whatever native code prints."""
    with redirect_fd(1, 2, active):
        yield


@contextlib.contextmanager
def native_quiet(active: bool = True) -> Iterator[None]:
    """Silence converter chatter ("INFO: Created TensorFlow Lite XNNPACK delegate", …) unless -v.

    Errors still reach the user: converters raise Python exceptions carrying their message.
    """
    if not active:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        with redirect_fd(1, devnull), redirect_fd(2, devnull):
            yield
    finally:
        os.close(devnull)


def terminal_stream() -> object:
    """A stderr that survives native_quiet (progress keeps drawing during a stage)."""
    try:
        return os.fdopen(os.dup(2), "w", buffering=1, closefd=True)
    except OSError:
        return sys.stderr
