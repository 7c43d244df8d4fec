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
        first_row: per entry, the kept-row index where its key first appeared in the trace.
        is_new: per entry, whether this entry is in its key's first row (``key in N_r``).
        entry_row: per entry, its kept-row index.
        key_id: per entry, a dense renumbering of its key; ``key_values[key_id] == key``.
        key_values: the distinct keys, ascending.
    """

    new_counts: np.ndarray
    slopes: np.ndarray
    first_row: np.ndarray
    is_new: np.ndarray
    entry_row: np.ndarray
    key_id: np.ndarray
    key_values: np.ndarray


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


def first_rows(key_id: np.ndarray, n_keys: int, entry_row: np.ndarray,
               entry_ptr: np.ndarray, trace_ptr: np.ndarray) -> np.ndarray:
    """For every entry, the first row of its trace in which its key appears.

    With keys renumbered densely (``key_id`` in ``[0, n_keys)``), a ``(trace, key)`` table
    is filled by one scatter in reverse entry order (entries are in row order, and NumPy
    assigns repeated indices in order, so the earliest row is written last) and read
    back by one gather. Traces are taken in groups so the table stays within
    :data:`TABLE_CELLS` cells (cache-resident), or, for many short traces, so that there
    are at most about :data:`MAX_GROUPS` groups within :data:`MAX_TABLE_CELLS` cells.
    """
    n = key_id.size
    trace_entries = entry_ptr[trace_ptr]
    counts = np.diff(trace_entries)
    n_traces = counts.size
    n_keys = max(n_keys, 1)
    per_group = max(1, TABLE_CELLS // n_keys,
                    min(-(-n_traces // MAX_GROUPS), MAX_TABLE_CELLS // n_keys))
    table = np.empty(min(per_group, n_traces) * n_keys, np.int32)
    # a group's cells fit int32: at most max(MAX_TABLE_CELLS, KEY_SPACE) of them
    offsets = np.arange(per_group, dtype=np.int32) * np.int32(n_keys)
    reversed_rows = entry_row[::-1].astype(np.int32)
    out = np.empty(n, np.int64)
    for first in range(0, n_traces, per_group):
        last = min(first + per_group, n_traces)
        a, b = int(trace_entries[first]), int(trace_entries[last])
        if a == b:
            continue
        cell = np.repeat(offsets[:last - first], counts[first:last])
        cell += key_id[a:b]
        table[cell[::-1]] = reversed_rows[n - b:n - a]
        out[a:b] = np.take(table, cell, mode="clip")
    return out


def novelty(rows: KeptRows, key_index: KeyIndex | None = None) -> Novelty:
    """Compute novelty for every kept row of every trace at once.

    Keys are "seen" per response, with no window: every key present in an earlier kept row
    of the same trace is not new. ``key_index`` (covering every key of ``rows``) may be
    shared across batches to save rebuilding it.
    """
    entry_row = rows.entry_row()
    n_rows = rows.n_rows
    if rows.keys.size == 0:
        empty = np.zeros(0, np.int64)
        return Novelty(np.zeros(n_rows, np.int64), np.zeros(n_rows), empty, np.zeros(0, bool),
                       entry_row, empty, np.zeros(0, np.uint32))
    if key_index is None:
        key_index = KeyIndex.build(rows.keys)
    key_id = key_index.ids(rows.keys)
    # keys are unique within a kept row, so each new entry is one new key
    first = first_rows(key_id, key_index.size, entry_row, rows.entry_ptr, rows.trace_ptr)
    is_new = first == entry_row
    new_counts = np.add.reduceat(is_new, rows.entry_ptr[:-1], dtype=np.int64)
    slopes = new_counts / rows.row_tokens
    return Novelty(new_counts, slopes, first, is_new, entry_row, key_id, key_index.values)
