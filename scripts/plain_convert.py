"""The baseline that bench_overhead.py and bench_memory.py compare mobilec with: the script a
user would write by hand to get float32 and int8 .tflite files from a Keras model with the
TFLite converter (same model, same 200 digits calibration samples, no verification, no report).

    .venv/bin/python scripts/plain_convert.py MODEL.keras OUT_DIR [--calibration DATA.npz]

Without --calibration the samples are scikit-learn's digits (the demo model's data).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> None:
    import keras
    import numpy as np
    import tensorflow as tf
    from sklearn.datasets import load_digits

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("model")
    ap.add_argument("out", type=Path)
    ap.add_argument("--calibration", help="npz with an array x")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model = keras.saving.load_model(args.model, compile=False)

    if args.calibration:
        with np.load(args.calibration) as data:
            x = data["x"].astype("float32")
    else:
        x = (load_digits().images.astype("float32") / 16.0)[..., None]
    calibration = x[np.random.default_rng(1).permutation(len(x))[:200]]

    def representative_dataset():
        for i in range(len(calibration)):
            yield [calibration[i:i + 1]]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    (args.out / "model-float32.tflite").write_bytes(converter.convert())

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    (args.out / "model-int8.tflite").write_bytes(converter.convert())


if __name__ == "__main__":
    main()
