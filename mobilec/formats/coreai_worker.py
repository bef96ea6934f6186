"""The child side of the Core AI runtime (the parent side is formats/coreai_runtime.py): a
process that imports coreai-core's runtime once and then runs .aimodel files on request,
for every .aimodel of a mobilec run.

It imports numpy, coreai and two small mobilec modules, never torch: its start-up (about
1 s of CPU) overlaps the parent's conversion when the parent starts it early.

Protocol: one JSON request per line on stdin, {"path", "x", "out", "outputs", "latency",
"tmp"};
one JSON reply per line on the file descriptor named in argv, {"names", "latency"} or
{"error"}. Inputs and outputs travel as .npz files. stdout is not used (the native
runtime prints on it). EOF on stdin ends the process.

On Linux `AIModel.load` on the asset directory fails (it looks for a compiled
`main-unspecialized.odix`); `AIModelAsset.executable()` writes the Linux form to a temp
dir first, so every run goes through it. A function whose batch dim is fixed (exported at
batch 1) is fed one sample at a time; a dynamic one in chunks. Inputs are cast to the
function's own input dtype (a float16 .aimodel takes float16), outputs come back float32.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from mobilec.sources.batch import Inputs, as_list, first_n, from_model, length, take, to_model
from mobilec.util.latency import measure_latency

CHUNK = 256
FUNCTION = "main"


def serve(argv: list[str]) -> None:
    """Child process entry: answer requests until stdin closes, then leave without the
    interpreter's teardown: the native runtime's static destructors threw through Swift
    code at exit ("C++ exception handling detected but the Swift runtime was compiled with
    exceptions disabled") and sometimes aborted the child (SIGABRT)."""
    replies = os.fdopen(int(argv[0]), "w")
    import coreai.authoring  # noqa: F401 - the imports now, while the parent converts
    import coreai.runtime  # noqa: F401

    for line in iter(sys.stdin.readline, ""):
        try:
            reply = run_request(json.loads(line))
        except Exception as exc:  # noqa: BLE001 - the parent turns it into a route's reason
            reply = {"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"
                     if str(exc).strip() else type(exc).__name__}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()
    sys.stderr.flush()
    os._exit(0)


def run_request(req: dict[str, Any]) -> dict[str, Any]:
    """Run one .aimodel: its outputs on the saved inputs (when asked) into `out`, and the
    latency of one sample (when asked), from one load of the file. Temp files (the Linux
    form `executable()` compiles) go to the parent's temp dir of the moment, `tmp`: this
    process outlives the run that started it, and that run's scratch dir with it."""
    if req.get("tmp"):
        import tempfile

        os.environ["TMPDIR"] = tempfile.tempdir = req["tmp"]
    with np.load(req["x"]) as z:
        parts = [z[f"arr_{i}"] for i in range(len(z.files))]
    x = parts[0] if len(parts) == 1 else parts
    reply: dict[str, Any] = {}
    with _Loaded(Path(req["path"])) as (fn, call):
        desc = fn.desc
        axes = req.get("axes") or {}
        in_axes = axes.get("inputs") or [0] * len(parts)
        out_axes = axes.get("outputs") or {}  # by name: the file's outputs carry the source's
        if req.get("outputs", True):
            names = list(desc.output_names)
            first = next((k for k, a in enumerate(in_axes) if a is not None), 0)
            shape = desc.input_descriptor(desc.input_names[first]).shape
            fixed = shape[in_axes[first] or 0] if len(shape) else None
            step = fixed if isinstance(fixed, int) and fixed > 0 else CHUNK
            chunks: list[list[np.ndarray]] = []
            for i in range(0, length(x), step):
                res = call(fn(_feed(desc, to_model(take(x, slice(i, i + step)), in_axes))))
                got = [np.asarray(res[n].numpy(), dtype=np.float32) for n in names]
                chunks.append(from_model(got, [out_axes.get(n, 0) for n in names]))
            np.savez(req["out"], *[np.concatenate([c[k] for c in chunks])
                                   for k in range(len(names))])
            reply["names"] = names
        if req.get("latency"):
            feed = _feed(desc, to_model(first_n(x, 1), in_axes))
            reply["latency"] = measure_latency(lambda: call(fn(feed)))
    return reply


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
        try:
            self.context = AIModelAsset.load(self.path).executable()
            model = self.call(self.context.__aenter__())
        except BaseException:
            self._stop_loop()
            raise
        return model.load_function(FUNCTION), self.call

    def call(self, coro: Any) -> Any:
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def __exit__(self, *exc: object) -> None:
        try:
            self.call(self.context.__aexit__(None, None, None))
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
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
