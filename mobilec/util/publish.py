"""Publishing a run into its output dir as one step, and knowing which files there are ours.

A run builds everything in a staging dir inside the output dir (same file system, so a
rename is atomic), then swaps mobilec's files in with a journaled set of renames:

1. `.mobilec-publish.json` (the journal) is written: the staging and backup dir names,
   the new files (`new`) and the previous run's files this one replaces (`old`).
2. every `old` file is renamed into the backup dir; then every `new` file from staging
   into the output dir;
3. the journal is renamed to `.mobilec-published.json` (a rename: no space needed) — the
   commit point — and the backup, the staging dir and the marker are removed.

A run that dies anywhere in between (SIGKILL, a crash, the disk filling up) leaves the
journal; the next run into the dir (under the same output-dir lock) rolls it back (before
the commit point) or finishes it (after), so mobilec's files are exactly the previous run's
or exactly the new run's. SIGINT/SIGTERM are held back for the few milliseconds of renames.
Files mobilec did not write are never moved, and are never overwritten unless forced.

"Ours": the files an earlier run's `mobilec.lock.json` lists under `outputs`; for runs
written before that listing existed, the artifacts and manifests their report.json lists,
the reports and the lock; and a diagnose.json / diagnose.html pair that mobilec wrote.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from mobilec.errors import MobilecError
from mobilec.util.fs import TMP_PREFIX, atomic_write_text, write_error

JOURNAL = ".mobilec-publish.json"
COMMITTED = ".mobilec-published.json"
LISTING_FILE = "mobilec.lock.json"  # its `outputs`: what the run published
REPORT_FILES = ("report.json", "report.md", "report.html")
DIAGNOSE_FILES = ("diagnose.json", "diagnose.html")


# ----------------------------------------------------------------------------- what is ours

def _read_json(path: Path) -> Any:
    try:
        if not path.is_file():
            return None
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def _safe(rel: Any) -> bool:
    """A listed path we may move: relative, inside the dir, not our own scratch."""
    if not isinstance(rel, str) or not rel or "\\" in rel:
        return False
    p = PurePosixPath(rel)
    return (not p.is_absolute() and ".." not in p.parts and p.parts[0] not in (".", "")
            and not p.name.startswith(TMP_PREFIX) and p.name not in (JOURNAL, COMMITTED))


def owned_files(out_dir: Path) -> set[str]:
    """Paths (relative, posix) of the files earlier mobilec runs published in `out_dir`."""
    out_dir = Path(out_dir)
    owned: set[str] = set()
    lock = _read_json(out_dir / LISTING_FILE)
    listed = isinstance(lock, dict) and isinstance(lock.get("outputs"), list)
    if listed:
        owned.update(p for p in lock["outputs"] if _safe(p))
    elif isinstance(lock, dict) and "lock_version" in lock:
        owned.add(LISTING_FILE)
    report = _read_json(out_dir / "report.json")
    if isinstance(report, dict) and "mobilec_version" in report \
            and isinstance(report.get("artifacts"), list):
        owned.add("report.json")
        for a in report["artifacts"]:
            if isinstance(a, dict):
                owned.update(p for p in (a.get("path"), a.get("delegate_manifest")) if _safe(p))
        if not listed:  # a run from before the listing: its reports and lock were its own
            owned.update(n for n in (*REPORT_FILES, LISTING_FILE) if (out_dir / n).exists())
    diag = _read_json(out_dir / "diagnose.json")
    if isinstance(diag, dict) and "backend" in diag and "rows" in diag:
        owned.update(DIAGNOSE_FILES)
    return owned


def units(stage_dir: Path) -> list[str]:
    """What a run publishes, as the paths it renames: top-level files, and each entry of
    a top-level folder (`cpu/digits-int8.tflite`, a `.mlpackage` directory, a manifest)."""
    found: list[str] = []
    for entry in sorted(Path(stage_dir).iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            found += [f"{entry.name}/{child.name}" for child in sorted(entry.iterdir())]
        else:
            found.append(entry.name)
    return found


def _exists(path: Path) -> bool:
    return os.path.lexists(path)


def foreign(out_dir: Path, names: Iterable[str], owned: set[str]) -> list[str]:
    """Of `names`, those that exist in `out_dir` and that no earlier mobilec run wrote."""
    return sorted(n for n in set(names) if n not in owned and _exists(Path(out_dir) / n))


def refuse_foreign(out_dir: Path, names: list[str], force_flag: str | None = "--force") -> None:
    if not names:
        return
    shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    raise MobilecError(f"would overwrite {len(names)} file(s) that mobilec did not write: "
                       f"{shown}", where=str(out_dir),
                       hint="choose another output dir (--out / output.dir) or move those files"
                            + (f", or pass {force_flag} to overwrite them" if force_flag else ""))


def check_report_files(out_dir: Path, names: tuple[str, ...], marker: tuple[str, ...]) -> None:
    """exit 2 when `out_dir` holds one of `names` (a batch's or explore's reports) that an
    earlier run did not write: names[0] is JSON holding the `marker` keys when it did."""
    doc = _read_json(Path(out_dir) / names[0])
    owned = set(names) if isinstance(doc, dict) and all(k in doc for k in marker) else set()
    refuse_foreign(out_dir, foreign(out_dir, names, owned), force_flag=None)


# ----------------------------------------------------------------------------- the swap

@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT/SIGTERM wait until the renames are done, then are delivered as usual."""
    got: list[int] = []
    previous: dict[int, Any] = {}
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda s, _f: got.append(s))
    except ValueError:  # not the main thread: nothing to hold
        pass
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(got):
            os.kill(os.getpid(), signum)


def _move(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.rename(src, dest)


def publish(out_dir: Path, stage_dir: Path, *, retire: set[str], force: bool = False
            ) -> list[str]:
    """Swap the staged files into `out_dir`, retiring `retire` (the previous run's files that
    this run replaces or leaves stale). Returns the published paths. Raises (exit 2) without
    touching anything when a staged path would overwrite a file mobilec did not write and
    `force` is not set."""
    out_dir, stage_dir = Path(out_dir), Path(stage_dir)
    new = units(stage_dir)
    others = foreign(out_dir, new, retire)
    if others and not force:
        refuse_foreign(out_dir, others)
    old = sorted(n for n in set(retire) | set(others) if _exists(out_dir / n))
    backup = out_dir / f"{TMP_PREFIX}old-{os.getpid()}"
    journal = {"version": 1, "stage": stage_dir.name, "backup": backup.name,
               "new": new, "old": old}
    with _signals_held():
        atomic_write_text(out_dir / JOURNAL, json.dumps(journal, indent=1) + "\n")
        try:
            for rel in old:
                _move(out_dir / rel, backup / rel)
            for rel in new:
                _move(stage_dir / rel, out_dir / rel)
            os.rename(out_dir / JOURNAL, out_dir / COMMITTED)  # the commit point
        except BaseException as exc:
            _roll_back(out_dir, journal)
            if isinstance(exc, OSError):
                raise write_error(exc, out_dir) from None
            raise
        _finish(out_dir, journal)
    return new


def pending(out_dir: Path) -> bool:
    """Whether a killed run left a swap half done in `out_dir` (recover it first)."""
    return any(_exists(Path(out_dir) / name) for name in (JOURNAL, COMMITTED))


def recover(out_dir: Path) -> str | None:
    """Complete or roll back a publish that a killed run left half done. Call under the
    output-dir lock, before anything else touches the dir. Returns what it did, if anything."""
    out_dir = Path(out_dir)
    for name, done in ((COMMITTED, True), (JOURNAL, False)):
        journal = _read_json(out_dir / name)
        if isinstance(journal, dict) and isinstance(journal.get("new"), list):
            if done:
                _finish(out_dir, journal)
                return "finished"
            _roll_back(out_dir, journal)
            return "rolled back"
        if _exists(out_dir / name):  # unreadable: nothing we can trust in it
            (out_dir / name).unlink()
    return None


def _scratch(out_dir: Path, journal: dict[str, Any], key: str) -> Path | None:
    name = journal.get(key)
    if isinstance(name, str) and name.startswith(TMP_PREFIX) and "/" not in name:
        return out_dir / name
    return None


def _roll_back(out_dir: Path, journal: dict[str, Any]) -> None:
    stage, backup = _scratch(out_dir, journal, "stage"), _scratch(out_dir, journal, "backup")
    old = {n for n in journal.get("old", []) if _safe(n)}
    new = [n for n in journal.get("new", []) if _safe(n)]
    for rel in reversed(new):
        here = out_dir / rel
        if not _exists(here):
            continue
        if rel in old and not (backup is not None and _exists(backup / rel)):
            continue  # the previous run's file, never moved out: it stays
        if stage is not None:
            _move(here, stage / rel)  # the new file goes back where it came from
    if backup is not None:
        for rel in sorted(old):
            if _exists(backup / rel) and not _exists(out_dir / rel):
                _move(backup / rel, out_dir / rel)
    _clean(out_dir, journal, new)
    with contextlib.suppress(FileNotFoundError):
        (out_dir / JOURNAL).unlink()


def _finish(out_dir: Path, journal: dict[str, Any]) -> None:
    _clean(out_dir, journal, [n for n in journal.get("old", []) if _safe(n)])
    with contextlib.suppress(FileNotFoundError):
        (out_dir / COMMITTED).unlink()


def _clean(out_dir: Path, journal: dict[str, Any], moved: list[str]) -> None:
    """Remove the staging and backup dirs, and folders that the moves left empty."""
    for key in ("backup", "stage"):
        path = _scratch(out_dir, journal, key)
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)
    for rel in moved:
        parent = (out_dir / rel).parent
        while parent != out_dir and out_dir in parent.parents:
            try:
                parent.rmdir()  # only when empty: a user's file keeps its folder
            except OSError:
                break
            parent = parent.parent
