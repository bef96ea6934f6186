"""save: write the model as the state holds it now (after distill/factorize/prune) to a file.

Not a recipe stage: `mobilec.api.transform` plans it last, so that `mobilec explore`
can build each transformed model once, keep it in its content cache, and run every
quantize/convert candidate from it. A Keras model is written as a tf_keras .h5 (what
the load stage reads back into the same layers), an ONNX graph as an .onnx copy, a
SavedModel as a directory copy, a PyTorch model (.pt2 or model.module, trained or not) as
the .pt2 of the program the state holds (training stages re-export it). The file goes in with one rename: a cache never holds
half a model.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from mobilec.errors import RecipeError, UnsupportedError
from mobilec.formats.runtime import source_runner
from mobilec.sources.onnx_input import read_model, save_model
from mobilec.state import ModelState
from mobilec.util.fs import sha256_path, size_of

SUFFIX = {"keras": ".h5", "onnx": ".onnx", "savedmodel": "", "pt2": ".pt2"}


def model_kind(state: ModelState) -> str:
    if state.keras_model is not None:
        return "keras"
    if state.onnx_path is not None:
        return "onnx"
    if state.graph_dir is not None:
        return "savedmodel"
    if state.torch_program is not None:
        return "pt2"
    raise UnsupportedError("the state holds no model to save")


def run(state: ModelState, config: dict[str, Any] | None) -> dict[str, Any]:
    if not config or not config.get("path"):
        raise RecipeError("save needs a destination path", hint="api.transform(recipe, dest)")
    kind = model_kind(state)
    dest = Path(config["path"])
    if SUFFIX[kind] and dest.suffix != SUFFIX[kind]:
        raise RecipeError(f"a {kind} model is saved as {SUFFIX[kind]}, not '{dest.suffix}'",
                          where=str(dest), hint=f"name the destination *{SUFFIX[kind]}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.partial")
    if tmp.is_dir():
        shutil.rmtree(tmp)
    if kind == "keras":
        state.keras_model.save(str(tmp), save_format="h5")
    elif kind == "onnx":
        save_model(read_model(state.onnx_path), tmp)
    elif kind == "pt2":
        import torch

        torch.export.save(state.torch_program, str(tmp))
    else:
        shutil.copytree(state.graph_dir, tmp)
    if dest.is_dir():
        shutil.rmtree(dest)
    tmp.replace(dest)
    acc = None
    if state.eval_x is not None and state.eval_y is not None:
        acc = state.label_accuracy(source_runner(state)(state.eval_x))
    return {"path": str(dest), "format": kind, "sha256": sha256_path(dest),
            "size_bytes": size_of(dest), "accuracy": acc,
            "reference_accuracy": state.reference_accuracy}
