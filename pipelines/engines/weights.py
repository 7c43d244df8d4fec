"""Neuron weights of a scoring run: sparse per calibration key, dense once per process.

:class:`SparseWeights` (the non-zero weights of one calibration key) is what moves between
workers and lands in the neurons table; :func:`dense_weights` expands it to the 2^22 key
space once per process (a small process-global cache keyed by a digest of the weights),
which is what :func:`~nex_transforms.good_mass_fraction` needs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from nex_transforms import NexParams
from nex_transforms.params import KEY_SPACE


@dataclass(frozen=True)
class SparseWeights:
    """Non-zero neuron weights of one calibration key (keys ascending)."""

    keys: np.ndarray
    values: np.ndarray

    @classmethod
    def from_dense(cls, weights: np.ndarray) -> "SparseWeights":
        keys = np.flatnonzero(weights).astype(np.uint32)
        return cls(keys, weights[keys].astype(np.float32))

    def dense(self) -> np.ndarray:
        """The dense float32 vector over the 2^22 key space (a fresh array)."""
        weights = np.zeros(KEY_SPACE, np.float32)
        weights[self.keys] = self.values
        return weights

    def token(self) -> str:
        """A digest of the keys and values (equal weights give equal tokens)."""
        digest = hashlib.blake2b(digest_size=16)
        digest.update(np.ascontiguousarray(self.keys, np.uint32).tobytes())
        digest.update(np.ascontiguousarray(self.values, np.float32).tobytes())
        return digest.hexdigest()

    @property
    def n_nonzero(self) -> int:
        return int(np.count_nonzero(self.values))

    @property
    def n_positive(self) -> int:
        return int((self.values > 0).sum())

    @property
    def n_negative(self) -> int:
        return int((self.values < 0).sum())


#: Dense weight vectors built in this process, by :meth:`SparseWeights.token` (a few
#: models' worth: 16 MiB each).
_DENSE_CACHE: dict[str, np.ndarray] = {}
_DENSE_CACHE_SIZE = 8


def dense_weights(weights: SparseWeights) -> np.ndarray:
    """The dense vector of ``weights``, built once per process (treat as read-only)."""
    token = weights.token()
    dense = _DENSE_CACHE.pop(token, None)
    if dense is None:
        dense = weights.dense()
    _DENSE_CACHE[token] = dense  # most recent last
    while len(_DENSE_CACHE) > _DENSE_CACHE_SIZE:
        _DENSE_CACHE.pop(next(iter(_DENSE_CACHE)))
    return dense


def finalize_weights(credit: dict, params: NexParams) -> dict:
    """Calibration key -> :class:`SparseWeights` learned from merged credit."""
    out = {}
    for key, acc in sorted(credit.items()):
        values = acc.sparse_weights(params.eps).astype(np.float32)
        out[key] = SparseWeights(acc.keys.astype(np.uint32), values)
    return out


def weights_for_keys(credit: dict, params: NexParams, keys: list[str]) -> dict:
    """Weights learned from merged credit, with all-zero weights for any key in ``keys``
    that has no credit."""
    weights = finalize_weights(credit, params)
    for key in set(keys) - set(weights):
        weights[key] = SparseWeights(np.zeros(0, np.uint32), np.zeros(0, np.float32))
    return dict(sorted(weights.items()))


__all__ = ["SparseWeights", "dense_weights", "finalize_weights", "weights_for_keys"]
