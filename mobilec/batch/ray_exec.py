"""The Ray executor: the same task as the local pool, as Ray remote functions.

Works unchanged on a laptop (a local Ray started here) and on a cluster
(`--address`): inputs are read in place when the worker sees the same bytes at
the same path and shipped through the object store otherwise; outputs always
come back to the driver as tar bytes, so no shared filesystem is needed.
Ray is an optional extra and is imported only here, only when asked for.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mobilec.batch.task import WORKER_ENV, configure_worker, localize_inputs, pack, run_job
from mobilec.errors import MobilecError

Event = Callable[..., None]


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise MobilecError("executor 'ray' needs Ray, which is not installed",
                           hint="pip install 'mobilec[ray]' (or `make install`), or use "
                                "--executor local") from None
    return ray


def ray_task(spec: dict[str, Any], digests: dict[str, str], blobs: dict[str, Any],
             evaluate: bool, options: dict[str, Any]) -> dict[str, Any]:
    """Runs on a Ray worker (reused across tasks, so TensorFlow is imported once per worker)."""
    import ray

    configure_worker()
    with tempfile.TemporaryDirectory(prefix="mobilec-ray-") as tmp:
        # blobs holds ObjectRefs inside a dict: Ray does not resolve nested refs, so an input
        # is fetched only when this host cannot read it in place.
        spec, alias = localize_inputs(spec, digests, lambda key: ray.get(blobs[key]),
                                      Path(tmp) / "inputs")
        out = Path(tmp) / "out"
        result = run_job(spec, out, evaluate=evaluate, options=options, model_alias=alias)
        result["archive"] = pack(out, contents=True) if out.is_dir() else None
    return result


class RayPool:
    """Dispatches tasks to Ray, at most `parallel` at a time; yields (key, result) as each ends."""
    def __init__(self, address: str | None = None, parallel: int | None = None,
                 timeout: float | None = None, on_event: Event | None = None,
                 verbose: bool = False):
        self.ray = import_ray()
        self.timeout = timeout
        self.on_event = on_event or (lambda *a, **k: None)
        self.owned = False
        if not self.ray.is_initialized():
            try:
                self.ray.init(address=address, include_dashboard=False, log_to_driver=verbose,
                              configure_logging=verbose)
            except Exception as exc:  # noqa: BLE001 - Ray raises many types for a bad address
                raise MobilecError(f"cannot start or reach Ray: {str(exc).strip()[:300]}",
                                   where=address or "local Ray",
                                   hint="check --address (e.g. ray://head:10001 or auto), or "
                                        "use --executor local") from None
            self.owned = True
        cpus = int(self.ray.cluster_resources().get("CPU", 1))
        # Dispatch no more than can run: the timeout then counts from (about) the start, and
        # shipped inputs wait on the driver instead of filling the object store.
        self.parallel = max(1, min(parallel or cpus, cpus))

        # The env is set before the worker's Python starts, so native thread pools see it too.
        self.remote = self.ray.remote(num_cpus=1, max_retries=0,
                                      runtime_env={"env_vars": dict(WORKER_ENV)})(ray_task)
        self.inflight: dict[Any, tuple[Any, float]] = {}

    def run(self, tasks: list[tuple[Any, dict[str, Any], dict[str, Path], dict[str, str], bool,
                                    dict[str, Any]]]) -> Iterator[tuple[Any, dict[str, Any]]]:
        """tasks: (key, spec, inputs {name: path}, digests {name: sha256}, evaluate, options)."""
        ray = self.ray
        pending = list(reversed(tasks))
        while pending or self.inflight:
            while pending and len(self.inflight) < self.parallel:
                key, spec, inputs, digests, evaluate, options = pending.pop()
                blobs = {name: ray.put(_pack_input(p)) for name, p in inputs.items()}
                ref = self.remote.remote(spec, digests, blobs, evaluate, options)
                self.inflight[ref] = (key, time.monotonic())
                self.on_event("start", key)
            ready, _ = ray.wait(list(self.inflight), num_returns=1, timeout=self._wait_s())
            for ref in ready:
                key, t0 = self.inflight.pop(ref)
                yield key, self._get(ref, t0)
            if self.timeout is not None:
                now = time.monotonic()
                for ref, (key, t0) in list(self.inflight.items()):
                    if now - t0 >= self.timeout:
                        ray.cancel(ref, force=True)
                        del self.inflight[ref]
                        yield key, _failed(f"timed out after {self.timeout:g} s (--timeout; on Ray "
                                           "it counts from dispatch); the task was cancelled",
                                           self.timeout)

    def _wait_s(self) -> float | None:
        if self.timeout is None or not self.inflight:
            return None
        oldest = min(t0 for _, t0 in self.inflight.values())
        return max(0.0, oldest + self.timeout - time.monotonic())

    def _get(self, ref: Any, t0: float) -> dict[str, Any]:
        exc_mod = self.ray.exceptions
        elapsed = time.monotonic() - t0
        try:
            return self.ray.get(ref)
        except exc_mod.OutOfMemoryError as exc:
            return _failed(f"Ray killed the task: out of memory ({_first(exc)})", elapsed)
        except exc_mod.WorkerCrashedError as exc:
            return _failed(f"the Ray worker crashed while converting this model ({_first(exc)}); "
                           "see the worker logs under /tmp/ray/session_latest/logs", elapsed)
        except exc_mod.RayTaskError as exc:
            cause = getattr(exc, "cause", None) or exc
            return _failed(f"failed on the Ray worker: {type(cause).__name__}: {_first(cause)}",
                           elapsed)
        except exc_mod.RayError as exc:
            return _failed(f"Ray could not run this task: {type(exc).__name__}: {_first(exc)}",
                           elapsed)

    def close(self) -> None:
        for ref in list(self.inflight):
            with contextlib.suppress(Exception):
                self.ray.cancel(ref, force=True)
        self.inflight.clear()
        if self.owned:
            with contextlib.suppress(Exception):
                self.ray.shutdown()


def _pack_input(path: Path) -> bytes:
    return pack(path)


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def _failed(reason: str, seconds: float) -> dict[str, Any]:
    return {"status": "failed", "report": None, "error": reason, "seconds": round(seconds, 3)}
