"""util/forked.run_forked: one call in a forked copy of this process. Native code that
aborts (coreai-torch's LLVM fatal errors call abort()) must fail that call, not the run."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from mobilec.errors import ConversionError
from mobilec.util.forked import run_forked


def test_the_call_runs_with_the_parents_state(tmp_path: Path) -> None:
    data = {"rows": [1, 2, 3]}  # no pickling: the child has this process's memory
    out = tmp_path / "out.txt"
    run_forked(lambda: out.write_text(str(sum(data["rows"]))), what="a sum", timeout_s=60)
    assert out.read_text() == "6"


def test_an_abort_becomes_a_conversion_error_naming_it() -> None:
    def abort() -> None:
        os.write(2, b"LLVM ERROR: Failed to infer result type(s):\n"
                    b'"coreai.decomposable.broadcasting_mul"(...) {} : (tensor<1x2xf32>) -> ???\n'
                    b"W1208 00:13:09.391000 19106 torch/utils/_pytree.py:630] ... will be an "
                    b"error in a future release.\n")
        os.abort()

    with pytest.raises(ConversionError, match=r"crashed \(SIGABRT\): LLVM ERROR: Failed to "
                                              r"infer result type\(s\): \"coreai.decomposable"
                                              r".broadcasting_mul\""):
        run_forked(abort, what="the converter", timeout_s=60)


def test_a_python_exception_comes_back_as_text() -> None:
    def fail() -> None:
        raise KeyError("input_1")

    with pytest.raises(ConversionError, match=r"the converter failed: KeyError: 'input_1'"):
        run_forked(fail, what="the converter", timeout_s=60)


def test_a_hang_is_killed_at_the_timeout() -> None:
    start = time.monotonic()
    with pytest.raises(ConversionError, match=r"did not finish in 1 s"):
        run_forked(lambda: time.sleep(60), what="the converter", timeout_s=1)
    assert time.monotonic() - start < 30
