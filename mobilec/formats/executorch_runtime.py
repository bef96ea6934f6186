"""Running a .pte on this host with ExecuTorch's Python runtime — always in a child
process: the runtime is native code that a bad program can crash (a use-after-free took
the whole process down with SIGSEGV while this was written), and a crash must fail one
route, not mobilec. The price is ~4 s of imports per run.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from mobilec.errors import ConversionError
from mobilec.formats.runtime import measure_latency
from mobilec.sources.batch import (
    Inputs,
    as_list,
    first_n,
    inputs_digest,
    length,
    take,
)
from mobilec.sources.pytorch import to_tensor
from mobilec.state import ModelState
from mobilec.util.child import last_error_line, run_child, signal_name

RUN_TIMEOUT_S = 600


def pte_runner(path: Path, kernels: list[str] | None = None) -> Any:
    """A runner over a batch-1 .pte: one sample at a time, outputs concatenated."""
    import torch


    method = _load_method(path, kernels)

    def run(x: Inputs) -> list[np.ndarray]:
        per_sample = []
        for i in range(length(x)):
            out = method.execute(tuple(to_tensor(a) for a in as_list(take(x, slice(i, i + 1)))))
            per_sample.append([o.detach().float().numpy() if isinstance(o, torch.Tensor)
                               else np.asarray(o, dtype=np.float32) for o in out])
        return [np.concatenate([s[k] for s in per_sample]) for k in range(len(per_sample[0]))]

    return run


def run_isolated(path: Path, x: Inputs, latency: bool = False,
                 kernels: list[str] | None = None) -> Any:
    """Run a .pte in a child process: its outputs on `x` (or, with latency, the latency
    of one sample). A runtime crash becomes a ConversionError naming the signal.
    `kernels`: the kernel libraries the program needs (executorch.kernel_libraries); the
    child registers exactly those, as an app linking them would (None: all of them)."""
    outputs, timing = _child_run(path, x, "--latency" if latency else None, kernels)
    return timing if latency else outputs


def run_and_time(path: Path, x: Inputs, kernels: list[str] | None = None
                 ) -> tuple[list[np.ndarray], dict[str, float]]:
    """Outputs on `x` and the latency of one sample, from one child: each child imports
    torch and ExecuTorch again (seconds), so a .pte's verification also times it."""
    outputs, timing = _child_run(path, x, "--and-latency", kernels)
    assert timing is not None
    return outputs, timing


def _child_run(path: Path, x: Inputs, flag: str | None, kernels: list[str] | None
               ) -> tuple[list[np.ndarray], dict[str, float] | None]:
    with tempfile.TemporaryDirectory(prefix="mobilec-pte-") as tmp:
        xin, out = Path(tmp) / "x.npz", Path(tmp) / "out.npz"
        np.savez(xin, *[np.ascontiguousarray(a) for a in as_list(x)])
        args = [str(path), str(xin), str(out)] + ([flag] if flag else [])
        if kernels is not None:
            args.append("--kernels=" + ",".join(kernels))
        proc = run_child("mobilec.formats.executorch_runtime:child_main", args,
                         timeout_s=RUN_TIMEOUT_S, what="the .pte")
        if proc.returncode != 0:
            raise ConversionError(_child_failure(proc.returncode, proc.stderr))
        timing = json.loads(_timing(out).read_text()) if flag else None
        if flag == "--latency":
            return [], timing
        with np.load(out) as z:
            return [z[f"arr_{i}"] for i in range(len(z.files))], timing


def _timing(out: Path) -> Path:
    return out.with_suffix(".json")


def timed_run(state: ModelState, path: Path, x: Inputs, kernels: list[str] | None
               ) -> list[np.ndarray]:
    """A .pte's outputs on `x`, from a child that also times it. Each child imports torch and
    ExecuTorch (seconds on a busy machine): the same file on the same inputs (verification,
    then evaluate once the file is published under its final name) runs once, and its
    latency is not a third child."""
    file = file_digest(path)
    key = ("pte_run", file, inputs_digest(x), tuple(kernels or ()))
    if key not in state.memo:
        outputs, timing = run_and_time(path, x, kernels)
        state.memo[key] = outputs
        state.memo[("pte_latency", file)] = timing
    return state.memo[key]


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def timed_latency(state: ModelState, path: Path) -> dict[str, float] | None:
    """The latency timed_run measured for this very file, if it ran."""
    return state.memo.get(("pte_latency", file_digest(path)))


def _child_failure(code: int, stderr: str) -> str:
    crash = signal_name(code)
    if crash is not None:
        return f"the ExecuTorch runtime crashed ({crash}) running the .pte"
    return f"the .pte failed in the ExecuTorch runtime: {last_error_line(stderr)}"


def child_main(argv: list[str]) -> None:
    """Child process entry: run the .pte on the saved inputs, save the outputs (and/or, with
    --latency / --and-latency, the latency of one sample as JSON beside them)."""
    path, xin, out = Path(argv[0]), Path(argv[1]), Path(argv[2])
    given = [a.split("=", 1)[1] for a in argv[3:] if a.startswith("--kernels=")]
    kernels = [k for k in given[0].split(",") if k] if given else None
    with np.load(xin) as z:
        parts = [z[f"arr_{i}"] for i in range(len(z.files))]
    x = parts[0] if len(parts) == 1 else parts
    if "--latency" not in argv[3:]:
        np.savez(out, *pte_runner(path, kernels)(x))
    if {"--latency", "--and-latency"} & set(argv[3:]):
        # One thread, like every latency mobilec reports (a throwaway process: the
        # "unsafe" reset cannot race anything here).
        try:
            from executorch.extension.pybindings import portable_lib

            portable_lib._unsafe_reset_threadpool(1)
        except (ImportError, AttributeError):
            pass
        method = _load_method(path, kernels)

        inputs = tuple(to_tensor(a) for a in as_list(first_n(x, 1)))
        _timing(out).write_text(json.dumps(measure_latency(lambda: method.execute(inputs))))


def _load_method(path: Path, kernels: list[str] | None = None) -> Any:
    # Quantized kernels (quantize/dequantize outside XNNPACK) are a separate library in
    # the Python runtime: registered only when the program needs them (as the app must link
    # them only then); without them such a .pte fails to load (0x14). The portable kernels
    # are part of the Python runtime itself and cannot be left out.
    if kernels is None or "quantized_ops_lib" in kernels:
        import executorch.kernels.quantized  # noqa: F401
    from executorch.runtime import Runtime

    # Program from bytes: the runtime then never holds the file open (Windows, atomic moves).
    program = Runtime.get().load_program(Path(path).read_bytes())
    method = program.load_method("forward")
    if method is None:
        raise ConversionError(f"{Path(path).name} has no forward method")
    # A Method does not keep its Program (which owns the buffer) alive: when the Program
    # is collected the method reads freed memory (measured: garbage shapes, SIGSEGV).
    return _MethodHandle(program, method)


class _MethodHandle:
    """A loaded method together with the program it lives in."""

    def __init__(self, program: Any, method: Any) -> None:
        self.program = program
        self.method = method

    def execute(self, inputs: Any) -> Any:
        return self.method.execute(inputs)
