"""Weight and array files: what ``write_npz``/``write_weights`` write, ``np.load`` reads."""

from __future__ import annotations

import numpy as np
import pytest

from nex_transforms import KEY_SPACE, WeightsError
from pipelines.weights_io import load_weights, write_npy, write_npz, write_weights


def test_write_npz_round_trips_every_array(tmp_path):
    arrays = {
        "a": np.arange(12.0).reshape(3, 4),
        "fortran": np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3)),
        "big_endian": np.array([1, 2, 3], ">i4"),
        "empty": np.zeros(0, np.uint32),
        "scalar": np.array(7.5),
        "half": np.array([0.5, np.inf], np.float16),
    }
    write_npz(tmp_path / "x.npz", **arrays)
    with np.load(tmp_path / "x.npz", allow_pickle=False) as loaded:
        assert sorted(loaded.files) == sorted(arrays)
        for name, array in arrays.items():
            assert loaded[name].dtype == array.dtype
            assert loaded[name].shape == array.shape
            np.testing.assert_array_equal(loaded[name], array)


def test_write_weights_matches_np_savez(tmp_path):
    rng = np.random.default_rng(0)
    weights = np.zeros(KEY_SPACE, np.float32)
    weights[rng.integers(0, KEY_SPACE, 1000)] = rng.uniform(-1, 1, 1000).astype(np.float32)
    write_weights(tmp_path / "ours.npz", weights.astype(np.float64))  # stored as float32
    np.savez(tmp_path / "numpy.npz", weights=weights)
    ours, theirs = load_weights(tmp_path / "ours.npz"), load_weights(tmp_path / "numpy.npz")
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, theirs)


def test_write_npy_round_trips(tmp_path):
    gmf = np.array([0.25, np.nan, 1.0])
    write_npy(tmp_path / "s.npy", gmf)
    np.testing.assert_array_equal(np.load(tmp_path / "s.npy"), gmf)


def test_load_weights_names_a_wrong_length(tmp_path):
    write_weights(tmp_path / "short.npz", np.zeros(10, np.float32))
    with pytest.raises(WeightsError, match="short.npz"):
        load_weights(tmp_path / "short.npz")
