"""Lossless import of a row cache (METHOD.md section 7) into the store, and export back."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from nex_transforms import Aggregates
from nex_transforms.errors import expected

from ..records import TraceRecord
from ..rows_cache import read_rows_cache, write_rows_cache
from .encode import to_storage
from .schema import StoreError
from .store import ActivationStore

#: Capture parameters recorded for stores built from imported row caches.
IMPORT_CAPTURE = {"source": "rows-cache-import", "row_cache_mass_dtype": "float16"}
DEFAULT_MODEL_ID = "imported"
TRACES_PER_PART = 1000


def part_prefix(name: str) -> str:
    """A part-name-safe form of a cache name."""
    return "import-" + (re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "cache")


def cache_records(corpus, name: str, model_id: str) -> list[TraceRecord]:
    """TraceRecords of a row-cache corpus: ids ``<name>:<index>``, unknown token ids (-1)."""
    agg = corpus.aggregate()
    out = []
    for t in range(corpus.n_traces):
        r0, r1 = int(corpus.trace_row_ptr[t]), int(corpus.trace_row_ptr[t + 1])
        e0, e1 = int(corpus.row_entry_ptr[r0]), int(corpus.row_entry_ptr[r1])
        a0, a1 = int(agg.row_ptr[t]), int(agg.row_ptr[t + 1])
        row_tokens = corpus.row_tokens[r0:r1]
        out.append(TraceRecord(
            trace_id=f"{name}:{t}", prompt_id=f"{name}:{t}", sample_index=0,
            model_id=model_id, model_revision="", prompt_tokens=0, finish_reason="unknown",
            text="", token_ids=np.full(int(row_tokens.sum()), -1, np.int32),
            row_entry_ptr=corpus.row_entry_ptr[r0:r1 + 1] - e0, row_tokens=row_tokens,
            keys=corpus.keys[e0:e1], masses=corpus.masses[e0:e1],
            agg_keys=agg.keys[a0:a1], agg_masses=agg.masses[a0:a1]))
    return out


def import_rows_cache(cache, store_path, model_id: str = DEFAULT_MODEL_ID,
                      name: str | None = None,
                      traces_per_part: int = TRACES_PER_PART) -> tuple[ActivationStore, list[str]]:
    """Import a row cache as parts ``import-<name>-<00000>`` (order kept); returns the store
    and the part names. Parts already complete are skipped (rerun-safe)."""
    cache = Path(cache)
    name = name or cache.resolve().name
    if traces_per_part < 1:
        raise StoreError(expected("traces per part", "at least 1", traces_per_part))
    corpus = read_rows_cache(cache)
    if corpus.masses.dtype != np.float16:
        raise StoreError(expected(f"row cache {cache} masses", "float16", corpus.masses.dtype))
    store = ActivationStore.create(store_path, {"capture": dict(IMPORT_CAPTURE),
                                                "storage": {"mass_dtype": "float16",
                                                            "aggregate_dtype": "float16"}})
    records = cache_records(corpus, name, model_id)
    prefix = part_prefix(name)
    parts = []
    for index, start in enumerate(range(0, len(records), traces_per_part)):
        part = f"{prefix}-{index:05d}"
        store.write_part(part, records[start:start + traces_per_part],
                         {"source_cache": str(cache.resolve()), "model_id": model_id})
        parts.append(part)
    return store, parts


@dataclass(frozen=True)
class ExportResult:
    """Where an export went and how many masses were clipped to the float16 range."""

    path: Path
    traces: int
    clipped_masses: int
    clipped_aggregate_masses: int


def export_rows_cache(store: ActivationStore, cache, model_id: str | None = None) -> ExportResult:
    """Write the store's traces (of one model, or all) in the row-cache layout, manifest order.

    The layout stores float16 masses: finite masses beyond its range (possible in a store
    with float32 masses) are clipped to its largest value and counted, never turned into
    infinities.
    """
    trace_ids = None
    if model_id is not None:
        table = store.manifest()
        trace_ids = [t for t, m in zip(table["trace_id"].to_pylist(),
                                       table["model_id"].to_pylist()) if m == model_id]
        if not trace_ids:
            models = sorted(set(table["model_id"].to_pylist()))
            raise StoreError(expected("--model-id", f"one of {models}", repr(model_id)))
    corpus = store.read_corpus(trace_ids=trace_ids)
    if corpus.n_traces == 0:
        raise StoreError(expected(f"store {store.path}", "at least one trace", "none"))
    masses, clipped = to_storage(corpus.masses, np.dtype(np.float16))
    agg = corpus.aggregate()
    agg_masses, agg_clipped = to_storage(agg.masses, np.dtype(np.float16))
    corpus = replace(corpus, masses=masses,
                     aggregates=Aggregates(agg.row_ptr, agg.keys, agg_masses))
    path = write_rows_cache(corpus, cache)
    return ExportResult(path, corpus.n_traces, clipped, agg_clipped)
