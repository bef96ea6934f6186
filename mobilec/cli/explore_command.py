"""`mobilec explore RECIPE`: the size-accuracy-latency frontier of the recipe's compression space."""

from __future__ import annotations

import json
import sys

import click

from mobilec.cli.app import (
    Ctx,
    common_flags,
    handle_errors,
    main,
    set_option,
    trust_option,
    unsafe_option,
)
from mobilec.util.nativeio import stdout_to_stderr


@main.command(name="explore")
@click.argument("recipe", type=click.Path(dir_okay=False))
@set_option
@click.option("--out", type=click.Path(file_okay=False),
              help="Output directory (default: <output.dir>/explore).")
@click.option("--max-candidates", type=int, help="Override explore.max_candidates.")
@click.option("--max-minutes", type=float, help="Override explore.max_minutes.")
@unsafe_option
@trust_option
@common_flags
@click.pass_obj
@handle_errors
def explore_command(obj: Ctx, recipe: str, overrides: tuple[str, ...], out: str | None,
                    max_candidates: int | None, max_minutes: float | None,
                    unsafe_deserialization: bool, trust_code: bool) -> None:
    """Search RECIPE's compression space (prune sparsity x factorize x quantize mode x format)
    for the smallest artifact within budget.max_accuracy_drop.

    Every candidate is built and measured with the normal pipeline; shared steps (a pruned
    model) are built once and cached by content, so a second run is fast. Writes
    explore.json, explore.html (Pareto frontiers) and explore-best.yaml (the best
    candidate's recipe, for `mobilec compress`). Exit 1 when no candidate keeps the budget.
    """
    from mobilec.explore.run import explore
    from mobilec.util.progress import Progress

    sets = list(overrides)
    if max_candidates is not None:
        sets.append(f"explore.max_candidates={max_candidates}")
    if max_minutes is not None:
        sets.append(f"explore.max_minutes={max_minutes}")
    progress = Progress(quiet=obj.quiet or obj.json)
    try:
        with stdout_to_stderr(obj.json):
            doc = explore(recipe, overrides=sets, out=out, progress=progress,
                          unsafe_deserialization=unsafe_deserialization, trust_code=trust_code,
                          verbose=obj.verbose)
    finally:
        progress.close()
    if obj.json:
        click.echo(json.dumps(doc, indent=2))
    elif not obj.quiet:
        click.echo(f"wrote {doc['path']}, explore.html" + (", explore-best.yaml" if doc["best"]
                                                           else ""))
    else:  # -q: the outcome in one line, never nothing
        click.echo(f"explore: best {doc['best']} (exit 0); wrote {doc['path']}" if doc["best"]
                   else f"explore: no candidate within the budget (exit 1); wrote {doc['path']}")
    sys.exit(0 if doc["best"] else 1)
