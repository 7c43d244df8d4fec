"""Sparse row corpora: the CSR arrays every stage reads, their validation and sanitising.

A corpus holds traces (responses). Trace ``t`` owns rows ``[trace_row_ptr[t],
trace_row_ptr[t+1])``; row ``i`` owns entries ``[row_entry_ptr[i], row_entry_ptr[i+1])``
of ``keys``/``masses`` and covers ``row_tokens[i]`` generated tokens. Aggregates hold one
sparse vector per trace (the whole-response sums used for scoring).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import CorpusError, expected
from .params import KEY_SPACE, RESERVED_LAYER, UNIT_BITS
from .segments import chunks, kept_pointer, ranges, segment_ids, segment_sums


def _as_pointer(name: str, values, n_items: int | None = None) -> np.ndarray:
    ptr = np.asarray(values)
    if ptr.ndim != 1 or ptr.size < 1:
        raise CorpusError(expected(name, "a 1-D pointer array with at least one element",
                                   f"shape {ptr.shape}"))
    if not np.issubdtype(ptr.dtype, np.integer):
        raise CorpusError(expected(name, "an integer array", ptr.dtype))
    ptr = ptr.astype(np.int64, copy=False)
    if ptr[0] != 0:
        raise CorpusError(expected(f"{name}[0]", "0", int(ptr[0])))
    steps = np.diff(ptr)
    if steps.size and steps.min() < 0:
        bad = int(np.argmax(steps < 0))
        raise CorpusError(expected(name, "non-decreasing values",
                                   f"{int(ptr[bad])} then {int(ptr[bad + 1])} at index {bad}"))
    if n_items is not None and ptr[-1] != n_items:
        raise CorpusError(expected(f"{name}[-1]", f"{n_items} (the length it indexes)",
                                   int(ptr[-1])))
    return ptr


def _check_keys(name: str, keys) -> np.ndarray:
    keys = np.asarray(keys)
    if keys.ndim != 1:
        raise CorpusError(expected(name, "a 1-D array", f"shape {keys.shape}"))
    if keys.size == 0:
        return keys.astype(np.uint32)
    if not np.issubdtype(keys.dtype, np.integer):
        raise CorpusError(expected(name, "an integer (uint32) array", keys.dtype))
    if keys.dtype != np.uint32 and (keys.min() < 0 or keys.max() > np.iinfo(np.uint32).max):
        raise CorpusError(expected(name, "values in the uint32 range", "out-of-range values"))
    keys = keys.astype(np.uint32, copy=False)
    if keys.max() < KEY_SPACE:  # the common case: one pass
        return keys
    live = (keys >> UNIT_BITS) != RESERVED_LAYER
    over = live & (keys >= KEY_SPACE)
    if over.any():
        first = int(keys[np.argmax(over)])
        raise CorpusError(expected(name, f"keys below 2^22 (layer < 64) or layer {RESERVED_LAYER}",
                                   f"key {first} (layer {first >> UNIT_BITS})"))
    return keys


def _check_masses(name: str, masses, n: int) -> np.ndarray:
    masses = np.asarray(masses)
    if masses.ndim != 1 or masses.size != n:
        raise CorpusError(expected(name, f"a 1-D array of {n} values", f"shape {masses.shape}"))
    if masses.size and not np.issubdtype(masses.dtype, np.floating):
        masses = masses.astype(np.float64)
    return masses


@dataclass(frozen=True)
class Aggregates:
    """One sparse vector (keys, masses) per trace: the whole-response aggregate."""

    row_ptr: np.ndarray
    keys: np.ndarray
    masses: np.ndarray

    def __post_init__(self) -> None:
        keys = _check_keys("aggregate keys", self.keys)
        object.__setattr__(self, "keys", keys)
        object.__setattr__(self, "row_ptr", _as_pointer("aggregate row_ptr", self.row_ptr,
                                                        keys.size))
        object.__setattr__(self, "masses", _check_masses("aggregate masses", self.masses,
                                                         keys.size))

    @property
    def n_traces(self) -> int:
        return self.row_ptr.size - 1

    def select(self, traces: np.ndarray) -> "Aggregates":
        """The aggregates of the given trace indices, in that order."""
        traces = np.asarray(traces, dtype=np.int64)
        starts, stops = self.row_ptr[traces], self.row_ptr[traces + 1]
        idx = ranges(starts, stops)
        return Aggregates(np.concatenate([[0], np.cumsum(stops - starts)]),
                          self.keys[idx], self.masses[idx])


@dataclass(frozen=True)
class RowCorpus:
    """Sparse per-row neuron masses of a set of traces (CSR over traces and rows).

    ``aggregates`` may be omitted; :meth:`aggregate` then sums the rows per key.
    """

    trace_row_ptr: np.ndarray
    row_entry_ptr: np.ndarray
    row_tokens: np.ndarray
    keys: np.ndarray
    masses: np.ndarray
    aggregates: Aggregates | None = None

    def __post_init__(self) -> None:
        keys = _check_keys("row keys", self.keys)
        object.__setattr__(self, "keys", keys)
        object.__setattr__(self, "masses", _check_masses("row masses", self.masses, keys.size))
        row_entry_ptr = _as_pointer("row_entry_ptr", self.row_entry_ptr, keys.size)
        object.__setattr__(self, "row_entry_ptr", row_entry_ptr)
        n_rows = row_entry_ptr.size - 1
        object.__setattr__(self, "trace_row_ptr",
                           _as_pointer("trace_row_ptr", self.trace_row_ptr, n_rows))
        tokens = np.asarray(self.row_tokens)
        if tokens.shape != (n_rows,) or not np.issubdtype(tokens.dtype, np.integer):
            raise CorpusError(expected("row_tokens", f"{n_rows} integer token counts",
                                       f"{tokens.dtype} array of shape {tokens.shape}"))
        if tokens.size and tokens.min() < 0:
            raise CorpusError(expected("row_tokens", "counts >= 0", int(tokens.min())))
        object.__setattr__(self, "row_tokens", tokens.astype(np.int64, copy=False))
        if self.aggregates is not None and self.aggregates.n_traces != self.n_traces:
            raise CorpusError(expected("aggregates", f"{self.n_traces} traces",
                                       self.aggregates.n_traces))

    @property
    def n_traces(self) -> int:
        return self.trace_row_ptr.size - 1

    @property
    def n_rows(self) -> int:
        return self.row_entry_ptr.size - 1

    @property
    def n_entries(self) -> int:
        return int(self.keys.size)

    def aggregate(self) -> Aggregates:
        """The whole-response aggregates: stored ones, else the per-key sum of the rows."""
        if self.aggregates is not None:
            return self.aggregates
        ptr, keys, sums = trace_key_sums(self.trace_row_ptr, self.row_entry_ptr, self.keys,
                                         self.masses)
        return Aggregates(ptr, keys, sums.astype(np.float32))

    def slice_traces(self, start: int, stop: int) -> "RowCorpus":
        """Traces ``[start, stop)`` as a corpus of views (no copy of the entry arrays)."""
        r0, r1 = int(self.trace_row_ptr[start]), int(self.trace_row_ptr[stop])
        e0, e1 = int(self.row_entry_ptr[r0]), int(self.row_entry_ptr[r1])
        aggregates = None
        if self.aggregates is not None:
            agg = self.aggregates
            a0, a1 = int(agg.row_ptr[start]), int(agg.row_ptr[stop])
            aggregates = Aggregates(agg.row_ptr[start:stop + 1] - a0, agg.keys[a0:a1],
                                    agg.masses[a0:a1])
        return RowCorpus(self.trace_row_ptr[start:stop + 1] - r0,
                         self.row_entry_ptr[r0:r1 + 1] - e0, self.row_tokens[r0:r1],
                         self.keys[e0:e1], self.masses[e0:e1], aggregates)

    def select(self, traces) -> "RowCorpus":
        """A corpus of the given trace indices, in that order (aggregates included)."""
        traces = np.asarray(traces, dtype=np.int64)
        row_starts, row_stops = self.trace_row_ptr[traces], self.trace_row_ptr[traces + 1]
        rows = ranges(row_starts, row_stops)
        e_starts, e_stops = self.row_entry_ptr[rows], self.row_entry_ptr[rows + 1]
        entries = ranges(e_starts, e_stops)
        aggregates = None if self.aggregates is None else self.aggregates.select(traces)
        return RowCorpus(
            trace_row_ptr=np.concatenate([[0], np.cumsum(row_stops - row_starts)]),
            row_entry_ptr=np.concatenate([[0], np.cumsum(e_stops - e_starts)]),
            row_tokens=self.row_tokens[rows],
            keys=self.keys[entries],
            masses=self.masses[entries],
            aggregates=aggregates,
        )


def trace_key_sums(trace_row_ptr: np.ndarray, row_entry_ptr: np.ndarray, keys: np.ndarray,
                   masses: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per trace, its distinct row keys (ascending) and the sum of each key's masses over
    the trace's rows: ``(ptr, keys, sums)``, a CSR pointer over traces (int64), uint32
    keys and float64 sums added in entry order (the same entries give the same bits)."""
    entry_trace = segment_ids(trace_row_ptr)[segment_ids(row_entry_ptr)]
    combined = (entry_trace.astype(np.int64) << 32) | np.asarray(keys).astype(np.int64)
    unique, inverse = np.unique(combined, return_inverse=True)
    sums = np.bincount(inverse.ravel(), weights=np.asarray(masses, np.float64),
                       minlength=unique.size)
    ptr = np.searchsorted(unique >> 32, np.arange(trace_row_ptr.size)).astype(np.int64)
    return ptr, (unique & 0xFFFFFFFF).astype(np.uint32), sums


def concat_corpora(parts: list[RowCorpus]) -> RowCorpus:
    """Concatenate corpora trace-wise (aggregates kept when every part has them)."""
    if not parts:
        raise CorpusError(expected("corpora to concatenate", "at least one", 0))

    def join_ptr(ptrs):
        out, offset = [np.zeros(1, np.int64)], 0
        for p in ptrs:
            out.append(p[1:] + offset)
            offset += int(p[-1])
        return np.concatenate(out)

    aggregates = None
    if all(p.aggregates is not None for p in parts):
        aggregates = Aggregates(join_ptr([p.aggregates.row_ptr for p in parts]),
                                np.concatenate([p.aggregates.keys for p in parts]),
                                np.concatenate([p.aggregates.masses for p in parts]))
    return RowCorpus(
        trace_row_ptr=join_ptr([p.trace_row_ptr for p in parts]),
        row_entry_ptr=join_ptr([p.row_entry_ptr for p in parts]),
        row_tokens=np.concatenate([p.row_tokens for p in parts]),
        keys=np.concatenate([p.keys for p in parts]),
        masses=np.concatenate([p.masses for p in parts]),
        aggregates=aggregates,
    )


def live_entries(keys: np.ndarray) -> np.ndarray | None:
    """Mask of the entries whose key is not in the reserved layer 255 (None when every
    entry is live: the common case costs one pass)."""
    if keys.size and keys.max() >= KEY_SPACE:  # only layer-255 keys can be this large
        return (keys >> UNIT_BITS) != RESERVED_LAYER
    return None


def clean_masses(values: np.ndarray) -> np.ndarray:
    """Set non-finite float64 ``values`` to 0 and clip them at 0, in place; returns them."""
    # min() is NaN when any value is NaN, and the comparison then fails
    if values.size and not (values.min() >= 0 and values.max() < np.inf):
        values[~np.isfinite(values)] = 0.0
        np.maximum(values, 0.0, out=values)
    return values


def sanitise_masses(keys: np.ndarray, masses: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    """Drop layer-255 keys, set non-finite masses to 0, clip at 0.

    Returns ``(keep, clean)``: a boolean mask over the entries (None when every entry is
    kept) and the float64 masses.
    """
    return live_entries(keys), clean_masses(masses.astype(np.float64))


@dataclass(frozen=True)
class KeptRows:
    """The rows NEX analyses, after sanitising (METHOD.md section 2).

    Rows are those of traces with at least ``min_rows`` kept rows, in corpus order.

    Attributes:
        trace_ptr: over kept rows, per trace of the corpus (empty range = skipped trace).
        row_index: index of each kept row in the corpus.
        row_tokens: tokens per kept row.
        entry_ptr: over the kept entries, per kept row.
        keys, masses: kept entries (masses float64, sanitised).
        row_mass: total mass of each kept row.
    """

    trace_ptr: np.ndarray
    row_index: np.ndarray
    row_tokens: np.ndarray
    entry_ptr: np.ndarray
    keys: np.ndarray
    masses: np.ndarray
    row_mass: np.ndarray

    @property
    def n_rows(self) -> int:
        return self.row_index.size

    def row_trace(self) -> np.ndarray:
        return np.repeat(np.arange(self.trace_ptr.size - 1), np.diff(self.trace_ptr))

    def entry_row(self) -> np.ndarray:
        """Per entry, its kept-row index (int32: row counts stay far below 2^31)."""
        return np.repeat(np.arange(self.n_rows, dtype=np.int32), np.diff(self.entry_ptr))


def rows_sorted_unique(keys: np.ndarray, entry_ptr: np.ndarray) -> bool:
    """Whether the keys of every row are strictly ascending (so unique within the row)."""
    if keys.size < 2:
        return True
    ascending = keys[1:] > keys[:-1]
    starts = entry_ptr[1:-1]
    ascending[starts[(starts > 0) & (starts < keys.size)] - 1] = True  # row boundaries
    return bool(ascending.all())


def sort_unique_rows(keys: np.ndarray, masses: np.ndarray, entry_ptr: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sort each row's keys and merge repeated keys of a row (masses add up)."""
    n_rows = entry_ptr.size - 1
    entry_row = np.repeat(np.arange(n_rows), np.diff(entry_ptr))
    order = np.lexsort((keys, entry_row))
    keys, masses, entry_row = keys[order], masses[order], entry_row[order]
    first = np.ones(keys.size, dtype=bool)
    first[1:] = (keys[1:] != keys[:-1]) | (entry_row[1:] != entry_row[:-1])
    starts = np.flatnonzero(first)
    merged = np.add.reduceat(masses, starts) if starts.size else masses[:0]
    counts = np.bincount(entry_row[starts], minlength=n_rows)
    return keys[starts], merged, np.concatenate([[0], np.cumsum(counts)])


def _clean_rows(keys: np.ndarray, masses: np.ndarray, entry_ptr: np.ndarray):
    """Sanitised float64 masses, the total mass of each row, and whether every row's keys
    are strictly ascending; in chunks of rows (:func:`~.segments.chunks`), so that each
    chunk is converted, checked and summed while it is in the CPU cache.
    """
    clean = np.empty(masses.size)
    total = np.zeros(entry_ptr.size - 1)
    ascending = True
    for r0, r1 in chunks(entry_ptr):
        a, b = int(entry_ptr[r0]), int(entry_ptr[r1])
        part = clean[a:b]
        part[...] = masses[a:b]
        clean_masses(part)
        local = entry_ptr[r0:r1 + 1] - a
        total[r0:r1] = segment_sums(part, local)
        ascending = ascending and rows_sorted_unique(keys[a:b], local)
    return clean, total, ascending


def kept_rows(corpus: RowCorpus, min_rows: int) -> KeptRows:
    """Sanitise a corpus and keep the rows and traces NEX analyses.

    A row is skipped when it has no keys, zero total mass or no tokens (after dropping
    layer-255 keys and cleaning masses); a trace with fewer than ``min_rows`` kept rows is
    skipped entirely. Keys come out strictly ascending within each row (rows that are not
    are sorted, and a key repeated inside a row has its masses added).
    """
    n_rows = corpus.n_rows
    keys, masses, entry_ptr = corpus.keys, corpus.masses, corpus.row_entry_ptr
    live = live_entries(keys)
    if live is not None:
        keys, masses = keys[live], masses[live]
        entry_ptr = kept_pointer(entry_ptr, live)
    clean, total, ascending = _clean_rows(keys, masses, entry_ptr)
    if not ascending:
        keys, clean, entry_ptr = sort_unique_rows(keys, clean, entry_ptr)
        total = segment_sums(clean, entry_ptr)
    n_keys = np.diff(entry_ptr)
    row_ok = (n_keys > 0) & (total > 0) & (corpus.row_tokens > 0)
    row_trace = np.repeat(np.arange(corpus.n_traces), np.diff(corpus.trace_row_ptr))
    per_trace = np.bincount(row_trace[row_ok], minlength=corpus.n_traces)
    row_ok &= (per_trace >= min_rows)[row_trace]
    if row_ok.all():
        return KeptRows(corpus.trace_row_ptr, np.arange(n_rows), corpus.row_tokens,
                        entry_ptr, keys, clean, total)
    row_index = np.flatnonzero(row_ok)
    counts = np.bincount(row_trace[row_index], minlength=corpus.n_traces)
    entries = ranges(entry_ptr[row_index], entry_ptr[row_index + 1])
    return KeptRows(
        trace_ptr=np.concatenate([[0], np.cumsum(counts)]),
        row_index=row_index,
        row_tokens=corpus.row_tokens[row_index],
        entry_ptr=np.concatenate([[0], np.cumsum(n_keys[row_index])]),
        keys=keys[entries],
        masses=clean[entries],
        row_mass=total[row_index],
    )
