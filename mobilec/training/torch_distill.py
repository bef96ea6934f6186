"""distill on a PyTorch source: a smaller student learns the teacher's logits (KD).

`{width: w}` is the teacher's own topology with every prunable Conv/Linear group cut to
w of its channels by torch-pruning's dependency graph (training/channels_torch.py: the
layers that size the outputs keep theirs; BatchNorm, residual adds, depthwise convs and
the next layer's inputs follow), then re-initialized (seed 0), as the Keras student starts
fresh. A `.pt2` teacher's graph is narrowed the same way once its linear/conv/batch-norm
ops are lifted into modules (training/torch_graph.py): torch-pruning finds no layer in a
bare `ep.module()`, whose weights are get_attr inputs of plain ops. `student:` names a
`.pt2` (loaded with the same checks as a model) or a factory `file.py:build` /
`pkg.mod:build` (user code: only with --trust-code). The loss is alpha * T^2 *
KL(teacher/T || student/T) + (1 - alpha) * cross-entropy on the labels, as for Keras
(training/kd.py); non-classifier outputs learn the teacher's by squared error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mobilec.errors import ModelLoadError, UnsupportedError
from mobilec.formats.runtime import source_runner
from mobilec.recipe.schema import DistillConfig, StudentWidth
from mobilec.sources.batch import as_list
from mobilec.sources.pytorch import load_factory, load_pt2, to_tensor
from mobilec.state import ModelState
from mobilec.training import kd
from mobilec.training.channels_torch import prune_channels
from mobilec.training.torch_fit import SEED, Targets, first_output, fit
from mobilec.training.torch_graph import lift_layers, set_mode
from mobilec.training.torch_model import commit, cost, require_free_batch


def run(state: ModelState, config: DistillConfig) -> dict[str, Any]:
    import torch

    teacher = state.torch_module
    example = tuple(to_tensor(a) for a in as_list(state.sample_inputs(2)))
    torch.manual_seed(SEED)
    if isinstance(config.student, StudentWidth):
        require_free_batch(state, "distill with student {width}")  # it runs the teacher's graph
        student = narrower_copy(teacher, config.student.width, example)
        described = f"width {config.student.width:g}"
    else:
        student = load_student(state, str(config.student))
        described = str(config.student)
    train = state.data.train
    teacher_out = kd.to_logits(source_runner(state)(train.x)[0])
    labels = kd.hard_labels(train.y, teacher_out.shape, where=str(state.recipe.source))
    _check_fits(state, student, example, teacher_out)
    teacher_acc = state.eval_accuracy(source_runner(state))
    before = cost(lift_layers(teacher), example)  # a .pt2's MACs are counted on its layers
    for p in student.parameters():
        p.requires_grad_(True)
    set_mode(student, train=True)
    arrays = [teacher_out] + ([labels.astype("int64")] if labels is not None else [])
    targets = Targets(arrays, kd_loss(config.temperature, config.alpha,
                                      classifier=teacher_out.ndim == 2),
                      f"knowledge distillation (T={config.temperature:g})")
    trained = fit(state, student, epochs=config.epochs, batch_size=config.batch_size,
                  learning_rate=config.learning_rate, what="distill", targets=targets)
    commit(state, student)
    after = cost(student, example)
    metrics: dict[str, Any] = {
        "student": described, "params_before": before[0], "params_after": after[0],
        "flops_before": before[1], "flops_after": after[1],
        "params_ratio": round(after[0] / before[0], 4) if before[0] else None,
        "epochs": config.epochs, "temperature": config.temperature,
        "alpha": config.alpha if labels is not None else 1.0, "labels": labels is not None,
        "final_loss": trained["final_loss"], "framework": "pytorch",
        "teacher_accuracy": teacher_acc, "student_accuracy": state.eval_accuracy(source_runner(state))}
    if labels is None and config.alpha < 1.0:
        state.note("distill: data.train has no labels, so the student learned from the teacher "
                   "alone (alpha taken as 1)")
    return metrics


def narrower_copy(teacher: Any, width: float, example: tuple[Any, ...]) -> Any:
    """The teacher's topology at `width` of its channels, fresh weights (seed 0)."""
    import copy

    import torch

    # a .pt2 teacher's ep.module(): its linear/conv/batch-norm ops lifted into modules first
    lifted = lift_layers(teacher)
    student = set_mode(copy.deepcopy(teacher) if lifted is teacher else lifted, train=False)
    if width < 1.0:
        prune_channels(student, example, ratio=1.0 - width)
    torch.manual_seed(SEED)
    for m in student.modules():
        if hasattr(m, "reset_parameters") and m is not student:
            m.reset_parameters()
        if hasattr(m, "reset_running_stats"):
            m.reset_running_stats()
    return student


def load_student(state: ModelState, spec: str) -> Any:
    """A student `.pt2` (checked like a model) or a factory (user code: --trust-code)."""
    base = Path(state.recipe.source).resolve().parent if state.recipe.source != "<recipe>" \
        else Path.cwd()
    path = Path(spec) if Path(spec).is_absolute() else base / spec
    if path.is_file():
        if path.suffix != ".pt2":
            raise UnsupportedError(f"a PyTorch teacher's student is a .pt2 or a factory; this "
                                   f"is {path.suffix or 'a file without suffix'}", where=str(path),
                                   hint="student: student.pt2, or student: net.py:build")
        return load_pt2(path).module()
    if ":" not in spec:
        raise ModelLoadError("distill student model not found", where=spec,
                             hint="check stages.distill.student (relative paths resolve against "
                                  "the recipe file's folder), or use {width: 0.5}")
    module, _ = load_factory(spec, bool(state.options.get("trust_code")), base)
    return module


def kd_loss(temperature: float, alpha: float, classifier: bool) -> Any:
    import torch.nn.functional as F

    t = float(temperature)

    def loss(student: Any, teacher: Any, labels: Any = None) -> Any:
        if not classifier:
            return F.mse_loss(student, teacher)
        soft = F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1),
                        log_target=True, reduction="batchmean") * t * t
        return soft if labels is None else alpha * soft + (1 - alpha) * F.cross_entropy(
            student, labels)

    return loss


def _check_fits(state: ModelState, student: Any, example: tuple[Any, ...],
                teacher: np.ndarray) -> None:
    import torch

    try:
        with torch.no_grad():
            shape = tuple(first_output(set_mode(student, train=False)(*example)).shape[1:])
    except Exception as exc:  # noqa: BLE001 - a student that cannot take the input
        raise UnsupportedError(f"the student cannot take the teacher's input: {exc}"[:400],
                               where=state.recipe.source,
                               hint="the student needs the teacher's input and output shapes"
                               ) from None
    if shape != tuple(teacher.shape[1:]):
        raise UnsupportedError(f"the student gives {shape}, the teacher gives "
                               f"{tuple(teacher.shape[1:])}", where=state.recipe.source,
                               hint="the student needs the teacher's output shape")
