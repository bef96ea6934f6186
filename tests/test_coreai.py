"""Core AI (.aimodel): the pinned stack, the format, its routes and its Linux runtime."""

from __future__ import annotations

import subprocess
import sys


def test_the_stack_imports_with_ml_dtypes_0_6() -> None:
    """coreai-core caps ml-dtypes at 0.6.0; TensorFlow, jax (litert-torch), torch, coremltools
    and Core AI must all import and compute with it in one process."""
    code = (
        "import importlib.metadata as md, numpy as np\n"
        "import tensorflow as tf, jax, jax.numpy as jnp, torch, coremltools, ml_dtypes\n"
        "import coreai, coreai_torch\n"
        "assert md.version('ml-dtypes') == '0.6.0', md.version('ml-dtypes')\n"
        "x = tf.cast(tf.constant([1.5, 2.0]), tf.bfloat16).numpy()\n"
        "assert x.dtype == ml_dtypes.bfloat16 and float(x.sum()) == 3.5\n"
        "assert float(jnp.ones(3, jnp.bfloat16).sum()) == 3.0\n"
        "print('ok', float(tf.constant(1.0)))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and "ok 1.0" in done.stdout, done.stderr[-3000:]
