"""Novelty: keys a row shows for the first time in its response (METHOD.md section 2)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .corpus import KeptRows
from .params import KEY_SPACE

#: Cells of the (trace, key) first-entry table filled at once (int32: 1 MiB fits in cache).
TABLE_CELLS = 1 << 18
#: Groups of traces per call are raised past the cache-sized table when there are many
#: short traces (so the loop stays short), up to this many cells (64 MiB).
MAX_TABLE_CELLS = 1 << 24
MAX_GROUPS = 64


@dataclass(frozen=True)
class Novelty:
    """Per-row and per-entry novelty of a set of kept rows.

    Attributes:
        new_counts: ``|N_r|`` per kept row (distinct keys first seen in that row).
        slopes: novelty slope ``s_r = |N_r| / tokens(r)`` per kept row.
        first_row: per entry, the kept-row index (int32) where its key first appeared in
            the trace.
        is_new: per entry, whether this entry is in its key's first row (``key in N_r``).
        entry_row: per entry, its kept-row index (int32).
    """

    new_counts: np.ndarray
    slopes: np.ndarray
    first_row: np.ndarray
    is_new: np.ndarray
    entry_row: np.ndarray


@dataclass(frozen=True)
class KeyIndex:
    """A dense renumbering of a set of neuron keys.

    Attributes:
        values: the distinct keys, ascending (uint32).
        lookup: int32 over the 2^22 key space; ``lookup[values[i]] == i`` (other cells
            are undefined).
    """

    values: np.ndarray
    lookup: np.ndarray

    @classmethod
    def build(cls, keys: np.ndarray) -> "KeyIndex":
        """Index of the distinct keys in ``keys`` (all below 2^22)."""
        present = np.zeros(KEY_SPACE, dtype=bool)
        present[keys] = True
        values = np.flatnonzero(present)
        lookup = np.empty(KEY_SPACE, np.int32)
        lookup[values] = np.arange(values.size, dtype=np.int32)
        return cls(values.astype(np.uint32), lookup)

    @property
    def size(self) -> int:
        return int(self.values.size)

    def ids(self, keys: np.ndarray) -> np.ndarray:
        """Dense ids of keys that are in the index."""
        return np.take(self.lookup, keys, mode="clip")


def _first_rows_per_trace(keys: np.ndarray, entry_row: np.ndarray, bounds: np.ndarray,
                          out: np.ndarray) -> None:
    """:func:`first_rows` for long traces: one scatter and one gather per trace.

    The table is indexed by the raw key (2^22 int32 cells, of which only the pages holding
    the trace's keys are ever touched) and needs no reset: every cell read for a trace was
    written for that trace just before.
    """
    table = np.empty(KEY_SPACE, np.int32)
    for t in np.flatnonzero(bounds[1:] > bounds[:-1]):
        a, b = int(bounds[t]), int(bounds[t + 1])
        k = keys[a:b].astype(np.intp)  # an intp index scatters faster than a uint32 one
        table[k[::-1]] = entry_row[a:b][::-1]
        np.take(table, k, out=out[a:b], mode="clip")  # the scatter checked the bounds


def _first_rows_grouped(keys: np.ndarray, entry_row: np.ndarray, bounds: np.ndarray,
                        out: np.ndarray, key_index: KeyIndex | None) -> None:
    """:func:`first_rows` for many short traces: groups of traces per scatter.

    Keys are renumbered densely so that a ``(trace, key)`` table of a group of traces
    stays within :data:`TABLE_CELLS` cells (cache-resident), or, for many short traces,
    so that there are at most about :data:`MAX_GROUPS` groups within
    :data:`MAX_TABLE_CELLS` cells.
    """
    if key_index is None:
        key_index = KeyIndex.build(keys)
    key_id = key_index.ids(keys)
    n = keys.size
    counts = np.diff(bounds)
    n_traces = counts.size
    n_keys = max(key_index.size, 1)
    per_group = max(1, TABLE_CELLS // n_keys,
                    min(-(-n_traces // MAX_GROUPS), MAX_TABLE_CELLS // n_keys))
    table = np.empty(min(per_group, n_traces) * n_keys, np.int32)
    # a group's cells fit int32: at most max(MAX_TABLE_CELLS, KEY_SPACE) of them
    offsets = np.arange(per_group, dtype=np.int32) * np.int32(n_keys)
    reversed_rows = entry_row[::-1].copy()
    for first in range(0, n_traces, per_group):
        last = min(first + per_group, n_traces)
        a, b = int(bounds[first]), int(bounds[last])
        if a == b:
            continue
        cell = np.repeat(offsets[:last - first], counts[first:last])
        cell += key_id[a:b]
        table[cell[::-1]] = reversed_rows[n - b:n - a]
        np.take(table, cell, out=out[a:b], mode="clip")


#: Traces with at least this many entries on average are handled one at a time.
PER_TRACE_ENTRIES = 2048


def first_rows(keys: np.ndarray, entry_row: np.ndarray, entry_ptr: np.ndarray,
               trace_ptr: np.ndarray, key_index: KeyIndex | None = None) -> np.ndarray:
    """For every entry, the first row of its trace in which its key appears (int32).

    A ``(trace, key)`` first-row table is filled by one scatter in reverse entry order
    (entries are in row order, and NumPy assigns repeated indices in order, so the
    earliest row is written last) and read back by one gather. Long traces (at least
    :data:`PER_TRACE_ENTRIES` entries on average) go one at a time through a table over
    the raw keys; many short traces go in groups through a table over densely renumbered
    keys (``key_index``, built from ``keys`` when not given). Both give the same result.

    Args:
        keys: entry keys (below 2^22), unique within each row.
        entry_row: int32 row index of each entry, non-decreasing.
        entry_ptr: CSR pointer of the entries per row.
        trace_ptr: CSR pointer of the rows per trace.
        key_index: optional index covering every key, for the grouped path.
    """
    bounds = entry_ptr[trace_ptr]
    out = np.empty(keys.size, np.int32)
    n_traces = bounds.size - 1
    if keys.size == 0:
        return out
    entry_row = entry_row.astype(np.int32, copy=False)
    if keys.size >= PER_TRACE_ENTRIES * max(n_traces, 1):
        _first_rows_per_trace(keys, entry_row, bounds, out)
    else:
        _first_rows_grouped(keys, entry_row, bounds, out, key_index)
    return out


def novelty(rows: KeptRows, key_index: KeyIndex | None = None) -> Novelty:
    """Compute novelty for every kept row of every trace at once.

    Keys are "seen" per response, with no window: every key present in an earlier kept row
    of the same trace is not new. ``key_index`` (covering every key of ``rows``) may be
    shared across batches to save rebuilding it when traces are short.
    """
    n_rows = rows.n_rows
    entry_row = rows.entry_row()
    if rows.keys.size == 0:
        empty = np.zeros(0, np.int32)
        return Novelty(np.zeros(n_rows, np.int64), np.zeros(n_rows), empty, np.zeros(0, bool),
                       entry_row)
    first = first_rows(rows.keys, entry_row, rows.entry_ptr, rows.trace_ptr, key_index)
    # keys are unique within a kept row, so each new entry is one new key
    is_new = first == entry_row
    # kept rows are never empty; summing bytes into int32 is twice as fast as into int64
    new_counts = np.add.reduceat(is_new.view(np.uint8), rows.entry_ptr[:-1],
                                 dtype=np.int32).astype(np.int64)
    slopes = new_counts / rows.row_tokens
    return Novelty(new_counts, slopes, first, is_new, entry_row)
