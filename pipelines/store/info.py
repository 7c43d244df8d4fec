"""What a store holds, in numbers (``nex store info``): counts, sizes, per-model trace
counts, storage and capture parameters of the completed parts.

``bytes_per_entry`` is the whole store (arrays, zarr metadata, manifests) per row entry;
``sparse_bytes_per_entry`` counts only the arrays holding what a row cache holds
(:data:`ROW_CACHE_CONTENT`), the number comparable with the row-cache layout.
"""

from __future__ import annotations

from ..crashsafe import LEASE_FILE
from .manifests import aggregate_extras

#: Arrays holding what the row-cache layout holds (sparse rows, aggregates, pointers;
#: schema 3's ``pointers`` also holds the per-trace token pointer, a few bytes a trace).
ROW_CACHE_CONTENT = ("trace_row_ptr", "row_entry_ptr", "row_tokens", "keys", "masses",
                     "agg_ptr", "agg_keys", "agg_masses", "pointers", "agg_residuals")
#: Counts summed over the parts' summaries.
_TOTALS = ("n_rows", "n_entries", "n_aggregate_entries", "n_tokens", "saturated_masses",
           "saturated_aggregate_masses")


def array_bytes(store) -> dict:
    """Bytes on disk per array name of ``store`` (an :class:`ActivationStore`), summed over
    its parts (metadata files included)."""
    out: dict[str, int] = {}
    for part in store.parts():
        rel = store.part_rel(part)
        for name in store.loc.listdir(rel):
            if name in ("zarr.json", LEASE_FILE):
                continue
            out[name] = out.get(name, 0) + store.loc.tree_bytes(f"{rel}/{name}")
    return dict(sorted(out.items()))


def store_info(store) -> dict:
    """Counts, sizes and per-model trace counts of the completed parts of ``store``."""
    table = store.manifest()
    summaries = store.part_summaries()
    total = {k: int(sum(s.get(k, 0) for s in summaries.values())) for k in _TOTALS}
    models: dict[str, int] = {}
    for model in table["model_id"].to_pylist():
        models[model] = models.get(model, 0) + 1
    on_disk = store.loc.tree_bytes()
    entries = total["n_entries"]
    per_array = array_bytes(store)
    sparse = sum(v for k, v in per_array.items() if k in ROW_CACHE_CONTENT)
    return {
        "schema_version": store.schema_version,
        "path": str(store.path),
        "traces": table.num_rows,
        "rows": total["n_rows"],
        "entries": entries,
        "aggregate_entries": total["n_aggregate_entries"],
        "tokens": total["n_tokens"],
        "parts": len(summaries),
        "part_names": sorted(summaries),
        "models": dict(sorted(models.items())),
        "bytes_on_disk": on_disk,
        "bytes_per_entry": on_disk / entries if entries else None,
        "sparse_bytes_per_entry": sparse / entries if entries else None,
        "array_bytes": per_array,
        "saturated_masses": total["saturated_masses"],
        "saturated_aggregate_masses": total["saturated_aggregate_masses"],
        "storage": store.storage,
        # one manifest file covers every part: the consolidated one, or the only part's
        "finalized": len(summaries) <= 1 or store.consolidated_manifest() is not None,
        "extra_metadata": aggregate_extras([s.get("extra_metadata", {})
                                            for s in summaries.values()]),
        "capture": store.metadata.get("capture", {}),
        "captures": store.captures,
    }


__all__ = ["ROW_CACHE_CONTENT", "array_bytes", "store_info"]
