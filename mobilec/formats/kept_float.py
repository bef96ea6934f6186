"""keep_float as a format reads it: the layers and graph nodes the plan keeps in float.

The quantize stage decides (mobilec.diagnose.keep_float) and records both the layer
names and, per format, the node names each converter takes (TFLite's
`denylisted_nodes`, onnxruntime's `nodes_to_exclude`). A format only reads them.
"""

from __future__ import annotations

from typing import Any

from mobilec.policy.modes import INT8_MODES
from mobilec.state import Artifact, ModelState

#: A route variant: int8 with the ops that produce the model's outputs left in float.
FLOAT_OUTPUTS = "+float-outputs"
LAYERS_KEY = "kept_float"  # plan.options: {format: layer names kept in float}
NODES_KEY = "kept_float_nodes"  # plan.options: {format: converter node names}


def kept_layers(state: ModelState, fmt: str, mode: str) -> list[str] | None:
    """The layers the plan keeps in float in a `fmt` build in `mode` (None: no keep_float)."""
    plan = state.plan
    if plan is None or mode not in INT8_MODES or LAYERS_KEY not in plan.options:
        return None
    return list(plan.options[LAYERS_KEY].get(fmt, []))


def kept_nodes(state: ModelState, fmt: str, mode: str) -> list[str]:
    """The converter node names to leave in float for a `fmt` build in `mode`."""
    if not kept_layers(state, fmt, mode):
        return []
    return list(state.plan.options.get(NODES_KEY, {}).get(fmt, []))


def note_kept_float(state: ModelState, artifact: Artifact) -> None:
    """Surface the decision on the artifact's report row (`kept_float`)."""
    layers = kept_layers(state, artifact.format, artifact.quantization)
    if layers is None:
        return
    artifact.kept_float = layers
    if layers:
        artifact.precision = (f"{artifact.precision or artifact.quantization}; "
                              f"float32: {', '.join(layers)}")


def split_route(route: str | None) -> tuple[str | None, bool]:
    """(base route, whether the outputs stay float) of a route name."""
    if route and route.endswith(FLOAT_OUTPUTS):
        return route[: -len(FLOAT_OUTPUTS)], True
    return route, False


def route_builders(build: Any, state: ModelState, artifact: Artifact, names: list[str],
                   float_base: str | None = None) -> list[tuple[str, Any]]:
    """(name, build) for each route name, plus, for full-integer int8, a last resort that
    keeps the output ops in float: an output mixing ranges (boxes in pixels and scores)
    is then not forced onto one scale. `float_base`: the route that retry starts from
    (default: the first), for a format whose first route cannot keep ops in float."""
    if artifact.quantization in INT8_MODES and names:
        names = [*names, f"{float_base or names[0]}{FLOAT_OUTPUTS}"]

    def along(route: str) -> Any:
        return lambda art, dest: build(state, art, dest, route)

    return [(name, along(name)) for name in names]
