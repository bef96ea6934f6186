"""Running an .aimodel on this host with coreai-core's Linux runtime — always in a child
process: the runtime (and the ODIX compiler that `executable()` runs first) is native code,
and a crash must fail one route, not mobilec.

On Linux `AIModel.load` on the asset directory fails (it looks for a compiled
`main-unspecialized.odix`); `AIModelAsset.executable()` writes the Linux form to a temp
dir first, so every run goes through it. A function whose batch dim is fixed (exported at
batch 1) is fed one sample at a time; a dynamic one in chunks. Inputs are cast to the
function's own input dtype (a float16 .aimodel takes float16), outputs come back float32.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from mobilec.errors import ConversionError
from mobilec.formats.runtime import measure_latency
from mobilec.sources.batch import Inputs, as_list, first_n, length, take
from mobilec.util.child import last_error_line, run_child, signal_name

RUN_TIMEOUT_S = 600
CHUNK = 256
FUNCTION = "main"


def run_isolated(path: Path, x: Inputs, latency: bool = False) -> Any:
    """Run an .aimodel in a child process: (output names, outputs) on `x`, or with
    `latency` the latency of one sample. A runtime crash becomes a ConversionError."""
    with tempfile.TemporaryDirectory(prefix="mobilec-aimodel-") as tmp:
        xin, out = Path(tmp) / "x.npz", Path(tmp) / "out.npz"
        np.savez(xin, *[np.ascontiguousarray(a) for a in as_list(x)])
        args = [str(path), str(xin), str(out)] + (["--latency"] if latency else [])
        proc = run_child("mobilec.formats.coreai_runtime:child_main", args,
                         timeout_s=RUN_TIMEOUT_S, what="the .aimodel")
        if proc.returncode != 0:
            crash = signal_name(proc.returncode)
            raise ConversionError(
                f"the Core AI runtime crashed ({crash}) running the .aimodel" if crash else
                f"the .aimodel failed in the Core AI runtime: {last_error_line(proc.stderr)}")
        if latency:
            return json.loads(out.read_text())
        names = json.loads(Path(str(out) + ".names.json").read_text())
        with np.load(out) as z:
            return names, [z[f"arr_{i}"] for i in range(len(z.files))]


def child_main(argv: list[str]) -> None:
    """Child process entry: run the .aimodel on the saved inputs, save the outputs, and
    leave without the interpreter's teardown: the native runtime's static destructors
    threw through Swift code at exit ("C++ exception handling detected but the Swift
    runtime was compiled with exceptions disabled") and sometimes aborted the child
    (SIGABRT) after its results were written."""
    import os

    _run(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _run(argv: list[str]) -> None:
    path, xin, out = Path(argv[0]), Path(argv[1]), Path(argv[2])
    with np.load(xin) as z:
        parts = [z[f"arr_{i}"] for i in range(len(z.files))]
    x = parts[0] if len(parts) == 1 else parts
    with _Loaded(path) as (fn, call):
        desc = fn.desc
        if "--latency" in argv[3:]:
            feed = _feed(desc, first_n(x, 1))
            out.write_text(json.dumps(measure_latency(lambda: call(fn(feed)))))
            return
        names = list(desc.output_names)
        fixed = desc.input_descriptor(desc.input_names[0]).shape[0]
        step = fixed if isinstance(fixed, int) and fixed > 0 else CHUNK
        chunks: list[list[np.ndarray]] = []
        for i in range(0, length(x), step):
            res = call(fn(_feed(desc, take(x, slice(i, i + step)))))
            chunks.append([np.asarray(res[n].numpy(), dtype=np.float32) for n in names])
    np.savez(out, *[np.concatenate([c[k] for c in chunks]) for k in range(len(names))])
    Path(str(out) + ".names.json").write_text(json.dumps(names))


class _Loaded:
    """The asset's `executable()` context, entered on an event loop in a helper thread so
    that each call is a plain blocking function (what measure_latency times)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> tuple[Any, Any]:
        import asyncio
        import threading

        from coreai.authoring import AIModelAsset

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.context = AIModelAsset.load(self.path).executable()
        model = self.call(self.context.__aenter__())
        return model.load_function(FUNCTION), self.call

    def call(self, coro: Any) -> Any:
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def __exit__(self, *exc: object) -> None:
        self.call(self.context.__aexit__(None, None, None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


def _feed(desc: Any, x: Inputs) -> dict[str, Any]:
    """{function input: NDArray} in the function's input order and dtypes."""
    from coreai.runtime import NDArray

    feed = {}
    for name, a in zip(desc.input_names, as_list(x), strict=True):
        dtype = np.dtype(desc.input_descriptor(name).dtype)
        feed[name] = NDArray(np.ascontiguousarray(a.astype(dtype, copy=False)))
    return feed
