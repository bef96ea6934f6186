"""Benchmark mobilec's `.aimodel` build against the plain three-call Core AI script, and
every Core AI mode side by side (issue 26's measures).

Same model (the PyTorch digits CNN of scripts/torch_digits.py, 85k parameters, trained here
for 3 epochs), same eval set (360 samples). The plain script is what a Core AI user writes:
torch.export -> run_decompositions(coreai_torch.get_decomp_table()) ->
TorchConverter().add_exported_program(ep).to_coreai() -> save_asset(Path). mobilec's side
is its format's build (CoreAIFormat.build: the same calls with a dynamic batch and the
source's I/O names) and, separately, build + verification against eager PyTorch in
coreai-core's Linux runtime (a child process: its imports and the ODIX compile are most of
that extra time). The toolchain is imported before any clock starts; the two builds
alternate for ROUNDS rounds and the medians are compared (measure: <= 1.2x).

Modes: float32, float16, dynamic (int8 weights), int4 and palettize (4-bit k-means LUT):
size (the .aimodel directory), accuracy and latency (one sample, median) from the Linux
runtime (measure: palettize <= 0.16x float32 size, <= 1 pt drop).

    .venv/bin/python scripts/bench_coreai.py
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchlib import header  # noqa: E402 - after the path
from torch_digits import cnn_layers, digits_nchw, train  # noqa: E402

ROUNDS = 3
MODES = ("float32", "float16", "dynamic", "int4", "palettize")


def plain_coreai(model: Any, example: np.ndarray, dest: Path) -> None:
    """The three calls of a Core AI user, nothing else."""
    import coreai_torch
    import torch

    ep = torch.export.export(model, (torch.tensor(example),))
    ep = ep.run_decompositions(coreai_torch.get_decomp_table())
    coreai_torch.TorchConverter().add_exported_program(ep).to_coreai().save_asset(dest)


def mobilec_state(model: Any, data: Any, work: Path) -> Any:
    from mobilec.recipe.schema import Recipe
    from mobilec.sources.data import Dataset, Split
    from mobilec.sources.pytorch import describe_io, export_program
    from mobilec.state import ModelState

    (xt, yt), (xe, ye) = data
    state = ModelState(recipe=Recipe.model_validate({"model": {"path": "model.pt2"}}),
                       out_dir=work / "out", work_dir=work / "work")
    state.torch_module = model
    state.torch_program = export_program(model, (xe[:1],))
    state.inputs, state.outputs = describe_io(state.torch_program)
    state.input_layout = "NCHW"
    state.data = Dataset(Split(xt, yt), Split(xe, ye), Split(xt[:200]))
    return state


def mobilec_build(state: Any, dest: Path, mode: str = "float32") -> Any:
    from mobilec.formats.coreai import CoreAIFormat
    from mobilec.state import Artifact

    art = Artifact(path=dest, format="coreai", quantization=mode)
    CoreAIFormat().build(state, art, dest)
    return art


def size_of(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    header("Core AI (.aimodel): mobilec vs the plain three-call script")
    data = digits_nchw()
    (xt, yt), (xe, ye) = data
    import torch

    torch.manual_seed(0)  # the same initial weights every run
    model = train(cnn_layers(), xt, yt)
    # The toolchain before any clock: neither side pays for its imports.
    import coreai.authoring  # noqa: F401
    import coreai_opt.coreai_utils  # noqa: F401
    import coreai_torch  # noqa: F401

    from mobilec.policy.targets import ArtifactSpec
    from mobilec.stages.convert import build_artifact

    with torch.no_grad():
        ref_acc = float(np.mean(model(torch.tensor(xe)).argmax(-1).numpy() == ye))
    walls: dict[str, list[float]] = {"plain": [], "mobilec": [], "mobilec+verify": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        state = mobilec_state(model, data, work)
        for i in range(ROUNDS):
            order = ["plain", "mobilec"] if i % 2 == 0 else ["mobilec", "plain"]
            for who in order:
                dest = work / f"{who}-{i}.aimodel"
                t0 = time.perf_counter()
                if who == "plain":
                    plain_coreai(model, xe[:1], dest)
                else:
                    mobilec_build(state, dest)
                walls[who].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            art = build_artifact(state, ArtifactSpec("coreai", "float32", None, "coreai", "cpu"))
            walls["mobilec+verify"].append(time.perf_counter() - t0)
            assert art.status == "ok", art.error
        print(f"\ndigits CNN, {sum(p.numel() for p in model.parameters())} params, eager "
              f"float32 accuracy {ref_acc:.4f}; {ROUNDS} rounds, alternating order")
        plain = statistics.median(walls["plain"])
        print(f"{'float32 .aimodel conversion':34} {'median s':>9} {'x plain':>8}")
        for who, values in walls.items():
            med = statistics.median(values)
            print(f"{who:34} {med:>9.2f} {med / plain:>8.2f}")
        print(f"plain and mobilec float32 files: {size_of(work / 'plain-0.aimodel')} B vs "
              f"{size_of(work / 'mobilec-0.aimodel')} B")
        modes_table(state, work, ref_acc)


def modes_table(state: Any, work: Path, ref_acc: float) -> None:
    """Every Core AI mode mobilec builds, run on Linux, against the float32 .aimodel."""
    from mobilec.formats.coreai import CoreAIFormat
    from mobilec.formats.coreai_runtime import run_isolated

    xe, ye = state.eval_x, state.eval_y
    fmt = CoreAIFormat()
    rows = {}
    for mode in MODES:
        dest = work / f"digits-{mode}.aimodel"
        t0 = time.perf_counter()
        art = mobilec_build(state, dest, mode)
        wall = time.perf_counter() - t0
        out = run_isolated(dest, xe)[1][0]
        lat = fmt.latency(state, art, xe)
        rows[mode] = (size_of(dest), float(np.mean(out.argmax(-1) == ye)), lat["median"], wall)
    base_size, base_acc, base_lat, _ = rows["float32"]
    print(f"\n.aimodel modes (eager float32 accuracy {ref_acc:.4f}; coreai-core Linux runtime)")
    print(f"{'mode':10} {'size B':>9} {'x f32':>7} {'accuracy':>9} {'drop pt':>8} "
          f"{'lat med ms':>11} {'build s':>8}")
    for mode, (size, acc, lat, wall) in rows.items():
        print(f"{mode:10} {size:>9} {size / base_size:>7.3f} {acc:>9.4f} "
              f"{100 * (base_acc - acc):>8.2f} {lat:>11.3f} {wall:>8.1f}")


if __name__ == "__main__":
    main()
