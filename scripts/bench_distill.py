"""Distillation vs hard labels for the same student, epochs, seed and batches.

Teacher: the demo CNN at 4x width (make_demo_model.build(width=4), 1.35M params).
Student: the distill stage's {width: 0.25} copy (85k params). For each training-set
size and seed the student is trained twice through the real distill stage, once
with alpha (soft + hard loss) and once with alpha 0 (hard labels only), and both
are measured on the 360-image digits eval split.

    .venv/bin/python scripts/bench_distill.py [--teacher wide.keras] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--teacher", type=Path, help="a trained wide teacher (.keras); default: train one")
    ap.add_argument("--teacher-epochs", type=int, default=6)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--sizes", type=int, nargs="+", default=[400, 1437],
                    help="training samples (a prefix of the digits train split; 1437 = all)")
    ap.add_argument("--epochs", type=int, nargs="+", default=[15, 6],
                    help="student epochs, one per size")
    ap.add_argument("--alpha", type=float, default=0.9)
    ap.add_argument("--temperature", type=float, default=4.0)
    ap.add_argument("--learning-rate", type=float, default=2e-3)
    args = ap.parse_args()

    from mobilec.util.tfenv import configure_environment

    configure_environment()
    import numpy as np
    import yaml

    from mobilec.recipe.loader import load_recipe
    from mobilec.recipe.schema import DistillConfig
    from mobilec.sources.data import digits_split
    from mobilec.stages import distill, get_stage
    from mobilec.state import ModelState

    work = Path(tempfile.mkdtemp(prefix="bench-distill-"))
    teacher = args.teacher
    if teacher is None:
        import make_demo_model

        start = time.perf_counter()
        model = make_demo_model.build(width=4)
        acc = make_demo_model.train(model, epochs=args.teacher_epochs)
        teacher = work / "wide.keras"
        model.save(teacher)
        print(f"teacher: {model.count_params()} params, eval accuracy {acc:.4f}, "
              f"trained {args.teacher_epochs} epochs in {time.perf_counter() - start:.1f}s")

    train, ev = digits_split()
    np.savez(work / "eval.npz", x=ev.x, y=ev.y)
    print(f"| train samples | epochs | seed | distilled (alpha {args.alpha:g}) | hard labels | "
          "difference (images of 360) |")
    print("|---|---|---|---|---|---|")
    for size, epochs in zip(args.sizes, args.epochs, strict=True):
        np.savez(work / f"train{size}.npz", x=train.x[:size], y=train.y[:size])
        data = {"source": "npz", "train": str(work / f"train{size}.npz"),
                "eval": str(work / "eval.npz"), "eval_samples": 360}
        for seed in args.seeds:
            distill.SEED = seed  # the stage's fixed seed: initial weights and batch order
            accs = []
            for alpha in (args.alpha, 0.0):
                run_dir = work / f"{size}-{seed}-{alpha}"
                run_dir.mkdir()
                recipe = run_dir / "r.yaml"
                recipe.write_text(yaml.safe_dump({"version": 1, "model": {"path": str(teacher)},
                                                  "data": data}))
                state = ModelState(recipe=load_recipe(recipe), out_dir=run_dir / "out",
                                   work_dir=run_dir)
                get_stage("load")(state, None)
                m = get_stage("distill")(state, DistillConfig(
                    student={"width": 0.25}, epochs=epochs, alpha=alpha,
                    temperature=args.temperature, learning_rate=args.learning_rate))
                accs.append(m["student_accuracy"])
            diff = round((accs[0] - accs[1]) * 360)
            print(f"| {size} | {epochs} | {seed} | {accs[0]:.4f} | {accs[1]:.4f} | {diff:+d} |",
                  flush=True)


if __name__ == "__main__":
    main()
