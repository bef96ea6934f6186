"""Run mobilec over the conformance corpus and publish the matrix: CONFORMANCE.md + conformance.json.

    .venv/bin/python scripts/conformance_models.py --out corpus        # build once (cached)
    .venv/bin/python scripts/conformance.py --corpus corpus --out conformance-out [--only NAME ...]

For each corpus entry (a model saved one way: .keras, .h5, SavedModel, .onnx) a child process
runs `mobilec.api.compress` once per quantization plan (RUNS: int8 gives the float32 and int8
.tflite/.onnx, float16 the .tflite and Core ML, dynamic the .tflite, coreai the float32 and
float16 .aimodel; PyTorch entries: torch and coreai), under one timeout per entry.
Each compress writes its result.json before the next starts, so a crash or a timeout loses only
what had not finished. Every planned artifact becomes one cell {model, source, format,
quantization, status, route, top1_agreement, snr_db, size_ratio, seconds, reason, accuracy,
source_accuracy, label_output, labels, outputs}; `seconds` is the wall time of the compress run
that made it; `accuracy` is the artifact's on the eval labels, `label_output` the output mobilec
read them from (report model.label_output), `labels` the corpus entry's (which output they were
made on, and the accuracy the source must show there). status is the report row's status, or `crash`
(an internal error, a traceback or a dying child: always a mobilec bug), `timeout`, or `failed`
when no row exists (with the failing stage's message as reason).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from conformance_report import CRASH_MARKERS, corpus_notes, publish, totals  # noqa: E402


@dataclass(frozen=True)
class Run:
    name: str
    mode: str
    targets: tuple[str, ...]
    formats: tuple[str, ...]
    cells: tuple[tuple[str, str], ...]  # (format, quantization) this run is the source of


# One compress per quantization mode. There is no float32 plan: the cpu target always ships
# float32 beside int8, so the int8 run is where the float32 cells come from.
RUNS = (
    Run("int8", "int8", ("cpu",), ("tflite", "onnx"),
        (("tflite", "float32"), ("tflite", "int8"), ("onnx", "float32"), ("onnx", "int8"))),
    Run("float16", "float16", ("android-gpu", "ios-coreml"), ("tflite", "coreml"),
        (("tflite", "float16"), ("coreml", "float16"))),
    Run("dynamic", "dynamic", ("cpu",), ("tflite",), (("tflite", "dynamic"),)),
)
# Core AI (.aimodel): every source - PyTorch through torch.export, the others through the
# .onnx -> onnx2torch bridge - float16 for ios-coreai and its float32 baseline, both run on
# Linux by coreai-core.
COREAI_RUN = Run("coreai", "float16", ("ios-coreai",), ("coreai",),
                 (("coreai", "float32"), ("coreai", "float16")))
RUNS = (*RUNS, COREAI_RUN)
# PyTorch (.pt2) sources: one compress gives every artifact - cpu (.tflite via litert_torch or
# the ONNX bridge, .onnx via the dynamo exporter), Core ML, and ExecuTorch (.pte, XNNPACK).
TORCH_RUN = Run("torch", "int8", ("cpu", "ios-coreml", "android-executorch"),
                ("tflite", "onnx", "coreml", "executorch"),
                (("tflite", "float32"), ("tflite", "int8"), ("onnx", "float32"), ("onnx", "int8"),
                 ("coreml", "float32"), ("coreml", "int8"), ("executorch", "float32"),
                 ("executorch", "int8")))
ALL_RUNS = (*RUNS, TORCH_RUN)
COLUMNS = list(dict.fromkeys(c for r in ALL_RUNS for c in r.cells))
CALIBRATION_SAMPLES = 32  # int8 calibration: enough for ranges, and the corpus is large
EVAL_SAMPLES = 256  # all the corpus has: top-1 agreement >= 0.99 needs 100+ samples to resolve


# ------------------------------------------------------------------------ child process

def recipe_for(entry: dict[str, Any], run: Run, corpus: Path, out: Path) -> dict[str, Any]:
    stages: list[dict[str, Any]] = [{"quantize": {"mode": run.mode}},
                                    {"convert": {"formats": list(run.formats)}}]
    return {"version": 1, "name": f"{entry['model']}-{entry['source']}-{run.name}",
            "model": {"path": str((corpus / entry["path"]).resolve())},
            "data": {"source": "npz", "eval": str((corpus / entry["eval"]).resolve()),
                     "calibration_samples": CALIBRATION_SAMPLES,
                     "eval_samples": EVAL_SAMPLES},
            "stages": stages, "targets": list(run.targets),
            "output": {"dir": str(out.resolve()), "report": ["json"]}}


def child(job_path: Path) -> int:
    """Run every compress of one entry; each writes <out>/<run>/result.json."""
    from mobilec.util.tfenv import configure_environment

    configure_environment()
    job = json.loads(job_path.read_text())
    from mobilec import api
    from mobilec.errors import MobilecError

    for run in ALL_RUNS:
        if run.name not in job["runs"]:
            continue
        out = Path(job["out"]) / run.name
        result_path = out.parent / f"{run.name}.result.json"
        if job.get("resume") and reusable(result_path, job["entry"]):
            continue
        out.mkdir(parents=True, exist_ok=True)
        recipe = out.parent / f"{run.name}.recipe.yaml"
        recipe.write_text(json.dumps(recipe_for(job["entry"], run, Path(job["corpus"]), out), indent=1))
        # `labels`: the corpus entry's, so that --resume reruns an entry whose labels changed
        result: dict[str, Any] = {"run": run.name, "report": None, "error": None, "error_kind": None,
                                  "labels": job["entry"].get("labels")}
        start = time.perf_counter()
        try:
            report = api.compress(recipe, quiet=True)
            result["report"] = {k: report.get(k) for k in ("mobilec_version", "stages", "artifacts",
                                                           "notes", "exit_code")}
            model = report.get("model") or {}
            result["report"]["model"] = {k: model.get(k) for k in ("accuracy", "label_output",
                                                                   "outputs")}
        except MobilecError as exc:  # refusals are answers (exit 2/3): a reason, not a crash
            result.update(error=exc.render(), error_kind="mobilec")
        except Exception:  # noqa: BLE001 - a traceback out of the API is the crash we count
            result.update(error=traceback.format_exc()[-3000:], error_kind="traceback")
        result["seconds"] = round(time.perf_counter() - start, 2)
        result_path.write_text(json.dumps(result, indent=1, default=str))
        if not job.get("keep"):
            _drop_artifacts(out)
    return 0


def reusable(result_path: Path, entry: dict[str, Any]) -> bool:
    """A result --resume keeps: it exists and was made with the entry's current labels (a
    result from before the corpus had labels has none, like an entry without a class output)."""
    if not result_path.exists():
        return False
    try:
        return json.loads(result_path.read_text()).get("labels") == entry.get("labels")
    except (OSError, ValueError):
        return False


def _drop_artifacts(out: Path) -> None:
    """The corpus is large: keep report.json, drop the artifacts (--keep-artifacts keeps them)."""
    import shutil

    for p in out.rglob("*"):
        if p.is_file() and p.name not in ("report.json", "mobilec.lock.json"):
            p.unlink()
    for p in sorted(out.rglob("*"), reverse=True):
        if p.is_dir() and not any(p.iterdir()):
            shutil.rmtree(p, ignore_errors=True)


# ------------------------------------------------------------------------ parent process

def run_entry(entry: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    work = args.out / "runs" / entry["model"] / entry["source"]
    work.mkdir(parents=True, exist_ok=True)
    # the primary entry (.keras; .h5 where Keras 3 lacks the family) gets every run
    wanted = args.runs if entry.get("primary") or args.other_runs is None else args.other_runs
    runs = [r for r in (TORCH_RUN, COREAI_RUN) if r.name in args.runs] \
        if entry.get("framework") == "torch" else [r for r in RUNS if r.name in wanted]
    if entry.get("error"):  # the builder could not save it this way: no cells to run
        return [cell(entry, fmt, q, "not-built", reason=f"corpus: {entry['error']}")
                for r in runs for fmt, q in r.cells]
    if args.publish_only:
        return _cells_of(entry, runs, work, False, 0, args.timeout)
    job = {"entry": entry, "runs": [r.name for r in runs], "corpus": str(args.corpus.resolve()),
           "out": str(work.resolve()), "resume": args.resume, "keep": args.keep_artifacts}
    job_path = (work / "job.json").resolve()  # the child runs in `work`: no relative paths
    job_path.write_text(json.dumps(job, indent=1))
    log = work / "child.log"
    timed_out, rc = False, 0
    # appended, not truncated: a --resume rerun must not erase why an earlier child died
    with open(log, "a") as fh:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child",
                                 str(job_path)], stdout=fh, stderr=subprocess.STDOUT,
                                cwd=str(work), start_new_session=True)
        try:
            rc = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the child and what it spawned
            proc.wait()
    return _cells_of(entry, runs, work, timed_out, rc, args.timeout)


def _cells_of(entry: dict[str, Any], runs: list[Run], work: Path, timed_out: bool, rc: int,
              timeout: int) -> list[dict[str, Any]]:
    log = work / "child.log"
    tail = _tail(log) if log.exists() else ""
    cells: list[dict[str, Any]] = []
    for r in runs:
        path = work / f"{r.name}.result.json"
        result = json.loads(path.read_text()) if path.exists() else None
        cells += cells_for(entry, r, _with_model(result, work / r.name / "report.json"),
                           timed_out, rc, tail, timeout)
    return cells


def _with_model(result: dict[str, Any] | None, report_path: Path) -> dict[str, Any] | None:
    """A result from before results kept the report's `model` (accuracy, label_output,
    outputs) gets it from the run's report.json, which --resume keeps."""
    report = (result or {}).get("report")
    if report is None or "model" in report or not report_path.exists():
        return result
    try:
        model = json.loads(report_path.read_text()).get("model") or {}
    except (OSError, ValueError):
        return result
    report["model"] = {k: model.get(k) for k in ("accuracy", "label_output", "outputs")}
    return result


def _tail(log: Path, lines: int = 6) -> str:
    text = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    useful = [t for t in text if not t.startswith(("WARNING: All log", "I0000", "W0000"))]
    return " | ".join(useful[-lines:])[-800:]


def cell(entry: dict[str, Any], fmt: str, q: str, status: str, *, route: str | None = None,
         top1: float | None = None, snr: float | None = None, ratio: float | None = None,
         seconds: float | None = None, reason: str | None = None,
         worst_channel: float | None = None, max_abs_err: float | None = None,
         accuracy: float | None = None, model: dict[str, Any] | None = None) -> dict[str, Any]:
    if reason and status not in ("crash", "timeout") and any(m in reason for m in CRASH_MARKERS):
        status = "crash"
    model = model or {}
    return {"model": entry["model"], "source": entry["source"], "format": fmt, "quantization": q,
            "status": status, "route": route, "top1_agreement": top1, "snr_db": snr,
            "size_ratio": ratio, "seconds": seconds, "reason": reason,
            # beyond the fields: a zeroed slice of a mixed-range output shows only here
            "worst_channel_snr_db": worst_channel, "max_abs_err": max_abs_err,
            # on the labels (eval npz `y`): this artifact's, the source's, the output mobilec
            # read them from (report model.label_output) and the one the corpus made them on
            "accuracy": accuracy, "source_accuracy": model.get("accuracy"),
            "label_output": model.get("label_output"), "labels": entry.get("labels"),
            "outputs": [{"name": o.get("name"), "shape": o.get("shape")}
                        for o in model.get("outputs") or []] or None}


def _worst(fid: dict[str, Any], key: str) -> float | None:
    """The report's number, or the worst over per-output fidelity when it gives one per output."""
    values = [o.get(key) for o in fid.get("outputs") or [] if isinstance(o, dict)]
    values = [v for v in values if v is not None]
    if values:
        return min(values)
    return fid.get(key)


def cells_for(entry: dict[str, Any], run: Run, result: dict[str, Any] | None, timed_out: bool,
              rc: int, tail: str, timeout: int) -> list[dict[str, Any]]:
    out = []
    for fmt, q in run.cells:
        if result is None:
            if timed_out:
                out.append(cell(entry, fmt, q, "timeout", reason=f"no result within the entry's "
                                f"{timeout}s timeout"))
            else:
                out.append(cell(entry, fmt, q, "crash", reason=f"child exited {rc} before "
                                f"this run finished: {tail}"))
            continue
        seconds = result.get("seconds")
        if result["error"]:
            status = "crash" if result["error_kind"] == "traceback" else "failed"
            out.append(cell(entry, fmt, q, status, seconds=seconds, reason=result["error"].strip()))
            continue
        report = result["report"]
        rows = [a for a in report["artifacts"] if a["format"] == fmt and a["quantization"] == q]
        rows.sort(key=lambda a: a.get("role") == "baseline")  # a shipped row before a baseline
        if not rows:
            failed = [s for s in report["stages"] if s["status"] == "failed"]
            reason = (f"{failed[0]['name']}: {failed[0].get('error')}" if failed
                      else "the report has no row for this artifact")
            out.append(cell(entry, fmt, q, "failed", seconds=seconds, reason=reason,
                            model=report.get("model")))
            continue
        row = rows[0]
        fid = row.get("fidelity") or {}
        text = "; ".join(t for t in (row.get("error"), row.get("note")) if t) or None
        out.append(cell(entry, fmt, q, row["status"], route=row.get("route"),
                        top1=_worst(fid, "top1_agreement"), snr=_worst(fid, "snr_db"),
                        ratio=row.get("size_ratio"), seconds=seconds,
                        accuracy=row.get("accuracy"), model=report.get("model"),
                        worst_channel=_worst(fid, "worst_channel_snr_db"),
                        max_abs_err=fid.get("max_abs_err"),
                        reason=text if row["status"] != "ok" else row.get("note")))
    return out


def _finished(entry: dict[str, Any], args: argparse.Namespace) -> bool:
    """Every run of this entry has a result from an earlier invocation (--resume reuses it)."""
    work = args.out / "runs" / entry["model"] / entry["source"]
    if entry.get("error") or not (work / "job.json").exists():
        return False
    runs = json.loads((work / "job.json").read_text())["runs"]
    return all(reusable(work / f"{n}.result.json", entry) for n in runs)


def _build_seconds(corpus: Path) -> float | None:
    """Time the corpus took to build (each model's, as conformance_models.py recorded it)."""
    per_model = {e["model"]: e.get("model_seconds") or 0.0
                 for e in json.loads((corpus / "corpus.json").read_text())}
    return sum(per_model.values()) or None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--corpus", type=Path, default=Path("conformance-corpus"))
    ap.add_argument("--out", type=Path, default=Path("conformance-out"), help="work dir")
    ap.add_argument("--report-dir", type=Path, help="where CONFORMANCE.md and conformance.json go "
                    "(default: --out)")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="models (corpus names)")
    ap.add_argument("--sources", nargs="+", help="keras h5 export tfsave onnx (default: all)")
    ap.add_argument("--runs", nargs="+", default=[r.name for r in ALL_RUNS],
                    choices=[r.name for r in ALL_RUNS], help="`torch`: the one run of .pt2 sources")
    ap.add_argument("--other-runs", nargs="+", default=["int8"], choices=[r.name for r in RUNS],
                    help="runs for entries other than each model's primary one (.keras, else .h5; "
                    "default: int8, which gives the float32 and int8 .tflite/.onnx); every run "
                    "on every source is hours on 2 cores")
    # Two entries at a time: a compress is mostly single-threaded converter code and child
    # start-up (imports), so two overlap well on 2 cores.
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=900, help="seconds per corpus entry")
    ap.add_argument("--resume", action="store_true", help="keep the results of finished runs")
    ap.add_argument("--keep-artifacts", action="store_true")
    ap.add_argument("--publish-only", action="store_true",
                    help="run nothing: publish the entries whose runs all have results in --out "
                    "(the others are listed as not run)")
    args = ap.parse_args()
    if args.child:
        return child(args.child)
    manifest = args.corpus / "corpus.json"
    if not manifest.exists():
        ap.error(f"{manifest} not found: build it with scripts/conformance_models.py --out {args.corpus}")
    entries = [e for e in json.loads(manifest.read_text())
               if (not args.only or e["model"] in args.only)
               and (not args.sources or e["source"] in args.sources)]
    if not entries:
        ap.error("no corpus entry matches --only/--sources")
    not_run: list[str] = []
    if args.publish_only:
        not_run = [f"{e['model']}/{e['source']}" for e in entries
                   if not e.get("error") and not _finished(e, args)]
        entries = [e for e in entries if e.get("error") or _finished(e, args)]
        args.resume = True
    start = time.time()
    resumed = sum(_finished(e, args) for e in entries) if args.resume else 0
    cells: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for entry, got in zip(entries, pool.map(lambda e: run_entry(e, args), entries), strict=True):
            cells += got
            worst = sorted({c["status"] for c in got})
            print(f"{entry['model']}/{entry['source']}: {', '.join(worst)}", flush=True)
    import platform

    from mobilec._version import __version__

    meta = {"mobilec_version": __version__, "date": dt.date.today().isoformat(),
            "host": f"{platform.machine()} {platform.system()}, {os.cpu_count()} cpus",
            "entries": len(entries), "not_run": not_run, "seconds": time.time() - start, "totals": totals(cells),
            "models": len({e["model"] for e in entries}), "build_seconds": _build_seconds(args.corpus),
            # one compress run per (model, source, seconds): its cells share its seconds
            "resumed": resumed, "compress_seconds": sum({(c["model"], c["source"], c["seconds"]):
                                                         c["seconds"] for c in cells
                                                         if c["seconds"]}.values()),
            "corpus_notes": corpus_notes(entries),
            "samples": {"eval": EVAL_SAMPLES, "calibration": CALIBRATION_SAMPLES}}
    publish(cells, args.report_dir or args.out, meta, COLUMNS)
    print(json.dumps(meta["totals"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
