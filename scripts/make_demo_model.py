"""Build the demo model offline: a small CNN on scikit-learn's bundled digits.

Keras 3, saved as .keras (what users have today). ~85k parameters so that
compression ratios mean something; trains in well under a minute on 2 cores.
Optionally also writes the same network as tf_keras .h5 and as a SavedModel.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def build(width: int = 1, seed: int = 0):
    import keras

    # Seed before the layers exist: initial weights must not depend on what ran earlier.
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((8, 8, 1), name="image"),
        keras.layers.Conv2D(32 * width, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(64 * width, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(64 * width, activation="relu"),
        keras.layers.Dense(10, activation="softmax", name="probs"),
    ], name="digits_cnn")


def train(model, epochs: int = 12, seed: int = 0):
    import keras

    from mobilec.sources.data import digits_split

    keras.utils.set_random_seed(seed)
    train_split, eval_split = digits_split()
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(train_split.x, train_split.y, epochs=epochs, batch_size=32, verbose=0)
    _, acc = model.evaluate(eval_split.x, eval_split.y, verbose=0)
    return acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="models/demo/digits.keras")
    ap.add_argument("--width", type=int, default=1, help="channel multiplier (4 = wide teacher)")
    ap.add_argument("--epochs", type=int, default=12)
    args = ap.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from mobilec.util.fs import atomic_place
    from mobilec.util.tfenv import configure_environment

    configure_environment()
    start = time.time()
    model = build(args.width)
    acc = train(model, epochs=args.epochs)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-{out.name}")
    model.save(tmp)
    atomic_place(tmp, out)
    tmp.unlink()
    print(f"wrote {out}: {model.count_params()} params, eval accuracy {acc:.4f}, "
          f"{time.time() - start:.1f}s")


if __name__ == "__main__":
    main()
