"""Files: atomic writes, the output-dir lock, hashing. Inputs are only ever read."""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from mobilec.errors import MobilecError

TMP_PREFIX = ".mobilec-tmp-"

# Why a write failed, in words a user can act on.
_WRITE_ERRORS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for this file system (or the `ulimit -f` limit)",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


def _umask() -> int:
    # Read once, at import (single-threaded): os.umask() can only be read by setting it.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates 0600 files; outputs get the mode any other new file would get.
FILE_MODE = 0o666 & ~_umask()


def os_error_reason(exc: OSError) -> str:
    return _WRITE_ERRORS.get(exc.errno or 0, exc.strerror or str(exc))


def write_error(exc: OSError, path: Path) -> MobilecError:
    """An OSError while writing an output, as one clear MobilecError (exit 2)."""
    reason = os_error_reason(exc)
    return MobilecError(f"cannot write output: {reason}; the incomplete file was removed",
                        where=str(path), hint="free some space or pass another --out; files "
                        "already in the output dir are complete (each went in with one rename)")


def check_regular(path: Path, what: str, error: type[MobilecError] = MobilecError) -> None:
    """Refuse an input that is neither a regular file nor a directory: a FIFO, socket or
    device would block a read forever (or stream without end). A missing path passes: the
    caller says "not found" in its own words."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return
    kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a file")
    raise error(f"{what} is {kind}, not a regular file or directory", where=str(path),
                hint="mobilec reads only regular files and directories: copy what it "
                     "streams into a file and point at that")


def sha256_path(path: Path) -> str:
    """sha256 of a file, or of a directory's files (names and bytes, sorted)."""
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if path.is_dir():
            h.update(str(f.relative_to(path)).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def size_of(path: Path) -> int:
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def gzip_size(path: Path) -> int:
    """Compressed size: what an app store download costs, and where pruning pays off."""
    path = Path(path)
    if path.is_dir():
        return sum(gzip_size(p) for p in sorted(path.rglob("*")) if p.is_file())
    return len(gzip.compress(path.read_bytes(), compresslevel=9, mtime=0))


def _check_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MobilecError(f"cannot create output directory: {exc.strerror}", where=str(directory),
                           hint="choose another --out") from None
    if not os.access(directory, os.W_OK):
        raise MobilecError("output directory is not writable", where=str(directory),
                           hint="choose another --out or fix its permissions")


def check_can_write(directory: Path) -> None:
    """Fail before any slow work if the output dir could not be created or written.

    Creates nothing: a run that fails later must not leave an empty output dir behind.
    """
    existing = Path(directory).absolute()
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise MobilecError("output path is inside a file, not a directory", where=str(existing),
                           hint="choose another --out")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise MobilecError("output directory is not writable", where=str(existing),
                           hint="choose another --out or fix its permissions")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    _check_writable(path.parent)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), FILE_MODE)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(exc, OSError):
            raise write_error(exc, path) from None
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_place(src: Path, dest: Path) -> None:
    """Move (or copy) a finished file or directory into place in one rename."""
    src, dest = Path(src), Path(dest)
    _check_writable(dest.parent)
    tmp = dest.parent / f"{TMP_PREFIX}{dest.name}.{os.getpid()}"
    try:
        if src.is_dir():
            shutil.copytree(src, tmp)
        else:
            shutil.copyfile(src, tmp)
        if dest.is_dir() and not dest.is_symlink():
            old = dest.parent / f"{TMP_PREFIX}old-{dest.name}.{os.getpid()}"
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException as exc:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
        if isinstance(exc, OSError):  # disk full while copying: say so, keep nothing partial
            raise write_error(exc, dest) from None
        raise


def remove_artifact(path: Path) -> None:
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def clean_temp(directory: Path) -> None:
    """Remove temp files a crashed earlier run left behind in an output dir."""
    if not directory.is_dir():
        return
    for p in directory.glob(f"{TMP_PREFIX}*"):
        remove_artifact(p)


def lock_path(directory: Path) -> Path:
    """Where the run lock of an output dir lives: outside it, so that a CI job uploading the
    folder never ships it. One file per resolved output path, in the system temp dir."""
    key = hashlib.sha256(str(Path(directory).resolve()).encode()).hexdigest()[:24]
    return Path(tempfile.gettempdir()) / f".mobilec-lock-{key}"


@contextlib.contextmanager
def output_lock(directory: Path, wait: bool = False) -> Iterator[None]:
    """One mobilec run per output directory; a second refuses (or waits) instead of interleaving."""
    import fcntl

    _check_writable(directory)
    path = lock_path(directory)
    while True:
        # Readable and writable by every user: another user's run must be refused with
        # "another run", not fail to open the file.
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        with contextlib.suppress(OSError):
            os.fchmod(fd, 0o666)
        fh = os.fdopen(fd, "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            try:
                raise _locked_error(fh, directory) from None
            finally:
                fh.close()
        # The holder before us removes the file when it is done: if we locked a file that
        # is no longer the one at `path`, a third run may hold the new one. Start over.
        try:
            if os.fstat(fh.fileno()).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        fh.close()
    try:
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        yield
    finally:
        # Removed while still locked, so that no run finds a lock file left behind.
        with contextlib.suppress(OSError):
            path.unlink()
        fh.close()


def _locked_error(fh: IO[str], directory: Path) -> MobilecError:
    fh.seek(0)
    holder = fh.read().strip() or "?"
    return MobilecError(f"another mobilec run (pid {holder}) is writing to this output directory",
                        where=str(directory), hint="wait for it to finish, or pass a different --out")


def drop_stale_lock(directory: Path) -> None:
    """Remove the run-lock file of `directory` if nobody holds it (its holder was killed:
    the lock went with the process, the file stayed)."""
    import fcntl

    path = lock_path(directory)
    try:
        fh = open(path)
    except OSError:
        return
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return  # held: a live run
        with contextlib.suppress(OSError):
            if os.fstat(fh.fileno()).st_ino == os.stat(path).st_ino:
                path.unlink()


def check_not_locked(directory: Path) -> None:
    """Refuse up front when another run holds the output dir, instead of after a long load.
    Only a probe (output_lock still guards the writing); creates nothing."""
    import fcntl

    try:
        fh = open(lock_path(directory))
    except OSError:
        return  # no lock file (or unreadable): nobody to wait for, or output_lock will say
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _locked_error(fh, Path(directory)) from None
        except OSError:
            return
        fcntl.flock(fh, fcntl.LOCK_UN)


STALE_WORK_AGE_S = 3600


def work_dir_prefix() -> str:
    """System-temp work dirs carry the owner's pid, so a later run can tell a dead one."""
    return f"{TMP_PREFIX}work-{os.getpid()}-"


def sweep_stale_work_dirs(root: Path | None = None, min_age_s: float = STALE_WORK_AGE_S,
                          pid: int | None = None) -> list[Path]:
    """Remove work dirs that SIGKILLed or OOM-killed runs left in the system temp dir
    (SIGINT/SIGTERM clean up on the way out; SIGKILL cannot). Only a dir whose owner pid is
    gone and which is older than min_age_s: a live run elsewhere is never touched. `pid`:
    only that (dead) process's dirs, whatever their age — a batch driver that reaped it."""
    if pid is not None:
        min_age_s = 0.0
    root = Path(root or tempfile.gettempdir())
    removed: list[Path] = []
    try:
        candidates = list(root.glob(f"{TMP_PREFIX}work-*-*"))
    except OSError:
        return removed
    now = time.time()
    for path in candidates:
        pid_text = path.name[len(f"{TMP_PREFIX}work-"):].split("-", 1)[0]
        if pid is not None and pid_text != str(pid):
            continue
        if not pid_text.isdigit() or _pid_alive(int(pid_text)):
            continue
        try:
            if now - path.stat().st_mtime < min_age_s or path.is_symlink() or not path.is_dir():
                continue
        except OSError:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's live process, or we cannot tell: keep its dir
    return True


@contextlib.contextmanager
def workspace(parent: Path) -> Iterator[Path]:
    """A temp dir beside the outputs (same filesystem, so the final rename is atomic)."""
    _check_writable(parent)
    path = Path(tempfile.mkdtemp(prefix=TMP_PREFIX + "work-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
