"""Core ML policy: which minimum deployment target a kind x quantization needs.

Pure data and rules (no coremltools): the plan check runs it before anything slow.
"""

from __future__ import annotations

from mobilec.errors import UnsupportedError
from mobilec.recipe.schema import CoreMLConfig

#: modes that compress weights (constexpr ops in an mlprogram: iOS16+)
COMPRESSED = ("dynamic", "int8", "qat", "palettize", "int4")

def _ios(name: str) -> int:
    return int(name[3:])


def deployment_target(cfg: CoreMLConfig, mode: str) -> str | None:
    """The minimum deployment target a Core ML artifact of `mode` gets (None: coremltools picks).

    An explicit recipe value that the kind or mode cannot honour is a usage error; the
    default (iOS16) is raised for modes that need newer Core ML ops (int4: iOS18).
    """
    explicit = "minimum_deployment_target" in cfg.model_fields_set
    want = cfg.minimum_deployment_target
    if cfg.kind == "mlmodel":
        if explicit and _ios(want) > 14:
            raise UnsupportedError(
                f"convert.coreml.kind mlmodel (neuralnetwork) targets iOS13-iOS14; "
                f"minimum_deployment_target {want} needs kind mlpackage (mlprogram)",
                hint="drop minimum_deployment_target or use kind: mlpackage")
        return want if explicit else None
    need = 18 if mode == "int4" else 16 if mode in COMPRESSED else 15
    if _ios(want) < need:
        if explicit:
            what = "an mlprogram (.mlpackage)" if need == 15 else f"Core ML {mode} weights"
            raise UnsupportedError(
                f"{what} need{'s' if need == 15 else ''} minimum_deployment_target iOS{need} or "
                f"later (recipe: {want})",
                hint=f"set convert.coreml.minimum_deployment_target: iOS{need}, or use "
                     "kind: mlmodel for older devices")
        want = f"iOS{need}"
    return want
