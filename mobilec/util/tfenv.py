"""The single place TensorFlow is imported from.

tfmot works only on tf_keras models and needs TF_USE_LEGACY_KERAS=1 *before*
TensorFlow is first imported, so every heavy import goes through here. With the
flag set, `tf.keras` is tf_keras; Keras 3 stays reachable as `import keras`.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def configure_environment() -> None:
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")  # deterministic numerics across runs
    os.environ.setdefault("ABSL_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    # onnx2tf runs `onnxsim` by name: make the interpreter's own bin dir visible.
    bindir = os.path.dirname(sys.executable)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")


def import_tf() -> Any:
    """Import TensorFlow with the legacy-Keras flag set. Refuses if it is too late."""
    configure_environment()
    if "tensorflow" not in sys.modules and os.environ.get("TF_USE_LEGACY_KERAS") != "1":
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf

    _quiet_tf(tf)
    return tf


def import_tf_keras() -> Any:
    import_tf()
    import tf_keras

    return tf_keras


def import_keras3() -> Any:
    import_tf()
    import keras

    return keras


def _quiet_tf(tf: Any) -> None:
    try:
        tf.get_logger().setLevel("ERROR")
        tf.autograph.set_verbosity(0)
    except Exception:  # noqa: BLE001 - logging tweaks must never break a run
        pass
    import logging
    import warnings

    logging.getLogger("absl").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="tensorflow")
    warnings.filterwarnings("ignore", module="keras")
    warnings.filterwarnings("ignore", module="tf_keras")


#: Every seed a run uses, as mobilec.lock.json records them: training (python, numpy and
#: TensorFlow RNGs before fine-tuning, distillation and factorization), the digits split,
#: calibration sampling and the synthetic inputs of a data-less verification.
SEEDS = {"training": 0, "digits_split": 0, "calibration_sampling": 1, "verification_inputs": 0}


def set_seed(seed: int = 0) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    import_tf().random.set_seed(seed)
