"""Cycles, neuron credit and the mergeable credit accumulator (METHOD.md sections 4-5)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .corpus import KeptRows, RowCorpus, kept_rows
from .errors import CorpusError, expected
from .novelty import KeyIndex, Novelty, novelty
from .params import KEY_SPACE, NexParams
from .segmentation import Segmentation, segment
from .segments import chunks, grouped_median, run_starts, segment_sums


@dataclass(frozen=True)
class CycleCredit:
    """Credit of one batch of traces.

    Attributes:
        keys: credited neuron keys (sorted, unique).
        effective, redundant: summed credit per key.
        trace_cycles, trace_effective, trace_redundant: per trace counts of cycles,
            effective cycles and redundant cycles.
        trace_explore_rows: per trace number of kept rows labelled E.
        row_cycle: per kept row, the batch-wide index of the cycle it belongs to (its E
            run or the X run after it), -1 for rows in no cycle. Cycles are numbered in
            row order, so a trace's cycles are consecutive.
        cycle_credited: per cycle, whether it earned credit (effective or redundant).
        cycle_effective: per cycle, whether its credit is effective.
        (The last three are empty arrays when built without them.)
    """

    keys: np.ndarray
    effective: np.ndarray
    redundant: np.ndarray
    trace_cycles: np.ndarray
    trace_effective: np.ndarray
    trace_redundant: np.ndarray
    trace_explore_rows: np.ndarray
    row_cycle: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    cycle_credited: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    cycle_effective: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))


def cycle_credit(rows: KeptRows, nov: Novelty, seg: Segmentation, params: NexParams,
                 key_index: KeyIndex | None = None) -> CycleCredit:
    """Find the E->X cycles of every trace and credit the neurons they introduce.

    A cycle is a maximal E run followed by the X run after it; leading X rows and a
    final E run without X are ignored. See METHOD.md section 4 for the rule; every step
    here is a grouped array operation over the concatenated rows and entries.
    ``key_index`` (covering every credited key) saves building one for the sums per key.
    """
    n_traces = rows.trace_ptr.size - 1
    explore = seg.explore
    slopes = nov.slopes
    row_trace = rows.row_trace()
    starts = run_starts(explore, rows.trace_ptr)
    run_id = np.cumsum(starts) - 1
    start_idx = np.flatnonzero(starts)
    n_runs = start_idx.size
    run_trace = row_trace[start_idx] if n_runs else np.zeros(0, np.int64)
    run_label = explore[start_idx]
    has_next = np.zeros(n_runs, dtype=bool)
    if n_runs > 1:
        has_next[:-1] = run_trace[1:] == run_trace[:-1]
    e_runs = np.flatnonzero(run_label & has_next)
    n_cycles = e_runs.size
    run_cycle = np.full(n_runs, -1, np.int64)
    run_cycle[e_runs] = np.arange(n_cycles)
    run_cycle[e_runs + 1] = np.arange(n_cycles)
    row_cycle = run_cycle[run_id] if n_runs else np.zeros(0, np.int64)
    cycle_trace = run_trace[e_runs]

    s_tilde = grouped_median(slopes, row_trace, n_traces)
    s_e = grouped_median(slopes, np.where(explore, row_cycle, -1), n_cycles)
    s_x = grouped_median(slopes, np.where(~explore, row_cycle, -1), n_cycles)
    strength = s_e - s_tilde[cycle_trace]
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa = np.where(s_e > 0, np.clip(1.0 - s_x / (s_e + params.kappa_eps), 0.0, 1.0), 0.0)
    e_rows = explore & (row_cycle >= 0)
    introduced = np.bincount(row_cycle[e_rows], weights=nov.new_counts[e_rows],
                             minlength=n_cycles)
    valid = (strength > 0) & (introduced > 0)

    # Reuse: mass in a cycle's X rows on keys first seen in that cycle's E rows. All
    # per-entry work is gathers from row-sized arrays and sequential segment sums.
    x_rows = ~explore & (row_cycle >= 0)
    row_e_cycle = np.where(explore, row_cycle, -1).astype(np.int32)
    row_x_cycle = np.where(x_rows, row_cycle, -2).astype(np.int32)
    row_reuse = _reused_mass(rows, nov, row_e_cycle, row_x_cycle, x_rows)
    row_mass = rows.row_mass
    total_x = np.bincount(row_cycle[x_rows], weights=row_mass[x_rows], minlength=n_cycles)
    reuse = np.bincount(row_cycle[x_rows], weights=row_reuse[x_rows], minlength=n_cycles)
    u = reuse / (total_x + params.reuse_eps)
    u_group = np.where(valid & np.isfinite(u), cycle_trace, -1)
    u_tilde = grouped_median(u, u_group, n_traces)
    progress = u - u_tilde[cycle_trace]
    credited = valid & np.isfinite(progress) & (progress != 0)
    effective = credited & (progress > 0) & (kappa > 0)
    redundant = credited & ~effective
    scale = np.where(effective, progress * kappa, np.abs(progress))

    # Credit: new keys of the E rows of credited cycles, mass times the cycle's scale.
    give_row = e_rows.copy()
    give_row[e_rows] = credited[row_cycle[e_rows]]
    entry_keys, amounts, is_eff = _credited_entries(rows, nov, give_row, row_cycle, scale,
                                                    effective)
    if key_index is None:
        key_index = KeyIndex.build(entry_keys)
    key_id = key_index.ids(entry_keys)
    n_keys = key_index.size
    eff = np.bincount(key_id[is_eff], weights=amounts[is_eff], minlength=n_keys)
    red = np.bincount(key_id[~is_eff], weights=amounts[~is_eff], minlength=n_keys)
    touched = np.zeros(n_keys, dtype=bool)
    touched[key_id] = True
    keys = key_index.values[touched]
    eff, red = eff[touched], red[touched]
    return CycleCredit(
        keys=keys.astype(np.uint32),
        effective=eff,
        redundant=red,
        trace_cycles=np.bincount(cycle_trace, minlength=n_traces),
        trace_effective=np.bincount(cycle_trace[effective], minlength=n_traces),
        trace_redundant=np.bincount(cycle_trace[redundant], minlength=n_traces),
        trace_explore_rows=np.bincount(row_trace[explore], minlength=n_traces),
        row_cycle=row_cycle.astype(np.int64),
        cycle_credited=credited.astype(bool),
        cycle_effective=effective.astype(bool),
    )


def _reused_mass(rows: KeptRows, nov: Novelty, row_e_cycle: np.ndarray,
                 row_x_cycle: np.ndarray, x_rows: np.ndarray) -> np.ndarray:
    """Per kept row, the mass of its entries whose key first appeared in an E row of the
    row's own cycle (0 outside the X rows of cycles).

    In chunks of rows (:func:`~.segments.chunks`); chunks without an X row are skipped.
    """
    entry_ptr = rows.entry_ptr
    row_counts = np.diff(entry_ptr)
    out = np.zeros(row_counts.size)
    for r0, r1 in chunks(entry_ptr):
        if not x_rows[r0:r1].any():
            continue
        a, b = int(entry_ptr[r0]), int(entry_ptr[r1])
        # np.take/np.repeat: the same gathers as fancy indexing, without bounds checks
        hit = np.take(row_e_cycle, nov.first_row[a:b], mode="clip")
        hit = hit == np.repeat(row_x_cycle[r0:r1], row_counts[r0:r1])
        out[r0:r1] = segment_sums(rows.masses[a:b] * hit, entry_ptr[r0:r1 + 1] - a)
    return out


def _credited_entries(rows: KeptRows, nov: Novelty, give_row: np.ndarray,
                      row_cycle: np.ndarray, scale: np.ndarray, effective: np.ndarray):
    """Keys, credit amounts and effective flags of the new entries of the rows in
    ``give_row``, in entry order (chunks of rows; chunks without such a row skipped)."""
    entry_ptr = rows.entry_ptr
    row_counts = np.diff(entry_ptr)
    keys, amounts, is_eff = [np.zeros(0, np.uint32)], [np.zeros(0)], [np.zeros(0, bool)]
    for r0, r1 in chunks(entry_ptr):
        if not give_row[r0:r1].any():
            continue
        a, b = int(entry_ptr[r0]), int(entry_ptr[r1])
        picked = np.flatnonzero(nov.is_new[a:b] & np.repeat(give_row[r0:r1],
                                                            row_counts[r0:r1]))
        cycle = row_cycle[nov.entry_row[a:b][picked]]
        keys.append(rows.keys[a:b][picked])
        amounts.append(rows.masses[a:b][picked] * scale[cycle])
        is_eff.append(effective[cycle])
    return np.concatenate(keys), np.concatenate(amounts), np.concatenate(is_eff)


@dataclass(frozen=True)
class TraceAnalysis:
    """Everything the method computes for a batch of traces (rows, labels, credit)."""

    rows: KeptRows
    novelty: Novelty
    segmentation: Segmentation
    credit: CycleCredit

    @property
    def kept_row_counts(self) -> np.ndarray:
        """Kept rows per trace (0 for a skipped trace)."""
        return np.diff(self.rows.trace_ptr)

    def labels(self, trace: int) -> str:
        """E/X string of one trace's kept rows (``E`` explore, ``x`` exploit)."""
        a, b = self.rows.trace_ptr[trace], self.rows.trace_ptr[trace + 1]
        return "".join("E" if e else "x" for e in self.segmentation.explore[a:b])


def analyse(corpus: RowCorpus, params: NexParams | None = None,
            key_index: KeyIndex | None = None) -> TraceAnalysis:
    """Run novelty, segmentation and credit over every trace of a corpus, batched.

    ``key_index`` may be given when many batches of one corpus are analysed (it must
    cover every key of ``corpus`` below 2^22).
    """
    params = params or NexParams()
    rows = kept_rows(corpus, params.min_rows)
    nov = novelty(rows, key_index)
    seg = segment(nov.slopes, rows.trace_ptr, params)
    return TraceAnalysis(rows, nov, seg, cycle_credit(rows, nov, seg, params, key_index))


#: Above this many keys, sums per key go through a dense 2^22 table instead of a sort.
DENSE_MERGE_KEYS = 1 << 18


def _sum_by_key(keys: list, effective: list, redundant: list):
    """Sum credit per key over several sparse vectors; keys come out ascending.

    Both paths add values in input order, so they give identical sums.
    """
    keys = np.concatenate(keys) if keys else np.zeros(0, np.uint32)
    effective = np.concatenate(effective) if effective else np.zeros(0)
    redundant = np.concatenate(redundant) if redundant else np.zeros(0)
    if keys.size > DENSE_MERGE_KEYS:
        present = np.zeros(KEY_SPACE, dtype=bool)
        present[keys] = True
        out = np.flatnonzero(present)
        eff = np.bincount(keys, weights=effective, minlength=KEY_SPACE)[out]
        red = np.bincount(keys, weights=redundant, minlength=KEY_SPACE)[out]
        return out.astype(np.uint32), eff, red
    out, inverse = np.unique(keys, return_inverse=True)
    eff = np.bincount(inverse, weights=effective, minlength=out.size)
    red = np.bincount(inverse, weights=redundant, minlength=out.size)
    return out.astype(np.uint32), eff, red


def _merge_sparse(keys_a, eff_a, red_a, keys_b, eff_b, red_b):
    return _sum_by_key([keys_a, keys_b], [eff_a, eff_b], [red_a, red_b])


def _empty_keys() -> np.ndarray:
    return np.zeros(0, np.uint32)


def _empty_values() -> np.ndarray:
    return np.zeros(0, np.float64)


@dataclass(frozen=True)
class CreditAccumulator:
    """Corpus-wide Eff/Red credit as a mergeable value (a commutative monoid).

    ``empty() / add(corpus) / merge(other) / finalize()``: any split of a corpus over
    workers, merged in any order, gives the same totals (up to floating-point rounding of
    the sums) and so the same weights.
    """

    keys: np.ndarray = field(default_factory=_empty_keys)
    effective: np.ndarray = field(default_factory=_empty_values)
    redundant: np.ndarray = field(default_factory=_empty_values)
    n_traces: int = 0
    n_analysed: int = 0
    n_cycles: int = 0
    n_effective: int = 0
    n_redundant: int = 0

    @classmethod
    def empty(cls) -> "CreditAccumulator":
        return cls()

    def add_analysis(self, analysis: TraceAnalysis) -> "CreditAccumulator":
        """Add the credit of an already analysed batch of traces."""
        c = analysis.credit
        if self.keys.size:
            keys, eff, red = _merge_sparse(self.keys, self.effective, self.redundant,
                                           c.keys, c.effective, c.redundant)
        else:  # the batch's keys are already unique and ascending
            keys, eff, red = c.keys, c.effective, c.redundant
        return CreditAccumulator(
            keys, eff, red,
            n_traces=self.n_traces + int(analysis.kept_row_counts.size),
            n_analysed=self.n_analysed + int(np.count_nonzero(analysis.kept_row_counts)),
            n_cycles=self.n_cycles + int(c.trace_cycles.sum()),
            n_effective=self.n_effective + int(c.trace_effective.sum()),
            n_redundant=self.n_redundant + int(c.trace_redundant.sum()),
        )

    def add(self, corpus: RowCorpus, params: NexParams | None = None,
            key_index: KeyIndex | None = None) -> "CreditAccumulator":
        """Analyse a batch of traces and add its credit."""
        return self.add_analysis(analyse(corpus, params, key_index))

    def merge(self, other: "CreditAccumulator") -> "CreditAccumulator":
        """Sum of two accumulators."""
        keys, eff, red = _merge_sparse(self.keys, self.effective, self.redundant,
                                       other.keys, other.effective, other.redundant)
        return CreditAccumulator(
            keys, eff, red,
            n_traces=self.n_traces + other.n_traces,
            n_analysed=self.n_analysed + other.n_analysed,
            n_cycles=self.n_cycles + other.n_cycles,
            n_effective=self.n_effective + other.n_effective,
            n_redundant=self.n_redundant + other.n_redundant,
        )

    @classmethod
    def merge_all(cls, parts) -> "CreditAccumulator":
        """Merge any number of accumulators at once."""
        parts = list(parts)
        if not parts:
            return cls.empty()
        keys, eff, red = _sum_by_key([p.keys for p in parts], [p.effective for p in parts],
                                     [p.redundant for p in parts])
        return cls(keys, eff, red,
                   n_traces=sum(p.n_traces for p in parts),
                   n_analysed=sum(p.n_analysed for p in parts),
                   n_cycles=sum(p.n_cycles for p in parts),
                   n_effective=sum(p.n_effective for p in parts),
                   n_redundant=sum(p.n_redundant for p in parts))

    def sparse_weights(self, eps: float = 1e-6) -> np.ndarray:
        """Weight of each key in :attr:`keys`: ``tanh(log((Eff+eps)/(Red+eps)))``."""
        return np.tanh(np.log((self.effective + eps) / (self.redundant + eps)))

    def finalize(self, eps: float = 1e-6) -> np.ndarray:
        """Dense float32 weight vector over the 2^22 key space (0 where never credited)."""
        weights = np.zeros(KEY_SPACE, np.float32)
        weights[self.keys] = self.sparse_weights(eps).astype(np.float32)
        return weights

    def to_arrays(self) -> dict:
        """Plain arrays and counters (for serialisation by any engine)."""
        return {"keys": self.keys, "effective": self.effective, "redundant": self.redundant,
                "counters": np.array([self.n_traces, self.n_analysed, self.n_cycles,
                                      self.n_effective, self.n_redundant], np.int64)}

    @classmethod
    def from_arrays(cls, arrays: dict) -> "CreditAccumulator":
        """Inverse of :meth:`to_arrays`."""
        counters = np.asarray(arrays["counters"], np.int64)
        if counters.shape != (5,):
            raise CorpusError(expected("accumulator counters", "5 integers", counters.shape))
        return cls(np.asarray(arrays["keys"], np.uint32),
                   np.asarray(arrays["effective"], np.float64),
                   np.asarray(arrays["redundant"], np.float64),
                   *(int(c) for c in counters))
