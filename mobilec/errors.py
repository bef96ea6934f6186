"""One error family. Every message says what is wrong, where, and what to do."""

from __future__ import annotations

import re

EXIT_OK = 0
EXIT_BUDGET = 1
EXIT_USAGE = 2
EXIT_STAGE = 3
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class MobilecError(Exception):
    """A problem the user can act on. `exit_code` follows the CLI contract."""
    exit_code = EXIT_USAGE

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None):
        self.message = message
        self.where = where
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text

    def one_line(self) -> str:
        """The message with its hint, for a report row (a failed route, an artifact)."""
        return f"{self.message} (hint: {self.hint})" if self.hint else self.message


class RecipeError(MobilecError):
    """The recipe (or a --set override) is invalid."""


class ModelLoadError(MobilecError):
    """The model file is missing, corrupt, unsafe or of an unsupported kind."""


class DataError(MobilecError):
    """The recipe's data does not exist or does not fit the model."""


class UnsupportedError(MobilecError):
    """A valid request this model/format/target combination cannot do (exit 2)."""


class StageError(MobilecError):
    """A stage failed while running (exit 3)."""
    exit_code = EXIT_STAGE


class ConversionError(StageError):
    """A converter failed or produced a model that does not match the source."""


class ConverterCrash(ConversionError):
    """Native converter code died (a signal) in a child or a fork: that route fails, and the
    same code must not be run again in mobilec's own process on the same graph."""


class Interrupted(BaseException):
    """SIGTERM (or SIGINT) arrived: stop now, clean up on the way out.

    A BaseException, like KeyboardInterrupt, so that no `except Exception` or
    `except MobilecError` in a stage or a library swallows it as a failed step.
    """

    # The signal the CLI's handler took, if any. Libraries sometimes catch the exception
    # the handler raises and raise their own (TensorFlow's lazy imports do); this lets the
    # pipeline see that it was an interruption all the same.
    received: int | None = None

    def __init__(self, signum: int):
        import signal

        self.signum = signum
        self.exit_code = EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM
        self.message = f"interrupted by {signal.Signals(signum).name}; no partial artifact was kept"
        super().__init__(self.message)

    def render(self) -> str:
        return self.message


def stop_if_interrupted(cause: BaseException | None = None) -> None:
    """Raise Interrupted if the CLI took SIGINT/SIGTERM, even though the exception its handler
    raised was lost: raised inside a __del__ (ignored by Python), or caught by a library.
    Loops over slow steps call this between steps, so a lost signal costs one step at most."""
    if Interrupted.received is not None:
        raise Interrupted(Interrupted.received) from cause


# Lines a converter's exception starts with that say nothing a user can act on.
_PREAMBLE = re.compile(r"^(in user code:|Traceback \(most recent call last\):|File \"|\s*$)")


def first_line(exc: BaseException | str, limit: int = 300) -> str:
    """The line of a library's exception that says what went wrong: the first one that is not
    a preamble (TensorFlow's "in user code:", a traceback header, a source location), so a
    reason reads "Conversion for TF op 'Erfc' not implemented", not "in user code:"."""
    text = exc if isinstance(exc, str) else str(exc)
    lines = [ln.strip() for ln in text.strip().splitlines()]
    useful = [ln for ln in lines if ln and not _PREAMBLE.match(ln)]
    if not useful:
        return (lines[0] if lines and lines[0] else
                (exc if isinstance(exc, str) else type(exc).__name__))[:limit]
    return useful[0][:limit]
