"""Synthetic traces shaped like real captures (for tests and storage measurements).

The shape follows the published reference example (a Qwen3-4B cache): 36 layers of
9,728 MLP units, rows of 32 tokens with ~200-440 distinct neurons each (keys sorted within
a row), mostly later layers, heavy reuse of a response's neurons across rows (~40 new
neurons a row) and log-normal masses (median ~0.9, log-sd ~1).
"""

from __future__ import annotations

import numpy as np

from nex_transforms.params import UNIT_BITS

from ..records import TOKEN_STAT_NAMES, TraceRecord


def _layer_weights(n_layers: int) -> np.ndarray:
    weights = np.exp(np.linspace(-8.0, 0.0, n_layers))
    return weights / weights.sum()


def synthetic_record(rng: np.random.Generator, trace_id: str, n_tokens: int | None = None,
                     row_size: int = 32, n_layers: int = 36, n_units: int = 9728,
                     model_id: str = "synthetic-model", with_stats: bool = True) -> TraceRecord:
    """One realistic-looking trace (float32 masses, aggregate = per-key sum of the rows)."""
    n_tokens = int(n_tokens if n_tokens is not None else rng.integers(64, 2048))
    row_tokens = np.full(-(-n_tokens // row_size), row_size, np.int64)
    row_tokens[-1] = n_tokens - row_size * (row_tokens.size - 1)
    layer_p = _layer_weights(n_layers)
    pool = np.zeros(0, np.uint32)
    keys_rows, masses_rows, ptr = [], [], [0]
    for _ in row_tokens:
        n_entries = int(rng.integers(200, 440))
        n_new = min(n_entries, int(rng.integers(20, 60)) if pool.size else n_entries)
        layers = rng.choice(n_layers, size=n_new, p=layer_p).astype(np.uint32)
        new = (layers << UNIT_BITS) | rng.integers(0, n_units, n_new).astype(np.uint32)
        reuse = n_entries - n_new
        if reuse and pool.size:
            popularity = 1.0 / np.arange(1, pool.size + 1) ** 0.6
            old = rng.choice(pool, size=min(reuse, pool.size), replace=False,
                             p=popularity / popularity.sum())
        else:
            old = np.zeros(0, np.uint32)
        row = np.unique(np.concatenate([new, old]))
        pool = np.concatenate([pool, np.setdiff1d(row, pool)])
        keys_rows.append(row)
        masses_rows.append(np.exp(rng.normal(-0.07, 0.96, row.size)).astype(np.float32))
        ptr.append(ptr[-1] + row.size)
    keys = np.concatenate(keys_rows)
    masses = np.concatenate(masses_rows)
    agg_keys, inverse = np.unique(keys, return_inverse=True)
    agg_masses = np.bincount(inverse, weights=masses, minlength=agg_keys.size).astype(np.float32)
    stats = {}
    if with_stats:
        stats = {name: rng.normal(size=n_tokens).astype(np.float32) for name in TOKEN_STAT_NAMES}
    return TraceRecord(
        trace_id=trace_id, prompt_id=trace_id.rsplit(":", 1)[0], sample_index=0,
        model_id=model_id, model_revision="synthetic", prompt_tokens=int(rng.integers(10, 400)),
        finish_reason="stop", text=f"synthetic response {trace_id}",
        token_ids=rng.integers(0, 151_000, n_tokens).astype(np.int32),
        row_entry_ptr=np.asarray(ptr, np.int64), row_tokens=row_tokens, keys=keys,
        masses=masses, agg_keys=agg_keys, agg_masses=agg_masses, token_stats=stats)


def synthetic_records(n_traces: int, seed: int = 0, prefix: str = "synthetic",
                      **kwargs) -> list[TraceRecord]:
    """``n_traces`` records with ids ``<prefix>:<i>`` (see :func:`synthetic_record`)."""
    rng = np.random.default_rng(seed)
    return [synthetic_record(rng, f"{prefix}:{i}", **kwargs) for i in range(n_traces)]
