"""The part writer: one encoded part written into a zarr group of the store.

The group's attributes are the part summary (counts, part name, on object storage its
``group``), the schema version, the storage dtypes and a CRC-32 per physical array; its
arrays are the part's physical arrays (:func:`~pipelines.store.layout.pack`), chunked,
sharded and compressed as :mod:`pipelines.store.schema` says. Where the group lives (a
staging folder, or a writer's unique group) is the commit protocol's choice
(:mod:`pipelines.store.commit`); the writer only fills it.
"""

from __future__ import annotations

from ..crashsafe import fault_point
from .encode import EncodedPart, checksum
from .fs import Location, group_node
from .layout import AGGREGATES_DERIVED, AGGREGATES_STORED, aggregate_residuals, pack
from .schema import chunk_codecs, chunking, compact_metadata


def group_attributes(arrays: dict, summary: dict, version: int, storage: dict):
    """``(attributes, physical arrays)`` of a part of schema ``version`` from its logical
    ``arrays`` and ``summary``. Schema 3 derives the aggregates when it can (storing
    residual bits) and leaves ``extra_metadata`` to the manifest's summary."""
    if version == 2:
        attributes = dict(summary, schema_version=version)
    else:
        attributes = {k: v for k, v in summary.items() if k != "extra_metadata"}
        attributes["schema_version"] = version
        res = aggregate_residuals(arrays, storage)
        attributes["aggregates"] = AGGREGATES_STORED if res is None else AGGREGATES_DERIVED
        if res is not None:
            arrays = dict(arrays, agg_residuals=res)
    physical = pack(arrays, attributes)
    checksums = {name: checksum(values) for name, values in physical.items()}
    return dict(attributes, storage=storage, checksums=checksums), physical


def write_group(loc: Location, rel: str, part: str, encoded: EncodedPart, summary: dict,
                version: int, storage: dict) -> None:
    """Write ``encoded`` as the zarr group at ``rel`` (its folder exists locally: the
    commit's staging folder, holding the writer's lease). The ``staging`` fault point
    fires after half of the arrays."""
    import zarr

    attributes, arrays = group_attributes(encoded.arrays, summary, version, storage)
    loc.put(f"{rel}/zarr.json", group_node(attributes))
    group = zarr.open_group(store=loc.zarr_store(rel, read_only=False), mode="r+",
                            use_consolidated=False)
    names = list(arrays)
    for index, name in enumerate(names):
        values = arrays[name]
        chunk, shard = chunking(values.size, encoded.counts["n_tokens"]
                                if name == "token_stats" else None)
        # schema 3: no sharding codec (and its metadata) for arrays of one chunk
        shards = (shard,) if version == 2 or shard > chunk else None
        with compact_metadata():  # zarr.json without indentation
            array = group.create_array(
                name, shape=values.shape, dtype=values.dtype, chunks=(chunk,),
                shards=shards, compressors=chunk_codecs(), fill_value=0,
                config={"write_empty_chunks": True})
        if values.size:
            array[:] = values
        if index == len(names) // 2:
            fault_point("staging", part)


__all__ = ["group_attributes", "write_group"]
