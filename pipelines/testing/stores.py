"""Synthetic multi-model activation stores for engine tests and benchmarks.

Traces come from :func:`pipelines.testing.corpora.synthetic_corpus` (explore bursts and exploit
stretches, so learned weights and GMFs carry structure), spread over several model ids
and written as store parts with per-token statistics (left out for some traces, so the
baselines are NaN there).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..records import TOKEN_STAT_NAMES, TraceRecord
from ..store import ActivationStore
from .corpora import SyntheticSpec, synthetic_corpus


def synthetic_store(path: str | Path, n_traces: int = 60, models: tuple = ("model-a", "model-b"),
                    traces_per_part: int = 20, samples_per_prompt: int = 4, min_rows: int = 4,
                    max_rows: int = 16, keys_per_row: int = 60, stats_every: int = 3,
                    n_layers: int = 16, units_per_layer: int = 2048, seed: int = 0,
                    finalize: bool = True):
    """Write a store of ``n_traces`` synthetic traces and return it (opened for reading).

    Trace ``i`` belongs to ``models[i // traces_per_part % len(models)]`` (so each part
    holds one model, as capture writes them), prompt ``i // samples_per_prompt``; every
    ``stats_every``-th trace has no per-token statistics (0: all have them). Each model's
    capture record names ``n_layers`` hooked layers of ``units_per_layer`` units.
    """
    spec = SyntheticSpec(n_traces=n_traces, min_rows=min_rows, max_rows=max_rows,
                         keys_per_row=keys_per_row, units_per_layer=units_per_layer,
                         n_layers=n_layers,
                         seed=seed)
    corpus = synthetic_corpus(spec)
    aggregates = corpus.aggregate()
    rng = np.random.default_rng(seed + 1)
    for model in models:  # one capture record per model, like `nex capture` appending
        store = ActivationStore.create(path, {"capture": {
            "model_id": model, "synthetic": True, "seed": seed,
            "layers": list(range(n_layers)), "intermediate_size": units_per_layer}})
    records: list[TraceRecord] = []
    for t in range(n_traces):
        r0, r1 = int(corpus.trace_row_ptr[t]), int(corpus.trace_row_ptr[t + 1])
        e0, e1 = int(corpus.row_entry_ptr[r0]), int(corpus.row_entry_ptr[r1])
        a0, a1 = int(aggregates.row_ptr[t]), int(aggregates.row_ptr[t + 1])
        row_tokens = corpus.row_tokens[r0:r1]
        n_tokens = int(row_tokens.sum())
        model = models[(t // traces_per_part) % len(models)]
        stats = {}
        if not (stats_every and t % stats_every == stats_every - 1):
            stats = {name: rng.normal(size=n_tokens).astype(np.float32)
                     for name in TOKEN_STAT_NAMES}
        records.append(TraceRecord(
            trace_id=f"{model}:p{t // samples_per_prompt}:{t % samples_per_prompt}:{t}",
            prompt_id=f"p{t // samples_per_prompt}", sample_index=t % samples_per_prompt,
            model_id=model, model_revision="synthetic", prompt_tokens=16,
            finish_reason="stop", text=f"synthetic {t}",
            token_ids=rng.integers(0, 50_000, n_tokens).astype(np.int32),
            row_entry_ptr=corpus.row_entry_ptr[r0:r1 + 1] - e0, row_tokens=row_tokens,
            keys=corpus.keys[e0:e1], masses=corpus.masses[e0:e1],
            agg_keys=aggregates.keys[a0:a1], agg_masses=aggregates.masses[a0:a1],
            token_stats=stats))
    for start in range(0, n_traces, traces_per_part):
        store.write_part(f"part-{start // traces_per_part:05d}",
                         records[start:start + traces_per_part])
    if finalize:
        store.finalize()
    return ActivationStore.open(path)
