"""distill: train a smaller student with the loaded model as teacher; the student flows on.

The student is a model file (loaded like the recipe's model: same safety checks,
same Keras 3 -> tf_keras bridge) or `{width: w}`: a copy of the teacher's graph
with every Dense/Conv's units/filters scaled by w, except the layers that size
the outputs. Its weights start fresh (seed 0); it learns from the teacher's
logits on data.train, mixed with the labels when there are any.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mobilec.errors import ModelLoadError, StageError, UnsupportedError
from mobilec.formats.runtime import source_runner
from mobilec.recipe.schema import DistillConfig, StudentWidth
from mobilec.sources.detect import detect_format
from mobilec.stages import load
from mobilec.state import ModelState
from mobilec.training import kd, torch_distill
from mobilec.training.finetune import require_train_data
from mobilec.training.flops import model_cost
from mobilec.training.surgery import Replacement, clone_layer, is_model, output_layers, rebuild
from mobilec.training.torch_model import is_torch
from mobilec.util.tfenv import set_seed

SEED = 0
WIDTH_KEYS = ("units", "filters")


def run(state: ModelState, config: DistillConfig) -> dict[str, Any]:
    train = require_train_data(state, "distill trains the student")
    if len(state.outputs) != 1:
        raise UnsupportedError(f"distill handles single-output models; this one has "
                               f"{len(state.outputs)} outputs", where=str(state.recipe.model.path))
    if is_torch(state):
        return torch_distill.run(state, config)
    set_seed(SEED)  # the student's initial weights and batch order repeat run to run
    if isinstance(config.student, StudentWidth):
        student = narrower_copy(_teacher_graph(state), config.student.width)
        described = f"width {config.student.width:g}"
    else:
        student = _load_student(state, Path(config.student))
        described = str(config.student)
    teacher_targets = _teacher_logits(state, train.x)
    _check_fits(state, student, teacher_targets)
    labels = kd.hard_labels(train.y, teacher_targets.shape, where=str(state.recipe.source))
    before = _cost(state)
    teacher_acc = state.eval_accuracy(source_runner(state))

    schedule = kd.Schedule(temperature=config.temperature, alpha=config.alpha, epochs=config.epochs,
                           batch_size=config.batch_size, learning_rate=config.learning_rate, seed=SEED)
    losses = kd.fit(kd.logits_head(student), train.x, teacher_targets, labels, schedule)
    if not np.isfinite(losses[-1]):
        raise StageError(f"distillation diverged (loss {losses[-1]}) after {len(losses)} epoch(s)",
                         hint="lower stages.distill.learning_rate or temperature")
    state.replace_model(student)
    after = model_cost(student)
    metrics: dict[str, Any] = {
        "student": described, "params_before": before[0], "params_after": after.params,
        "flops_before": before[1], "flops_after": after.flops,
        "params_ratio": None if not before[0] else round(after.params / before[0], 4),
        "epochs": config.epochs, "temperature": config.temperature,
        "alpha": config.alpha if labels is not None else 1.0,
        "labels": labels is not None, "final_loss": round(losses[-1], 5),
        "teacher_accuracy": teacher_acc, "student_accuracy": state.eval_accuracy(source_runner(state)),
    }
    if after.uncounted:
        metrics["flops_uncounted"] = after.uncounted
    if labels is None and config.alpha < 1.0:
        state.note("distill: data.train has no labels, so the student learned from the teacher "
                   "alone (alpha taken as 1)")
    return metrics


def narrower_copy(model: Any, width: float) -> Any:
    """Same graph, every Dense/Conv's units/filters times `width` (at least 1), fresh weights.

    The layers that size the model's outputs keep theirs: the student must answer
    with the same number of classes.
    """
    keep = output_layers(model)

    def scaled(layer: Any) -> Replacement:
        if is_model(layer):  # a nested backbone narrows too
            return [(narrower_copy(layer, width), None)]
        config = layer.get_config()
        changes = {} if id(layer) in keep else {
            key: max(1, int(round(config[key] * width))) for key in WIDTH_KEYS
            if isinstance(config.get(key), int)}
        groups = config.get("groups", 1)
        if "filters" in changes and groups > 1:
            changes["filters"] = max(groups, changes["filters"] // groups * groups)
        return [(clone_layer(layer, **changes), None)]

    return rebuild(model, scaled, name=f"{model.name}_student")


def _teacher_graph(state: ModelState) -> Any:
    if state.keras_model is None:
        raise UnsupportedError(
            "distill with student {width: w} copies the teacher's Keras graph, and this model is "
            "available only as a graph (SavedModel without Keras metadata)",
            where=str(state.recipe.model.path),
            hint="give the student as a model file (student: student.keras), or load the teacher "
                 "from its .keras/.h5")
    return state.keras_model


def _teacher_logits(state: ModelState, x: np.ndarray) -> np.ndarray:
    """The teacher's logits on x: pre-softmax for Keras models, log-probabilities otherwise."""
    if state.keras_model is not None:
        return kd.keras_logits(state.keras_model, x)
    return kd.to_logits(source_runner(state)(x)[0])


def _load_student(state: ModelState, path: Path) -> Any:
    # The recipe's own loaders: a student file gets the same checks (Lambda
    # refusal, input size) and the same Keras 3 -> tf_keras bridge as the model.

    if not path.exists():
        raise ModelLoadError("distill student model not found", where=str(path),
                             hint="check stages.distill.student (relative paths resolve against "
                                  "the recipe file's folder), or use {width: 0.5}")
    fmt = detect_format(path, "auto")
    scratch = ModelState(recipe=state.recipe, out_dir=state.out_dir,
                         work_dir=state.work_dir / "student", options=state.options)
    scratch.work_dir.mkdir(parents=True, exist_ok=True)
    if not load.load_keras_format(scratch, path, fmt):
        raise UnsupportedError(f"a distill student must be a Keras model to train; this is {fmt}",
                               where=str(path), hint="give a .keras, .h5 or Keras SavedModel")
    if scratch.keras_model is None:
        raise UnsupportedError("the distill student loaded only as a graph and cannot be trained",
                               where=str(path), hint="give the student as .keras or .h5")
    return scratch.keras_model


def _check_fits(state: ModelState, student: Any, teacher: np.ndarray) -> None:
    want_in = list(state.inputs[0].shape[1:])
    have_in = list(student.inputs[0].shape[1:])
    fits_in = len(want_in) == len(have_in) and all(
        a is None or b is None or a == b for a, b in zip(want_in, have_in, strict=True))
    have_out = list(student.outputs[0].shape[1:])
    if not fits_in or len(student.inputs) != 1 or len(student.outputs) != 1 or \
            have_out != list(teacher.shape[1:]):
        raise UnsupportedError(
            f"the student takes {_shape(have_in)} and gives {_shape(have_out)}, the teacher takes "
            f"{_shape(want_in)} and gives {_shape(list(teacher.shape[1:]))}",
            where=state.recipe.source,
            hint="the student needs the teacher's input and output shapes (one input, one output)")


def _cost(state: ModelState) -> tuple[int | None, int | None]:
    if state.keras_model is not None:
        cost = model_cost(state.keras_model)
        return cost.params, cost.flops
    return (state.source.params if state.source else None), None



def _shape(dims: list[Any]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"

