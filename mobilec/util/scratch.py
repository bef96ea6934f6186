"""Where third-party libraries put their scratch files: inside mobilec's work dir.

Some libraries write into the current directory or the temp dir and never clean up:
onnxruntime's symbolic shape inference (run by `quant_pre_process` before int8
quantization) saves `sym_shape_infer_temp.onnx` and a `<uuid>.data` file into the cwd
whenever its inference is incomplete, and raises. Running every stage with its cwd,
`TMPDIR` and `tempfile.tempdir` inside the run's work dir sends such files there, and
the work dir is removed when the run ends, however it ends.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

_TMP_VARS = ("TMPDIR", "TEMP", "TMP")


@contextlib.contextmanager
def scratch_cwd(work_dir: Path, *, chdir: bool = True) -> Iterator[Path]:
    """Run the body with cwd (unless `chdir` is False: a stage that runs the user's own code,
    which may read paths relative to where the user started) and the temp dir inside
    `work_dir/scratch`; both are put back on the way out."""
    scratch = Path(work_dir) / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    old_cwd = os.getcwd() if chdir else None
    old_env = {k: os.environ.get(k) for k in _TMP_VARS}
    old_tempdir = tempfile.tempdir
    try:
        if chdir:
            os.chdir(scratch)
        for key in _TMP_VARS:
            os.environ[key] = str(scratch)
        tempfile.tempdir = str(scratch)
        yield scratch
    finally:
        tempfile.tempdir = old_tempdir
        for key, value in old_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if old_cwd is not None:
            with contextlib.suppress(OSError):
                os.chdir(old_cwd)
