"""Before anything runs: no path mobilec will write may be one it reads.

Every output (artifact, manifest, report, lock file, --junit, a batch's or explore's
files) is compared with every input (model file or directory, data files, recipe, zoo
file, the user's code) by real path, symlinks resolved. Writing into an input directory
counts too (a SavedModel folder as the output dir). `/` and the home directory are
refused as output dirs: a run publishes and retires files there.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from mobilec.errors import MobilecError


def _real(path: Path | str) -> Path:
    return Path(os.path.realpath(os.path.expanduser(str(path))))


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_out_dir(out_dir: Path, flag: str = "--out / output.dir") -> None:
    """Refuse `/` and $HOME (and an existing file) as an output directory."""
    real = _real(out_dir)
    home = os.environ.get("HOME")
    if real == Path(real.anchor):
        raise MobilecError("refusing to use the file system root as the output directory",
                           where=str(out_dir), hint=f"set {flag} to a folder of its own")
    if home and real == _real(home):
        raise MobilecError("refusing to use the home directory as the output directory",
                           where=str(out_dir),
                           hint=f"set {flag} to a folder of its own, e.g. ~/mobilec-out")


def check_no_overlap(written: Mapping[str, Iterable[Path]], inputs: Mapping[str, Path],
                     where: str | None = None, write_into: Mapping[str, Path] | None = None
                     ) -> None:
    """exit 2 when a written path is an input, or lies inside an input directory.

    `written`: {what: paths} ("artifact", "report", "--junit", …); `inputs`: {role: path}
    ("model", "data.eval", "recipe", …); `write_into`: {what: dir} directories files are
    created in (the output dir): an input directory holding one is an overlap too."""
    reals = {role: _real(p) for role, p in inputs.items() if p is not None}
    input_dirs = {role: r for role, r in reals.items() if r.is_dir()}
    for what, paths in written.items():
        for path in paths:
            real = _real(path)
            for role, inp in reals.items():
                if real == inp or (role in input_dirs and _within(real, inp)) or \
                        _within(inp, real) and real != inp and real.is_dir():
                    _overlap(what, path, role, inputs[role], where)
    for what, directory in (write_into or {}).items():
        real = _real(directory)
        for role, inp in input_dirs.items():
            if _within(real, inp):
                _overlap(what, directory, role, inputs[role], where)


def _overlap(what: str, path: Path, role: str, inp: Path, where: str | None) -> None:
    raise MobilecError(f"the {what} {path} would overwrite an input: {role} {inp}",
                       where=where, hint="inputs are never written: choose another output "
                                         "dir (--out / output.dir) or move the input")
