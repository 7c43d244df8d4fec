"""Neuron weight files: ``.npz`` with key ``weights`` (float32, 2^22), or ``.npy``."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

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


def weights_bytes(weights: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, weights=weights.astype(np.float32))
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()
