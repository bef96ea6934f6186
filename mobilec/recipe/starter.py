"""`mobilec init`: a commented starter recipe."""

from __future__ import annotations

from pathlib import Path

from mobilec.errors import MobilecError
from mobilec.util.fs import atomic_write_text

STARTER = """\
# mobilec recipe: edit, then `mobilec validate {path}` and `mobilec compress {path}`
version: 1
name: {name}
model:
  path: model.keras            # .keras, .h5, SavedModel directory or .onnx (relative to this file)
  format: auto
data:                          # needed for int8 calibration, pruning and accuracy
  source: npz                  # digits (built-in) | npz | images
  train: data/train.npz        # arrays x (inputs) and y (labels, optional)
  eval: data/eval.npz          # never trained on; used for accuracy and fidelity
  calibration_samples: 200
stages:
  # - prune: {{sparsity: 0.5, schedule: constant, epochs: 2}}
  - quantize: {{mode: int8}}    # dynamic | float16 | int8 | int8-io | int16x8 | int4 | palettize | qat | auto
targets: [cpu]                 # android-nnapi | android-gpu | ios-coreml | cpu
verify: {{min_top1_agreement: 0.99, min_snr_db: 20}}
budget:
  max_accuracy_drop: 0.01      # CI fails (exit 1) past this
output:
  report: [json, md, html]
"""


def write_starter(path: Path) -> Path:
    """Write the starter to `path`; never overwrites."""
    if path.exists():
        raise MobilecError("file exists; mobilec init never overwrites", where=str(path),
                           hint="pass another path: mobilec init my-recipe.yaml")
    name = "".join(c if c.isalnum() or c in "-_" else "-" for c in path.stem) or "model"
    atomic_write_text(path, STARTER.format(path=path, name=name))
    return path
