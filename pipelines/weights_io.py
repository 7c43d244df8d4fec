"""Neuron weight files: ``.npz`` with key ``weights`` (float32, 2^22), or ``.npy``."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from numpy.lib import format as npformat

from nex_transforms import WeightsError, check_weights
from nex_transforms.errors import expected


def load_weights(path: str | Path) -> np.ndarray:
    """Load a dense weight vector from an ``.npz`` (key ``weights``) or ``.npy`` file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(expected("weights file", "an existing .npz or .npy file", str(path)))
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise WeightsError(expected(f"weights file {path}", "a NumPy .npz or .npy file",
                                    f"unreadable ({err})")) from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            if "weights" not in loaded.files:
                raise WeightsError(expected(f"weights file {path}", "an array named 'weights'",
                                            f"arrays {loaded.files}"))
            weights = loaded["weights"]
    else:
        weights = loaded
    try:
        return check_weights(weights)
    except WeightsError as err:
        raise WeightsError(f"{path}: {err}") from None


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write an uncompressed ``.npz`` (what ``np.savez`` writes, ``np.load`` reads).

    Each array's bytes go straight from its buffer into the archive: ``np.savez`` copies
    every array once more first (15 ms for a 16 MB weight vector).
    """
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            array = np.asarray(array)
            if not array.flags.c_contiguous:
                array = array.copy(order="C")
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                npformat.write_array_header_1_0(member,
                                                npformat.header_data_from_array_1_0(array))
                member.write(memoryview(array.reshape(-1)).cast("B"))


def write_weights(path: Path, weights: np.ndarray) -> None:
    """Write a dense weight vector as ``.npz`` with key ``weights`` (float32)."""
    write_npz(path, weights=np.asarray(weights).astype(np.float32, copy=False))


def write_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.save(handle, array)
