"""Which model output the labels belong to, and the labels checked against it.

A model may have several outputs (a detector's boxes, landmarks and class scores; a
multi-task model's two classifier heads). Accuracy is read from one of them, decided
here once per run (at load, on the source model) and used by every stage:
`data.label_output` names it; without it, the one classifier-shaped output the labels
fit; when several fit, the one the source model is most accurate on (said in the
report); when none, accuracy is null with the reason. Never silently the first.

Labels are class ids in range for that output, or one-hot / probability rows of its
width (converted to ids, with a note). Anything else is a user's data mistake (exit 2
naming the file and the array), not 0.00 % accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mobilec.errors import DataError, RecipeError
from mobilec.util.metrics import accuracy, is_classifier


@dataclass
class LabelOutput:
    """The decision: the output index (None: accuracy is not measured) and why."""
    index: int | None
    name: str | None
    chosen_by: str  # recipe | only-fit | source-accuracy | none
    reason: str
    candidates: list[dict[str, Any]] = field(default_factory=list)  # {name, index, accuracy}

    def as_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {"name": self.name, "index": self.index,
                               "chosen_by": self.chosen_by, "reason": self.reason}
        if self.candidates:
            row["candidates"] = self.candidates
        return row


def label_kind(y: np.ndarray) -> str:
    """'ids' (integers, or integral floats), 'rows' (one-hot or probability rows) or 'bad'."""
    y = np.asarray(y)
    if y.dtype.kind in "iub":
        return "ids" if y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1) else "bad"
    if y.dtype.kind != "f" or not np.all(np.isfinite(y)):
        return "bad"
    if y.ndim == 2 and y.shape[1] >= 2 and np.all(y >= 0) and \
            np.allclose(y.sum(axis=1), 1.0, atol=1e-3):
        return "rows"
    if (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)) and np.all(y == np.round(y)):
        return "ids"
    return "bad"


def fits(y: np.ndarray, classes: int) -> bool:
    """Whether labels `y` can be class labels of a `classes`-wide output."""
    kind = label_kind(y)
    if kind == "rows":
        return y.shape[1] == classes
    return kind == "ids" and float(np.min(y)) >= 0 and float(np.max(y)) < classes


def label_ids(y: np.ndarray, classes: int, where: str) -> tuple[np.ndarray, str | None]:
    """`y` as int64 class ids for a `classes`-wide output, and a note when converted.

    `where` names the file and the array ("data/eval.npz, array 'y'"); labels that are not
    class ids in range (or one-hot rows of this width) are a DataError there."""
    y = np.asarray(y)
    kind = label_kind(y)
    hint = (f"give y as integer class ids 0..{classes - 1} (shape (N,)) or one-hot rows "
            f"(shape (N, {classes}))")
    if kind == "rows":
        if y.shape[1] != classes:
            raise DataError(f"labels are one-hot rows of width {y.shape[1]} but the labelled "
                            f"output has {classes} classes", where=where, hint=hint)
        return y.argmax(axis=1).astype("int64"), (
            f"{where}: one-hot labels {tuple(y.shape)} converted to class ids")
    if kind == "bad":
        what = f"dtype {y.dtype}, shape {tuple(y.shape)}"
        if y.dtype.kind == "f" and np.all(np.isfinite(y)) and y.ndim <= 2:
            what = "fractional values" if y.ndim == 1 or y.shape[1] == 1 else \
                f"rows of width {y.shape[1]} that are not one-hot"
        raise DataError(f"labels are not class ids ({what})", where=where, hint=hint)
    ids = y.reshape(-1)
    lo, hi = int(np.min(ids)), int(np.max(ids))
    if lo < 0 or hi >= classes:
        raise DataError(f"labels range over {lo}..{hi} but the labelled output has {classes} "
                        f"classes (0..{classes - 1})", where=where, hint=hint)
    note = None if y.dtype.kind in "iu" else f"{where}: labels of dtype {y.dtype} read as class ids"
    return ids.astype("int64"), note


def choose_label_output(outs: list[np.ndarray], names: list[str], y: np.ndarray,
                        key: str | int | None, key_where: str, data_where: str) -> LabelOutput:
    """Decide which of the source model's outputs `outs` (on the labelled data) the labels
    `y` belong to. `key` is data.label_output (located at `key_where`)."""
    if key is not None:
        index = _resolve_key(key, names, key_where)
        if not is_classifier(outs[index]):
            raise RecipeError(f"data.label_output: output '{names[index]}' has shape "
                              f"{_shape(outs[index])}, not class scores [batch, classes]",
                              where=key_where, hint="name an output of shape [batch, classes] "
                              f"(outputs: {_listing(outs, names)})")
        return LabelOutput(index, names[index], "recipe", "named by data.label_output")
    classifiers = [i for i, o in enumerate(outs) if is_classifier(o)]
    if not classifiers:
        return LabelOutput(None, None, "none", "no output has the shape of class scores "
                           f"[batch, classes] (outputs: {_listing(outs, names)}): accuracy is "
                           "not measured")
    fitting = [i for i in classifiers if fits(y, outs[i].shape[-1])]
    if not fitting:
        # The labels fit no classifier output: say why against the likeliest one.
        widest = max(classifiers, key=lambda i: outs[i].shape[-1])
        label_ids(y, outs[widest].shape[-1], data_where)  # raises with the precise reason
        raise DataError("labels fit no classifier output", where=data_where)  # pragma: no cover
    if len(fitting) == 1:
        i = fitting[0]
        why = "the only output of class-score shape" if len(classifiers) == 1 else \
            "the only class-score output whose width the labels fit"
        return LabelOutput(i, names[i], "only-fit", why)
    scored = []
    for i in fitting:
        ids, _ = label_ids(y, outs[i].shape[-1], data_where)
        scored.append({"name": names[i], "index": i, "accuracy": accuracy(outs[i], ids)})
    best = max(scored, key=lambda c: (c["accuracy"] or 0.0, -c["index"]))
    return LabelOutput(best["index"], best["name"], "source-accuracy",
                       f"{len(fitting)} class-score outputs fit the labels; the source model is "
                       f"most accurate on '{best['name']}' (set data.label_output to choose)",
                       scored)


def _resolve_key(key: str | int, names: list[str], where: str) -> int:
    if isinstance(key, str) and key in names:
        return names.index(key)
    if isinstance(key, int) or (isinstance(key, str) and key.isdigit()):
        index = int(key)
        if 0 <= index < len(names):
            return index
    raise RecipeError(f"data.label_output: the model has no output {key!r}", where=where,
                      hint=f"name one of its outputs ({', '.join(names)}) or give its index "
                           f"0..{len(names) - 1}")


def _shape(a: np.ndarray) -> list[int]:
    return list(a.shape)


def _listing(outs: list[np.ndarray], names: list[str]) -> str:
    return ", ".join(f"{n} {_shape(o)}" for n, o in zip(names, outs, strict=True))


def settle_labels(data: Any, spec: Any, outs: list[np.ndarray], names: list[str],
                  key_where: str) -> tuple[LabelOutput, list[str]]:
    """Decide the label output from the source model's outputs `outs` on the labelled rows
    (eval's, else the first train rows), then turn every split's labels into class ids for
    it (in place). `data` is the Dataset, `spec` the recipe's DataSpec. Returns the decision
    and the notes to report."""
    labelled = data.eval if data.eval is not None and data.eval.y is not None else data.train
    # (`outs` are the model's outputs on `labelled`'s first rows)
    y = labelled.y[: len(outs[0])]
    choice = choose_label_output(outs, names, y, spec.label_output, key_where,
                                 split_where(spec, labelled is data.eval))
    # A chosen output is the report's model.label_output (and one terminal line).
    notes = [f"accuracy: {choice.reason}"] if choice.index is None else []
    for split, is_eval in ((data.eval, True), (data.train, False)):
        if split is None or split.y is None or choice.index is None:
            continue  # nothing to check the labels against
        split.y, note = label_ids(split.y, outs[choice.index].shape[-1],
                                  split_where(spec, is_eval))
        if note:
            notes.append(note)
    return choice, notes


def split_where(spec: Any, is_eval: bool) -> str:
    """How errors name a split's labels: the file and the array."""
    role = "eval" if is_eval else "train"
    if spec.python:
        return f"data.python ({role} labels)"
    path = getattr(spec, role, None)
    return f"{path}, array 'y'" if path and spec.source == "npz" else f"data.{role} labels"
