"""Grouped reductions over concatenated segments, without Python loops."""

from __future__ import annotations

import numpy as np


def grouped_median(values: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Median of ``values`` per group id (``numpy.median`` semantics; NaN for empty groups).

    Entries whose group is negative are ignored; values are expected finite. When the
    remaining group ids are non-decreasing (every use in this package: groups are runs of
    consecutive rows) the medians come from one row-wise sort of padded blocks; otherwise
    from a lexicographic sort.
    """
    use = groups >= 0
    vals = values[use].astype(np.float64, copy=False)
    grp = groups[use]
    if grp.size > 1 and np.any(grp[1:] < grp[:-1]):
        order = np.lexsort((vals, grp))
        vals, grp = vals[order], grp[order]
    counts = np.bincount(grp, minlength=n_groups) if grp.size else np.zeros(n_groups, np.int64)
    return segment_median(vals, np.concatenate([[0], np.cumsum(counts)]))


def segment_median(values: np.ndarray, ptr: np.ndarray) -> np.ndarray:
    """Median of each segment ``values[ptr[i]:ptr[i+1]]`` (NaN for empty segments).

    Segments are sorted as rows of padded blocks, one block per power-of-two width, so
    padding at most doubles the work whatever the spread of lengths.
    """
    counts = np.diff(ptr)
    out = np.full(counts.size, np.nan)
    nonempty = np.flatnonzero(counts > 0)
    if nonempty.size == 0:
        return out
    widths = 1 << np.ceil(np.log2(counts[nonempty])).astype(np.int64)
    for width in np.unique(widths):
        segs = nonempty[widths == width]
        lengths = counts[segs]
        block = np.full((segs.size, int(width)), np.inf)
        rows = np.repeat(np.arange(segs.size), lengths)
        cols = positions_in_segment(np.concatenate([[0], np.cumsum(lengths)]))
        block[rows, cols] = values[ranges(ptr[segs], ptr[segs + 1])]
        block.sort(axis=1)
        pick = np.arange(segs.size)
        out[segs] = (block[pick, (lengths - 1) // 2] + block[pick, lengths // 2]) / 2.0
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


def segment_sums(values: np.ndarray, ptr: np.ndarray) -> np.ndarray:
    """Sum of ``values[ptr[i]:ptr[i+1]]`` for every segment (0 for empty ones)."""
    counts = np.diff(ptr)
    out = np.zeros(counts.size)
    nonempty = counts > 0
    if values.size and nonempty.any():
        out[nonempty] = np.add.reduceat(values, ptr[:-1][nonempty])
    return out


def kept_pointer(ptr: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The CSR pointer over ``ptr``'s segments after dropping the entries where ``keep`` is False."""
    owner = segment_ids(ptr)
    counts = np.bincount(owner[keep], minlength=ptr.size - 1)
    return np.concatenate([[0], np.cumsum(counts)])


#: Entries per step of the chunked per-entry passes: their temporaries stay small enough
#: to be reused from the CPU cache instead of being fresh memory (page faults) each time.
CHUNK_ENTRIES = 1 << 16


def chunks(ptr: np.ndarray, chunk_entries: int | None = None) -> list:
    """Consecutive ``(first, stop)`` segment ranges of about ``chunk_entries`` elements.

    ``ptr`` is a CSR pointer; chunks follow segment boundaries (a segment longer than
    ``chunk_entries`` is a chunk of its own) and cover every segment in order.
    ``chunk_entries`` defaults to :data:`CHUNK_ENTRIES`.
    """
    chunk_entries = CHUNK_ENTRIES if chunk_entries is None else chunk_entries
    out, start, n_segments = [], 0, ptr.size - 1
    while start < n_segments:
        stop = int(np.searchsorted(ptr, ptr[start] + chunk_entries, side="right")) - 1
        stop = min(max(stop, start + 1), n_segments)
        out.append((start, stop))
        start = stop
    return out
