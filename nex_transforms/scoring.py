"""Good-Mass Fraction, NEX and the log-gap (METHOD.md section 5)."""

from __future__ import annotations

import numpy as np

from .corpus import Aggregates, sanitise_masses
from .segments import chunks, kept_pointer, segment_sums
from .errors import WeightsError, expected
from .params import KEY_SPACE


def check_weights(weights) -> np.ndarray:
    """Validate a dense weight vector: 2^22 finite values in [-1, 1]."""
    weights = np.asarray(weights)
    if weights.shape != (KEY_SPACE,):
        raise WeightsError(expected("weights", f"a vector of length 2^22 = {KEY_SPACE}",
                                    f"shape {weights.shape}"))
    if not np.issubdtype(weights.dtype, np.floating):
        raise WeightsError(expected("weights", "a float array", weights.dtype))
    # one pass each, no temporaries; NaN fails both comparisons
    if not (weights.min() >= -1.0 and weights.max() <= 1.0):
        raise WeightsError(expected("weights", "finite values in [-1, 1]",
                                    "non-finite or out-of-range values"))
    return weights


def good_mass_fraction(aggregates: Aggregates, weights: np.ndarray) -> np.ndarray:
    """GMF of every trace: ``sum(m * max(w, 0)) / sum(m * |w|)`` over its aggregate.

    0 when the denominator is 0; NaN for a trace with no keys (after dropping layer-255
    keys). Traces are summed in chunks of about :data:`~.segments.CHUNK_ENTRIES` entries
    (each trace whole), so no temporary grows with the corpus.
    """
    weights = check_weights(weights)
    row_ptr = aggregates.row_ptr
    n_traces = row_ptr.size - 1
    good, total = np.zeros(n_traces), np.zeros(n_traces)
    n_keys = np.diff(row_ptr)
    for first, stop in chunks(row_ptr):
        a, b = int(row_ptr[first]), int(row_ptr[stop])
        keys = aggregates.keys[a:b]
        keep, masses = sanitise_masses(keys, aggregates.masses[a:b])
        ptr = row_ptr[first:stop + 1] - a
        if keep is not None:
            masses, keys = masses[keep], keys[keep]
            ptr = kept_pointer(ptr, keep)
            n_keys[first:stop] = np.diff(ptr)
        w = np.take(weights, keys, mode="clip")
        good[first:stop] = segment_sums(masses * np.maximum(w, 0.0), ptr)
        total[first:stop] = segment_sums(masses * np.abs(w), ptr)
    with np.errstate(divide="ignore", invalid="ignore"):
        gmf = np.where(total > 0, good / total, 0.0)
    gmf[n_keys == 0] = np.nan
    return gmf


def nex_score(gmf: np.ndarray) -> float:
    """NEX of a model: the mean GMF over its responses, NaN ignored (NaN if none)."""
    gmf = np.asarray(gmf, dtype=np.float64)
    finite = gmf[np.isfinite(gmf)]
    return float(finite.mean()) if finite.size else float("nan")


def log_gap(nex: float) -> float:
    """Readable form of NEX: ``-log10(max(1 - clip(nex, 0, 1), 1e-12))``."""
    if not np.isfinite(nex):
        return float("nan")
    return float(-np.log10(max(1.0 - min(max(nex, 0.0), 1.0), 1e-12))) + 0.0  # no -0.0
