"""Running a piece of mobilec in a child Python process, so that native code which can
crash (a third-party converter or runtime dying with SIGSEGV) fails one route, not mobilec.

The child is the same interpreter with this checkout first on its path; it gets its job
as command-line arguments (paths into a scratch folder) and hands results back as files.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from mobilec.errors import ConversionError


def run_child(entry: str, args: list[str], *, timeout_s: int, what: str
              ) -> subprocess.CompletedProcess[str]:
    """Run `entry` ("package.module:function", called with the argument list) in a child
    process; returns it finished, whatever its exit status (see `signal_name`). A child
    that outlives `timeout_s` is killed and becomes a ConversionError about `what`."""
    try:
        return subprocess.run(child_command(entry, args), env=child_env(),
                              capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise ConversionError(f"{what} did not finish in {timeout_s} s") from exc


def child_command(entry: str, args: list[str]) -> list[str]:
    """The command line that calls `entry` ("package.module:function") with `args`."""
    module, _, func = entry.partition(":")
    code = f"import sys; from {module} import {func}; {func}(sys.argv[1:])"
    return [sys.executable, "-c", code, *args]


def child_env() -> dict[str, str]:
    """This environment with this checkout first on the child's path."""
    root = str(Path(__file__).resolve().parents[2])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p)}


def signal_name(returncode: int) -> str | None:
    """The signal that ended a child (SIGSEGV, ...), or None if it exited on its own."""
    if returncode >= 0:
        return None
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


#: A log line that only warns or informs (glog/absl "W1208 00:13:09...", Python warnings):
#: "... will be an error in a future release" must not pass for the reason of a crash.
_NOISE = re.compile(r"^[IWD]\d{4} |Warning\b|warnings\.warn|^\s*warn\(")


def last_error_line(stderr: str) -> str:
    """The line of a child's stderr most likely to say what went wrong. A fatal LLVM error
    ("LLVM ERROR: Failed to infer result type(s):") comes with the line that names the op."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    fatal = [i for i, ln in enumerate(lines) if "LLVM ERROR" in ln or "Fatal Python error" in ln]
    if fatal:
        return " ".join(lines[fatal[-1]:fatal[-1] + 2])[:300]
    useful = [ln for ln in lines if not _NOISE.search(ln)]
    errors = [ln for ln in useful if "Error" in ln or "error" in ln]
    return (errors or useful or lines or ["?"])[-1][:300]
