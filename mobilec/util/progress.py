"""Progress for humans (rich, on a terminal) and for CI (plain lines), on stderr.

Two ways in:
- the runner owns a `Progress` and calls `stage_start` / `stage_end` around each stage;
- code deep inside a stage (a format's route, the evaluate loop, a training loop) reports
  through the module functions `step`, `task` and `epoch`. They write to the display of the
  run in progress (set by `active`, which the pipeline does around each stage) and do nothing
  when there is none, so a library call, a batch worker or a test needs no display at all.

    from mobilec.util import progress
    progress.step("tflite int8: built 12.3 KB via route keras")
    with progress.task("onnx float32 via torch.export"):   # "... done in 3.1s" / "... failed"
        build()
    progress.epoch("prune", 2, 5, loss=0.1234)             # "prune: epoch 2/5 loss 0.1234"

Everything goes to stderr, never stdout (--json keeps stdout for JSON); `-q` and `--json`
silence it all (errors and the verdict are printed by the CLI, not here).
"""

from __future__ import annotations

import contextvars
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
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
        self._stage = ""
        if self.tty and not quiet:
            from rich.console import Console

            self._console = Console(file=self.stream)

    def stage_start(self, name: str, detail: str = "") -> None:
        self._stage = name
        if self.quiet:
            return
        if self._console is not None:
            self._stop()
            self._status = self._console.status(f"[bold]{name}[/] {detail}")
            self._status.start()
        else:
            self._line(f"[mobilec] {name}: started {detail}".rstrip())

    def stage_end(self, name: str, seconds: float, status: str, detail: str = "") -> None:
        self._stage = ""
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

    def step(self, text: str) -> None:
        """One line inside the current stage: an artifact built, a route verified, an epoch."""
        if self.quiet:
            return
        where = f"{self._stage}: " if self._stage else ""
        if self._console is not None:
            # Printed above the spinner, which keeps turning for the stage.
            self._console.print(f"  {where}{text}", markup=False, highlight=False)
            if self._status is not None:
                self._status.update(f"[bold]{self._stage}[/] {text}")
        else:
            self._line(f"[mobilec]   {where}{text}")

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


# The display of the run in progress in this thread (None: report nowhere).
_ACTIVE: contextvars.ContextVar[Progress | None] = contextvars.ContextVar("mobilec_progress",
                                                                         default=None)


@contextmanager
def active(progress: Progress | None) -> Iterator[None]:
    """Make `progress` the display that step/task/epoch write to, for the `with` block."""
    token = _ACTIVE.set(progress)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def step(text: str) -> None:
    """Report one step of the current stage (no-op without an active, non-quiet display)."""
    prog = _ACTIVE.get()
    if prog is not None and not prog.quiet:
        prog.step(text)


@contextmanager
def task(text: str) -> Iterator[None]:
    """A step that takes a while: says it started, then "done in Xs" or "failed in Xs"."""
    step(f"{text} ...")
    start = time.perf_counter()
    outcome = "failed"
    try:
        yield
        outcome = "done"
    finally:
        step(f"{text}: {outcome} in {time.perf_counter() - start:.1f}s")


def epoch(what: str, n: int, total: int, loss: float | None = None, **metrics: float) -> None:
    """One finished training epoch (1-based `n` of `total`), with its loss and any metrics."""
    parts = [f"{what}: epoch {n}/{total}"]
    if loss is not None:
        parts.append(f"loss {loss:.4g}")
    parts += [f"{k} {v:.4g}" for k, v in metrics.items() if v is not None]
    step(" ".join(parts))

