"""Grouped reductions over concatenated segments, without Python loops."""

from __future__ import annotations

import numpy as np


def grouped_median(values: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Median of ``values`` per group id (``numpy.median`` semantics; NaN for empty groups).

    Entries whose group is negative are ignored. NaN values are not expected.
    """
    out = np.full(n_groups, np.nan)
    use = groups >= 0
    if not use.any():
        return out
    vals = values[use].astype(np.float64, copy=False)
    grp = groups[use]
    order = np.lexsort((vals, grp))
    sorted_vals = vals[order]
    counts = np.bincount(grp, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    present = counts > 0
    lo = starts[present] + (counts[present] - 1) // 2
    hi = starts[present] + counts[present] // 2
    out[present] = (sorted_vals[lo] + sorted_vals[hi]) / 2.0
    return out


def segment_ids(ptr: np.ndarray) -> np.ndarray:
    """Segment index of every element of a CSR pointer's range."""
    return np.repeat(np.arange(ptr.size - 1), np.diff(ptr))


def positions_in_segment(ptr: np.ndarray) -> np.ndarray:
    """0-based position of each element inside its segment."""
    lengths = np.diff(ptr)
    return np.arange(int(ptr[-1])) - np.repeat(ptr[:-1], lengths)


def run_starts(labels: np.ndarray, ptr: np.ndarray) -> np.ndarray:
    """Boolean mask of the first element of each run of equal labels within a segment."""
    start = np.ones(labels.size, dtype=bool)
    if labels.size:
        start[1:] = labels[1:] != labels[:-1]
        seg_starts = ptr[:-1][np.diff(ptr) > 0]
        start[seg_starts] = True
    return start


def ranges(starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(starts[i], stops[i])`` without a Python loop."""
    lengths = (np.asarray(stops) - np.asarray(starts)).astype(np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, np.int64)
    offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return np.arange(total, dtype=np.int64) + offsets
