"""The store's Parquet manifests: one per part (its completion marker) and the consolidated one.

A part's manifest ``manifests/<part>.parquet`` holds one row per trace of the part
(:func:`~pipelines.store.schema.manifest_schema`) and, in its footer key-value metadata
under :data:`PART_META_KEY`, the part's summary (counts, ``extra_metadata`` and, on object
storage, the ``group`` holding its arrays). :meth:`ActivationStore.finalize` concatenates
them into ``manifest.parquet``, whose footer records under :data:`PARTS_META_KEY` the
summaries of the parts it covers (it is current only while they are the store's parts).
Every manifest is written whole or not at all (:meth:`Location.put_atomic`).
"""

from __future__ import annotations

import json

from nex_transforms.errors import expected

from .encode import EncodedPart
from .fs import Location
from .schema import CONSOLIDATED_MANIFEST, MANIFESTS_DIR, PARQUET_OPTIONS, StoreError, \
    manifest_schema

PART_META_KEY = b"nex_store_part"
PARTS_META_KEY = b"nex_store_parts"


def manifest_rel(part: str) -> str:
    """The part's manifest, relative to the store root."""
    return f"{MANIFESTS_DIR}/{part}.parquet"


def manifest_bytes(table, metadata: dict) -> bytes:
    """A manifest as Parquet bytes, with ``metadata`` in its footer."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, table.schema, **PARQUET_OPTIONS) as writer:
        writer.write_table(table)
        writer.add_key_value_metadata(metadata)
    return sink.getvalue().to_pybytes()


def put_part_manifest(loc: Location, part: str, encoded: EncodedPart, summary: dict) -> None:
    """Write the part's manifest (its traces' rows, ``summary`` in the footer): the moment
    the part becomes complete and visible to readers."""
    import pyarrow as pa

    schema = manifest_schema()
    table = pa.table({name: encoded.columns[name] for name in schema.names}, schema=schema)
    loc.put_atomic(manifest_rel(part),
                   manifest_bytes(table, {PART_META_KEY: json.dumps(summary)}))


def read_manifest(loc: Location, rel: str):
    """The manifest file ``rel`` as a table of :func:`manifest_schema` (no file metadata);
    StoreError when missing or unreadable."""
    import pyarrow.parquet as pq

    source = loc.parquet_file(rel)
    if source is None:
        raise StoreError(expected(f"manifest {loc.path_of(rel)}", "a readable Parquet manifest",
                                  "none"))
    try:
        table = pq.read_table(source)
        return table.replace_schema_metadata(None).cast(manifest_schema())
    except (OSError, ValueError) as err:
        raise StoreError(expected(f"manifest {loc.path_of(rel)}", "a readable Parquet manifest",
                                  err)) from None


def read_part_summary(loc: Location, part: str) -> dict:
    """The summary recorded in the part's manifest footer ({} when none); OSError or
    ValueError when unreadable."""
    meta = loc.parquet_metadata(manifest_rel(part)) or {}
    return json.loads(meta.get(PART_META_KEY, b"{}"))


def concat_manifests(loc: Location, parts: list[str]):
    """The per-part manifests of ``parts`` concatenated, in the given order."""
    import pyarrow as pa

    tables = [read_manifest(loc, manifest_rel(p)) for p in parts]
    if not tables:
        return manifest_schema().empty_table()
    return pa.concat_tables(tables)


def consolidated_summaries(loc: Location) -> dict | None:
    """``{part: summary}`` of the parts the consolidated manifest covers; None when there
    is none. OSError or ValueError when unreadable."""
    meta = loc.parquet_metadata(CONSOLIDATED_MANIFEST)
    return None if meta is None else json.loads(meta.get(PARTS_META_KEY, b"{}"))


def put_consolidated(loc: Location, table, summaries: dict) -> None:
    """Write ``manifest.parquet``: ``table`` (every part's rows) with the covered parts'
    ``summaries`` in its footer."""
    loc.put_atomic(CONSOLIDATED_MANIFEST,
                   manifest_bytes(table, {PARTS_META_KEY: json.dumps(summaries)}))


def aggregate_extras(extras: list[dict]) -> dict:
    """Sum numeric extra metadata over parts; other values become sorted distinct lists
    (per-part mappings, such as the capture's per-trace inputs, are left out)."""
    numbers: dict[str, float] = {}
    others: dict[str, list] = {}
    for extra in extras:
        for key, value in extra.items():
            if isinstance(value, dict):
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                numbers[key] = numbers.get(key, 0) + value
            else:
                seen = others.setdefault(key, [])
                if value not in seen:
                    seen.append(value)
    out: dict = dict(numbers)
    for key, values in others.items():
        out.setdefault(key, sorted(values, key=lambda v: json.dumps(v, sort_keys=True)))
    return dict(sorted(out.items()))


__all__ = ["PARTS_META_KEY", "PART_META_KEY", "aggregate_extras", "concat_manifests",
           "consolidated_summaries", "manifest_bytes", "manifest_rel", "put_consolidated",
           "put_part_manifest", "read_manifest", "read_part_summary"]
