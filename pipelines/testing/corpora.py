"""Synthetic sparse-row corpora with bursts of exploration, for demos, tests and benchmarks.

Each trace alternates explore bursts (rows that bring many neurons never seen before in
the trace) and exploit stretches (rows that mostly reuse neurons already seen). Neurons
come from a shared pool in which some are "productive" (reused heavily after they are
introduced) and others are not, so learned weights and GMFs carry real structure.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nex_transforms import Aggregates, RowCorpus


@dataclass(frozen=True)
class SyntheticSpec:
    """Shape of a synthetic corpus."""

    n_traces: int = 200
    min_rows: int = 20
    max_rows: int = 120
    keys_per_row: int = 300
    row_size: int = 32
    n_layers: int = 24
    units_per_layer: int = 4096
    explore_new_fraction: float = 0.6
    exploit_new_fraction: float = 0.05
    seed: int = 0


def synthetic_corpus(spec: SyntheticSpec = SyntheticSpec()) -> RowCorpus:
    """Build a :class:`RowCorpus` (with aggregates) following ``spec``."""
    rng = np.random.default_rng(spec.seed)
    pool = spec.n_layers * spec.units_per_layer
    # Zipf-like popularity so some neurons recur across traces.
    popularity = 1.0 / np.arange(1, pool + 1) ** 0.7
    popularity /= popularity.sum()
    pool_perm = rng.permutation(pool)
    cum_pop = np.cumsum(popularity)

    trace_rows, row_ptr, row_tokens, keys_out, masses_out = [0], [0], [], [], []
    for _ in range(spec.n_traces):
        n_rows = int(rng.integers(spec.min_rows, spec.max_rows + 1))
        quality = rng.uniform(0.3, 1.0)
        explore = _phase_pattern(rng, n_rows)
        seen_flag = np.zeros(pool, dtype=bool)
        seen = np.empty(pool, np.int64)  # keys in order of first appearance
        seen_cum = np.empty(pool)  # cumulative reuse weight of those keys
        n_seen = 0
        for r in range(n_rows):
            k = max(8, int(rng.normal(spec.keys_per_row, spec.keys_per_row * 0.1)))
            frac_new = spec.explore_new_fraction if explore[r] else spec.exploit_new_fraction
            frac_new *= rng.uniform(0.7, 1.3)
            n_new = min(k, int(round(k * frac_new))) if n_seen else k
            n_old = min(k - n_new, n_seen)
            fresh = pool_perm[np.searchsorted(cum_pop, rng.random(n_new) * cum_pop[-1])
                              .clip(0, pool - 1)]
            if n_old:
                cum = seen_cum[:n_seen]
                pick = np.searchsorted(cum, rng.random(n_old) * cum[-1], side="right")
                row = np.concatenate([fresh, seen[pick.clip(0, n_seen - 1)]])
            else:
                row = fresh
            row = np.unique(row)
            was_seen = seen_flag[row]
            masses = rng.lognormal(0.0, 0.8, row.size) * (1.0 + quality * was_seen)
            layer, unit = row // spec.units_per_layer, row % spec.units_per_layer
            keys_out.append(((layer << 16) | unit).astype(np.uint32))
            masses_out.append(masses.astype(np.float32))
            row_ptr.append(row_ptr[-1] + row.size)
            tokens = spec.row_size if r < n_rows - 1 else int(rng.integers(1, spec.row_size + 1))
            row_tokens.append(tokens)
            new_keys = row[~was_seen]
            if new_keys.size:
                seen_flag[new_keys] = True
                # productive neurons (quality) get reused more later on
                boost = np.where(rng.random(new_keys.size) < quality, 4.0, 1.0)
                base = seen_cum[n_seen - 1] if n_seen else 0.0
                seen[n_seen:n_seen + new_keys.size] = new_keys
                seen_cum[n_seen:n_seen + new_keys.size] = base + np.cumsum(boost)
                n_seen += new_keys.size
        trace_rows.append(trace_rows[-1] + n_rows)

    corpus = RowCorpus(
        trace_row_ptr=np.asarray(trace_rows, np.int64),
        row_entry_ptr=np.asarray(row_ptr, np.int64),
        row_tokens=np.asarray(row_tokens, np.int64),
        keys=np.concatenate(keys_out) if keys_out else np.zeros(0, np.uint32),
        masses=np.concatenate(masses_out) if masses_out else np.zeros(0, np.float32),
    )
    agg = corpus.aggregate()
    return RowCorpus(corpus.trace_row_ptr, corpus.row_entry_ptr, corpus.row_tokens,
                     corpus.keys, corpus.masses,
                     Aggregates(agg.row_ptr, agg.keys, agg.masses))


def _phase_pattern(rng: np.random.Generator, n_rows: int) -> np.ndarray:
    """Alternating explore/exploit bursts of random lengths; starts exploring."""
    labels = np.zeros(n_rows, dtype=bool)
    r, explore = 0, True
    while r < n_rows:
        length = int(rng.integers(2, 9)) if explore else int(rng.integers(3, 16))
        labels[r:r + length] = explore
        r += length
        explore = not explore
    return labels
