"""coremltools, imported quietly, and the helpers every Core ML module shares."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
from collections.abc import Iterator
from typing import Any

from mobilec.recipe.schema import CoreMLConfig
from mobilec.state import ModelState
from mobilec.util.tfenv import import_tf


def coreml_config(state: ModelState) -> CoreMLConfig:
    return state.convert_config.coreml


def import_coremltools() -> Any:
    """coremltools, imported quietly: it warns about untested TF/sklearn versions at import."""
    import_tf()  # the TF frontend needs TF, and TF must come in through tfenv
    os.environ.setdefault("TQDM_DISABLE", "1")  # conversion progress bars
    logger = logging.getLogger("coremltools")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import coremltools
    finally:
        logger.setLevel(level)
    return coremltools


@contextlib.contextmanager
def quiet(state: ModelState) -> Iterator[None]:
    """coremltools prints progress and per-layer lines; keep stdout clean for --json."""
    if state.options.get("verbose"):
        yield
        return
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


def feature_name(name: str) -> str:
    """A Core ML feature name from a TF/Keras tensor name (Swift/ObjC need identifiers)."""
    clean = re.sub(r"\W", "_", name.split(":")[0]).strip("_") or "x"
    return clean if not clean[0].isdigit() else f"x_{clean}"
