"""`mobilec batch`: convert a zoo of models, in parallel, cached, one failure never stops the rest.

Flow: load the zoo -> plan one Job per model (recipe validated up front) ->
preflight each model (format, plan; no TensorFlow) -> consult the cache ->
dispatch what is left to an executor (local process pool or Ray) -> commit each
result as it arrives -> zoo-report.{json,md,html}.

Commit protocol (what makes interrupts and crashes safe): a job writes into a
staging folder `<out>/.mobilec-tmp-job-<name>`; only when its outputs are
complete does the driver add the cache entry to that folder and publish it into
`<out>/<name>` in one journaled swap (util.publish: the previous run's files are
retired, the user's own files there stay). An interrupted or crashed job leaves a
staging folder, which the next run deletes; a model's folder therefore always
holds one complete run, and an entry exists only beside the outputs it describes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mobilec.batch.cache import ENTRY_FILE, cache_key, changed, key_parts, lookup, make_entry
from mobilec.batch.local import LocalPool, default_workers
from mobilec.batch.progress import BatchProgress
from mobilec.batch.ray_exec import RayPool
from mobilec.batch.report import ZOO_REPORTS, build_zoo_report, write_zoo_reports
from mobilec.batch.task import input_paths, unpack
from mobilec.batch.zoo import Job, Zoo, load_zoo, plan_jobs, zoo_from_models
from mobilec.ci.lockfile import run_inputs
from mobilec.errors import EXIT_SIGINT, EXIT_SIGTERM, Interrupted, MobilecError
from mobilec.policy.plancheck import check_plan, check_trust
from mobilec.sources.detect import detect_format
from mobilec.util.fs import TMP_PREFIX, atomic_write_text, clean_temp, output_lock, sha256_path
from mobilec.util.outguard import check_no_overlap, check_out_dir
from mobilec.util.publish import check_report_files, owned_files, publish, recover

LOG_DIR = ".mobilec-logs"


class BatchInterrupted(MobilecError):
    def __init__(self, signum: int, done: int, total: int):
        self.exit_code = EXIT_SIGINT if signum == signal.SIGINT else EXIT_SIGTERM
        super().__init__(f"interrupted by {signal.Signals(signum).name}: {done} of {total} models "
                         "finished (their results are kept); models in progress were discarded",
                         hint="run the same command again: it resumes where this run stopped")


def run_batch(zoo_file: str | Path | None = None, *, recipe: str | Path | None = None,
              models: list[str] | tuple[str, ...] = (), overrides: list[str] | tuple[str, ...] = (),
              out: str | Path | None = None, executor: str | None = None,
              workers: int | None = None, timeout: float | None = None, address: str | None = None,
              force: bool = False, evaluate: bool = True, unsafe_deserialization: bool = False,
              trust_code: bool = False, verbose: bool = False, quiet: bool = True, stream: Any = None) -> dict[str, Any]:
    """Run a zoo; returns the zoo report (also written as zoo-report.{json,md,html}).

    Either `zoo_file`, or `recipe` plus `models` (files, SavedModel dirs or folders).
    Arguments given here win over the zoo file's own settings.
    """
    start = time.perf_counter()
    zoo = _load(zoo_file, recipe, models)
    executor = executor or zoo.executor
    if executor not in ("local", "ray"):
        raise MobilecError(f"unknown executor '{executor}'", hint="use local or ray")
    workers = workers or zoo.workers
    timeout = timeout or zoo.timeout
    address = address or zoo.address
    out_dir = Path(out).resolve() if out else zoo.out or (Path.cwd() / "mobilec-out" / zoo.name)
    check_out_dir(out_dir)
    jobs = plan_jobs(zoo, out_dir, list(overrides))
    for job in jobs:  # once, before the output dir or any worker: not one failure per model
        if job.recipe is not None:
            check_trust(job.recipe, trust_code, where=f"{zoo.source} (model {job.name})")
    _check_overlap(zoo, jobs, out_dir)
    with output_lock(out_dir):
        clean_temp(out_dir)  # staging folders of an interrupted earlier run
        progress = BatchProgress([j.name for j in jobs], quiet=quiet, stream=stream,
                                 title=f"mobilec batch: {zoo.name}")
        runner = _Runner(jobs, out_dir, progress, evaluate=evaluate, force=force,
                         options={"unsafe_deserialization": unsafe_deserialization,
                                  "trust_code": trust_code, "verbose": verbose})
        try:
            todo = runner.plan()
            used = runner.execute(todo, executor, workers=workers, timeout=timeout,
                                  address=address, verbose=verbose) if todo else 0
        except (KeyboardInterrupt, Interrupted) as exc:
            signum = getattr(exc, "signum", signal.SIGINT)
            raise BatchInterrupted(signum, len(runner.entries), len(jobs)) from None
        finally:
            progress.close()
            clean_temp(out_dir)
        zoo_report = build_zoo_report([runner.entries[j.index] for j in jobs],
                                      zoo=zoo.source, out_dir=out_dir, executor=executor,
                                      workers=used or None, wall_s=time.perf_counter() - start)
        write_zoo_reports(zoo_report, out_dir)
    return zoo_report


def _check_overlap(zoo: Zoo, jobs: list[Job], out_dir: Path) -> None:
    """No zoo report and no model's output folder (replaced whole when its job commits) may
    be, or hold, an input: the zoo file, a model, its data, its recipe."""
    inputs: dict[str, Path] = {}
    if zoo.source and Path(zoo.source).is_file():
        inputs["zoo file"] = Path(zoo.source)
    for job in jobs:
        if job.recipe is not None:
            inputs.update({f"{job.name}: {k}": v for k, v in run_inputs(job.recipe).items()})
    check_no_overlap({"zoo report": [out_dir / n for n in ZOO_REPORTS],
                      "model output folder": [j.out_dir for j in jobs]}, inputs,
                     where=str(zoo.source), write_into={"batch output dir": out_dir})
    check_report_files(out_dir, ZOO_REPORTS, ("models", "totals"))


def _load(zoo_file: str | Path | None, recipe: str | Path | None, models: Any) -> Zoo:
    if zoo_file is not None and not models:
        if recipe is not None:
            raise MobilecError("give either a zoo file or --recipe with models, not both",
                               hint="mobilec batch ZOO.yaml | mobilec batch --recipe R.yaml MODEL…")
        return load_zoo(zoo_file)
    if recipe is None:
        raise MobilecError("models on the command line need a base recipe",
                           hint="mobilec batch --recipe base.yaml MODEL_OR_FOLDER…")
    return zoo_from_models(recipe, [str(m) for m in ([zoo_file] if zoo_file else []) + list(models)])


def _entry(job: Job, status: str, report: dict[str, Any] | None, error: str | None,
           seconds: float | None) -> dict[str, Any]:
    return {"path": str(job.model), "name": job.name, "out": job.name, "status": status,
            "error": error, "seconds": seconds, "report": report}


class _Runner:
    """The state of one batch run: which jobs are done, and how each got its result."""
    def __init__(self, jobs: list[Job], out_dir: Path, progress: BatchProgress, *,
                 evaluate: bool, force: bool, options: dict[str, Any]):
        self.jobs = {j.index: j for j in jobs}
        self.out_dir = out_dir
        self.progress = progress
        self.evaluate = evaluate
        self.force = force
        self.options = options
        self.entries: dict[int, dict[str, Any]] = {}
        self.keys: dict[int, tuple[str, dict[str, Any]]] = {}

    def _finish(self, job: Job, entry: dict[str, Any]) -> None:
        self.entries[job.index] = entry
        self.progress.finished(job.name, entry["status"], entry["report"], entry["seconds"],
                               entry["error"])

    def plan(self) -> list[Job]:
        """Preflight and cache: returns the jobs that must run."""
        todo: list[Job] = []
        key_options = {"evaluate": self.evaluate,
                       "unsafe_deserialization": bool(self.options.get("unsafe_deserialization"))}
        for job in self.jobs.values():
            assert job.recipe is not None
            try:
                # The same checks compress makes first: a broken file fails here in
                # milliseconds instead of after a worker has imported TensorFlow.
                check_plan(job.recipe, detect_format(job.model, job.recipe.model.format))
            except MobilecError as exc:
                self._finish(job, _entry(job, "failed", None, exc.render(), 0.0))
                continue
            parts = key_parts(job.recipe, sha256_path(job.model), key_options)
            key = cache_key(parts)
            self.keys[job.index] = (key, parts)
            hit = None if self.force else lookup(job.out_dir, key)
            if hit is not None:
                self._finish(job, _entry(job, "cached", hit["report"], None, None))
            else:
                why = changed(job.out_dir, parts)
                if why and not self.force:
                    self.progress.note(f"{job.name}: changed ({', '.join(why)}), converting again")
                todo.append(job)
        return todo

    def staging(self, job: Job) -> Path:
        return self.out_dir / f"{TMP_PREFIX}job-{job.name}"

    def execute(self, todo: list[Job], executor: str, *, workers: int | None,
                timeout: float | None, address: str | None, verbose: bool) -> int:
        """Run `todo` on the executor, committing each result as it arrives; returns the parallelism."""
        def on_event(kind: str, index: int, **kw: Any) -> None:
            name = self.jobs[index].name
            if kind == "start":
                self.progress.started(name, "ray" if executor == "ray" else "")
            elif kind == "stage":
                self.progress.stage(name, kw["stage"])

        if executor == "ray":
            pool: Any = RayPool(address=address, parallel=workers, timeout=timeout,
                                on_event=on_event, verbose=verbose)
            tasks: list[Any] = []
            for job in todo:
                parts = self.keys[job.index][1]
                digests = {"model": parts["model_sha256"], **parts["data"]}
                inputs = {k: Path(v) for k, v in input_paths(job.spec()).items()}
                tasks.append((job.index, job.spec(), inputs, digests, self.evaluate, self.options))
            used = pool.parallel
        else:
            pool = LocalPool(min(workers or default_workers(), len(todo)), self.out_dir / LOG_DIR,
                             timeout=timeout, on_event=on_event)
            tasks = [(job.index, job.spec(), self.staging(job), self.evaluate, self.options)
                     for job in todo]
            used = pool.workers
        try:
            for index, result in pool.run(tasks):
                self.commit(self.jobs[index], result)
        finally:
            pool.close()
        return used

    def commit(self, job: Job, result: dict[str, Any]) -> None:
        staging = self.staging(job)
        archive = result.pop("archive", None)
        if archive is not None:
            shutil.rmtree(staging, ignore_errors=True)
            unpack(archive, staging)
        report, status = result.get("report"), result["status"]
        if report is not None and staging.is_dir():
            try:
                with _signals_deferred():
                    if status in ("ok", "budget"):
                        key, parts = self.keys[job.index]
                        entry = make_entry(key, parts, status, report, result.get("seconds") or 0.0)
                        atomic_write_text(staging / ENTRY_FILE, json.dumps(entry, indent=1))
                    _replace_dir(staging, job.out_dir)
            except (OSError, MobilecError) as exc:
                # e.g. a full disk: this model failed; the others may still fit
                shutil.rmtree(staging, ignore_errors=True)
                text = exc.render() if isinstance(exc, MobilecError) else str(exc.strerror or exc)
                status, result["error"] = "failed", f"could not place the outputs: {text}"
        else:
            # Nothing complete to keep (a crash, a timeout, a model that would not load):
            # the previous run's folder, if any, stays as it was.
            shutil.rmtree(staging, ignore_errors=True)
        self._finish(job, _entry(job, status, report, result.get("error"), result.get("seconds")))


def _replace_dir(src: Path, dest: Path) -> None:
    """Publish a finished job folder into the model's folder in one journaled swap
    (util.publish): the previous run's files (and its cache entry) are retired, files the
    user keeps there stay, and one mobilec did not write is never overwritten."""
    if dest.is_symlink() or dest.is_file():
        raise MobilecError("output path exists and is not a folder", where=str(dest),
                           hint="move it away or choose another --out")
    dest.mkdir(parents=True, exist_ok=True)
    recover(dest)  # a swap a killed earlier batch left half done
    stage = dest / f"{TMP_PREFIX}stage-job"
    shutil.rmtree(stage, ignore_errors=True)
    os.replace(src, stage)
    try:
        owned = owned_files(dest) | ({ENTRY_FILE} if (dest / ENTRY_FILE).is_file() else set())
        publish(dest, stage, retire=owned)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C/SIGTERM for the few milliseconds of a commit; they land right after."""
    sigs = {signal.SIGINT, signal.SIGTERM}
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    except (AttributeError, OSError, ValueError):
        yield
        return
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
