"""Progress for humans (rich, on a terminal) and for CI (plain lines), on stderr."""

from __future__ import annotations

import sys
import time
from typing import Any

from mobilec.util.nativeio import terminal_stream


class Progress:
    def __init__(self, quiet: bool = False, stream: Any = None):
        self.quiet = quiet
        if stream is None:
            # Not sys.stderr itself: stages silence fd 2 (native chatter) while progress draws.
            stream = terminal_stream() if not quiet else sys.stderr
        self.stream = stream
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._console = None
        self._status = None
        if self.tty and not quiet:
            from rich.console import Console

            self._console = Console(file=self.stream)

    def stage_start(self, name: str, detail: str = "") -> None:
        if self.quiet:
            return
        if self._console is not None:
            self._stop()
            self._status = self._console.status(f"[bold]{name}[/] {detail}")
            self._status.start()
        else:
            self._line(f"[mobilec] {name}: started {detail}".rstrip())

    def stage_end(self, name: str, seconds: float, status: str, detail: str = "") -> None:
        if self.quiet:
            return
        self._stop()
        mark = {"ok": "ok", "failed": "FAILED", "skipped": "skipped"}.get(status, status)
        text = f"{name}: {mark} in {seconds:.1f}s {detail}".rstrip()
        if self._console is not None:
            color = "green" if status == "ok" else "red" if status == "failed" else "yellow"
            self._console.print(f"[{color}]✓[/] {text}" if status == "ok" else f"[{color}]✗[/] {text}")
        else:
            self._line(f"[mobilec] {text}")

    def info(self, text: str) -> None:
        if self.quiet:
            return
        if self._console is not None:
            self._console.print(text)
        else:
            self._line(f"[mobilec] {text}")

    def _line(self, text: str) -> None:
        print(f"{time.strftime('%H:%M:%S')} {text}", file=self.stream, flush=True)

    def _stop(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def close(self) -> None:
        self._stop()
