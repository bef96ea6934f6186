"""One batch task: run one model's pipeline into a folder and say how it went.

The same function runs in a local worker process and in a Ray task, so both
executors produce the same reports. It never raises: every failure becomes a
result with status "failed" and a reason. Also the packing helpers that move
folders between hosts (Ray) as tar bytes.
"""

from __future__ import annotations

import copy
import io
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mobilec import api
from mobilec.errors import MobilecError
from mobilec.recipe.schema import Recipe
from mobilec.report.write import write_reports
from mobilec.util.fs import sha256_path
from mobilec.util.progress import Progress
from mobilec.util.tfenv import import_tf

STATUS_BY_EXIT = {0: "ok", 1: "budget"}
# One compute thread per worker, under every executor and worker count: multi-threaded
# reductions sum in another order, and reports would then differ in their last digits
# between --workers 1 and 2, or local and Ray. A batch is parallel across models instead.
WORKER_ENV = {"OMP_NUM_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1"}


def configure_worker() -> None:
    """Called first in every worker process (local or Ray): one TensorFlow import, one thread."""
    import os

    os.environ.update(WORKER_ENV)

    tf = import_tf()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
    except RuntimeError:
        pass  # this worker's TensorFlow is already running, configured by an earlier task


def run_job(spec: dict[str, Any], out_dir: Path, progress: Progress | None = None,
            *, evaluate: bool = True, options: dict[str, Any] | None = None,
            model_alias: str | None = None) -> dict[str, Any]:
    """Run the pipeline for `spec` (see Job.spec) writing into `out_dir`.

    Returns {"status": ok|budget|failed, "report": report.json's dict or None,
    "error": reason or None, "seconds": wall time}.
    """
    start = time.perf_counter()
    options = dict(options or {})
    try:
        recipe = Recipe.model_validate(spec["recipe"])
        recipe._source = spec["source"]
        recipe._sha256 = spec["recipe_sha256"]
        report = api.compress(recipe, out=out_dir, evaluate=evaluate,
                              progress=progress or Progress(quiet=True), **options)
        if model_alias is not None:
            # The model was shipped to this host: report the path the user knows.
            report["model"]["path"] = model_alias

            write_reports(report, Path(out_dir), list(recipe.output.report))
        status = STATUS_BY_EXIT.get(report["exit_code"], "failed")
        return _result(status, report, failure_reason(report) if status == "failed" else None, start)
    except MobilecError as exc:
        return _result("failed", None, exc.render(), start)
    except Exception as exc:  # noqa: BLE001 - one model's bug must not stop the batch
        if options.get("verbose"):
            import traceback

            traceback.print_exc()
        return _result("failed", None, f"internal error ({type(exc).__name__}: "
                       f"{str(exc).strip()[:300]}); a mobilec bug: rerun this model with "
                       "`mobilec compress -v` for the traceback", start)


def _result(status: str, report: dict[str, Any] | None, error: str | None, start: float
            ) -> dict[str, Any]:
    return {"status": status, "report": report, "error": error,
            "seconds": round(time.perf_counter() - start, 3)}


def failure_reason(report: dict[str, Any]) -> str:
    reasons = [f"{s['name']}: {s.get('error') or 'failed'}" for s in report.get("stages", [])
               if s.get("status") == "failed"]
    reasons += [f"{a['path']}: {a.get('error') or a['status']}" for a in report.get("artifacts", [])
                if a.get("status") in ("failed", "failed-verification")]
    return "; ".join(reasons) or "failed (see the model's report)"


# ----------------------------------------------------------------------------- moving folders

def pack(path: Path, *, contents: bool = False) -> bytes:
    """A file or folder as tar bytes: the item itself under its name, or a folder's contents."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        if contents:
            for child in sorted(Path(path).iterdir()):
                tar.add(child, arcname=child.name)
        else:
            tar.add(path, arcname=Path(path).name)
    return buf.getvalue()


def unpack(data: bytes, dest: Path) -> None:
    """Extract tar bytes into `dest`; the 'data' filter refuses links or paths leaving `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(dest, filter="data")


def input_paths(spec: dict[str, Any]) -> dict[str, str]:
    """The files a job reads: the model and the recipe's data files."""
    recipe = spec["recipe"]
    found = {"model": recipe["model"]["path"]}
    for key in ("train", "eval"):
        value = (recipe.get("data") or {}).get(key)
        if value:
            found[f"data.{key}"] = value
    return found


def localize_inputs(spec: dict[str, Any], digests: dict[str, str],
                    fetch: Callable[[str], bytes], dest: Path) -> tuple[dict[str, Any], str | None]:
    """Make a job's inputs readable on this host.

    An input is used in place when this host has the same bytes at the same path
    (a shared filesystem, or a local cluster); otherwise the copy the driver
    shipped is fetched and unpacked under `dest`. Returns the spec to run and, if
    the model moved, its original path (for the report).
    """

    spec = copy.deepcopy(spec)
    model_alias = None
    for key, path in input_paths(spec).items():
        p = Path(path)
        if p.exists() and sha256_path(p) == digests.get(key):
            continue
        target_dir = dest / key.replace(".", "-")
        unpack(fetch(key), target_dir)
        local = str(target_dir / p.name)
        if key == "model":
            spec["recipe"]["model"]["path"] = local
            model_alias = path
        else:
            spec["recipe"]["data"][key.split(".", 1)[1]] = local
    return spec, model_alias
