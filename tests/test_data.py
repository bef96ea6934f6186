"""Data sources and fitting data to the model's input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mobilec.errors import DataError
from mobilec.recipe.schema import DataSpec
from mobilec.sources.data import adapt_layout, digits_split, fit_to_input, load_dataset


def test_digits_is_offline_fixed_and_normalised() -> None:
    train, ev = digits_split()
    assert train.x.shape == (1437, 8, 8, 1) and ev.x.shape == (360, 8, 8, 1)
    assert 0.0 <= train.x.min() and train.x.max() <= 1.0
    again, _ = digits_split()
    assert np.array_equal(train.y, again.y)


def test_calibration_falls_back_to_eval_with_a_note(tmp_path: Path) -> None:
    np.savez(tmp_path / "e.npz", x=np.random.rand(50, 4).astype("float32"), y=np.arange(50) % 3)
    ds = load_dataset(DataSpec(source="npz", eval=tmp_path / "e.npz", calibration_samples=20),
                      tmp_path)
    assert ds.train is None and len(ds.calibration) == 20
    assert any("calibration uses eval" in n for n in ds.notes)


def test_npz_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "p.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="pickled"):
        load_dataset(DataSpec(source="npz", eval=tmp_path / "p.npz"), tmp_path)


def test_channel_dim_is_added_when_unambiguous() -> None:
    x = fit_to_input(np.zeros((3, 8, 8)), [None, 8, 8, 1], "d")
    assert x.shape == (3, 8, 8, 1) and x.dtype == np.float32


def test_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(DataError) as exc:
        fit_to_input(np.zeros((3, 28, 28, 1)), [None, 8, 8, 1], "d.npz")
    assert "(28, 28, 1)" in str(exc.value) and "(8, 8, 1)" in str(exc.value)


def test_layout_auto_transposes_only_when_needed() -> None:
    nhwc = np.random.rand(2, 8, 6, 3)
    same, note = adapt_layout(nhwc, [None, 8, 6, 3], "auto", "NHWC")
    assert same is nhwc and note is None
    moved, note = adapt_layout(nhwc, [None, 3, 8, 6], "auto", "NCHW")
    assert moved.shape == (2, 3, 8, 6) and "NHWC -> NCHW" in note
    assert np.array_equal(moved[1, 2], nhwc[1, :, :, 2])


def test_layout_explicit_follows_the_recipe() -> None:
    nchw = np.random.rand(2, 3, 8, 8)
    moved, note = adapt_layout(nchw, [None, 8, 8, 3], "NCHW", "NHWC")
    assert moved.shape == (2, 8, 8, 3) and "data.layout" in note
