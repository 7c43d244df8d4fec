"""Turn a list of :class:`TraceRecord` into the arrays and manifest rows of one part, and back;
the per-array checksum recorded at write and checked by the readers."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from nex_transforms import KEY_SPACE, RESERVED_LAYER, UNIT_BITS
from nex_transforms.errors import expected

from ..records import TraceRecord
from .schema import (STATUS_COMPLETE, TOKEN_STAT_LIMIT, TOKEN_STAT_STEP, TOKEN_STATS,
                     StoreError, array_dtype)


@dataclass(frozen=True)
class EncodedPart:
    """The arrays, manifest columns and counts of one part, ready to write."""

    arrays: dict
    columns: dict
    counts: dict


def checksum(array: np.ndarray) -> int:
    """CRC-32 of an array's little-endian bytes (recorded per array, checked by verify)."""
    data = np.ascontiguousarray(array)
    return zlib.crc32(data.astype(data.dtype.newbyteorder("<"), copy=False).tobytes())


def _pointer(lengths: list[int]) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(np.asarray(lengths, dtype=np.int64))]).astype(np.int64)


def to_storage(values: np.ndarray, dtype: np.dtype) -> tuple[np.ndarray, int]:
    """Cast masses to the storage dtype; finite values beyond its range are clipped.

    Returns the stored array and how many values saturated (were clipped).
    """
    values = np.asarray(values, dtype=np.float64)
    limit = float(np.finfo(dtype).max)
    over = np.isfinite(values) & (np.abs(values) > limit)
    if over.any():
        values = np.where(over, np.sign(values) * limit, values)
    return values.astype(dtype), int(over.sum())


def quantize_token_stat(values: np.ndarray, ptr: np.ndarray, step: float = TOKEN_STAT_STEP,
                        limit: float = TOKEN_STAT_LIMIT) -> np.ndarray:
    """Round per-token values (concatenated traces, trace t owns ``[ptr[t], ptr[t+1])``)
    so that running sums are kept: returns float64 values to be cast to float16.

    Within each trace, the finite values with ``|x| < limit`` are replaced by the
    differences of their running sums rounded to multiples of ``step``: each running sum
    of those values stays within ``step / 2`` of the exact one, each value moves by at
    most ``step``, and every new value is a multiple of ``step`` below ``limit + step``
    (exact in float16 when ``limit <= 1024 * step``). Other values (large, NaN, inf) are
    returned unchanged.
    """
    x = np.asarray(values, dtype=np.float64)
    out = x.copy()
    idx = np.flatnonzero(np.isfinite(x) & (np.abs(x) < limit))
    if idx.size == 0:
        return out
    trace = np.searchsorted(np.asarray(ptr), idx, side="right") - 1
    small = x[idx]
    total = np.cumsum(small)
    first = np.ones(idx.size, dtype=bool)
    first[1:] = trace[1:] != trace[:-1]
    before = (total - small)[first]  # running total before each trace's first value
    within = total - before[np.cumsum(first) - 1]
    rounded = np.round(within / step)
    previous = np.empty_like(rounded)
    previous[0] = 0.0
    previous[1:] = rounded[:-1]
    previous[first] = 0.0
    out[idx] = (rounded - previous) * step
    return out


def _check_records(records: object) -> list[TraceRecord]:
    if not isinstance(records, (list, tuple)):
        raise StoreError(expected("records", "a list of TraceRecord", type(records).__name__))
    seen: set[str] = set()
    for index, record in enumerate(records):
        if not isinstance(record, TraceRecord):
            raise StoreError(expected(f"records[{index}]", "a TraceRecord",
                                      type(record).__name__))
        if record.trace_id in seen:
            raise StoreError(expected("trace ids of a part", "unique ids",
                                      f"{record.trace_id!r} twice"))
        seen.add(record.trace_id)
        agg = np.asarray(record.agg_keys).size
        if np.asarray(record.agg_masses).size != agg:
            raise StoreError(expected(f"trace {record.trace_id} agg_masses",
                                      f"{agg} values (one per aggregate key)",
                                      np.asarray(record.agg_masses).size))
        if np.asarray(record.masses).size != np.asarray(record.keys).size:
            raise StoreError(expected(f"trace {record.trace_id} masses",
                                      f"{np.asarray(record.keys).size} values (one per key)",
                                      np.asarray(record.masses).size))
    return list(records)


def _keys(values, what: str) -> np.ndarray:
    keys = np.asarray(values)
    if keys.size and (not np.issubdtype(keys.dtype, np.integer) or keys.min() < 0
                      or keys.max() > np.iinfo(np.uint32).max):
        raise StoreError(expected(what, "uint32 keys", f"{keys.dtype} values"))
    keys = keys.astype(np.uint32)
    outside = ((keys >> UNIT_BITS) != RESERVED_LAYER) & (keys >= KEY_SPACE)
    if outside.any():
        key = int(keys[np.argmax(outside)])
        raise StoreError(expected(what, f"keys below 2^22 or layer {RESERVED_LAYER}",
                                  f"key {key} (layer {key >> UNIT_BITS})"))
    return keys


def encode_part(part: str, records: list[TraceRecord], storage: dict) -> EncodedPart:
    """Pack records into the part's CSR arrays and manifest columns (records keep their order)."""
    records = _check_records(records)
    cat = _concat
    row_counts = [r.n_rows for r in records]
    entry_ptr_parts, offset = [], 0
    for r in records:
        ptr = np.asarray(r.row_entry_ptr, dtype=np.int64)
        entry_ptr_parts.append(ptr[1:] + offset)
        offset += int(ptr[-1])
    masses, sat_rows = to_storage(cat([r.masses for r in records], np.float64),
                                  array_dtype("masses", storage))
    agg_masses, sat_agg = to_storage(cat([r.agg_masses for r in records], np.float64),
                                     array_dtype("agg_masses", storage))
    token_counts = [r.response_tokens for r in records]
    arrays = {
        "trace_row_ptr": _pointer(row_counts),
        "row_entry_ptr": np.concatenate([np.zeros(1, np.int64)] + entry_ptr_parts),
        "row_tokens": cat([r.row_tokens for r in records], np.int32),
        "keys": cat([_keys(r.keys, f"trace {r.trace_id} keys") for r in records], np.uint32),
        "masses": masses,
        "agg_ptr": _pointer([np.asarray(r.agg_keys).size for r in records]),
        "agg_keys": cat([_keys(r.agg_keys, f"trace {r.trace_id} agg_keys") for r in records],
                        np.uint32),
        "agg_masses": agg_masses,
        "token_ptr": _pointer(token_counts),
        "token_ids": cat([r.token_ids for r in records], np.int32),
    }
    present = [name for name in TOKEN_STATS if any(name in r.token_stats for r in records)]
    sat_stats = 0
    for name in present:
        values = cat([np.asarray(r.token_stats[name], dtype=np.float32)
                      if name in r.token_stats
                      else np.full(r.response_tokens, np.nan, np.float32)
                      for r in records], np.float32)
        dtype = array_dtype(name, storage)
        if dtype == np.float16:
            values = quantize_token_stat(values, arrays["token_ptr"])
        arrays[name], saturated = to_storage(values, dtype)
        sat_stats += saturated
    columns = _manifest_columns(part, records, arrays)
    counts = {
        "n_traces": len(records), "n_rows": int(sum(row_counts)),
        "n_entries": int(arrays["keys"].size), "n_aggregate_entries": int(agg_masses.size),
        "n_tokens": int(sum(token_counts)), "token_stats": present,
        "saturated_masses": sat_rows, "saturated_aggregate_masses": sat_agg,
        "saturated_token_stats": sat_stats,
    }
    return EncodedPart(arrays=arrays, columns=columns, counts=counts)


def _concat(chunks, dtype) -> np.ndarray:
    chunks = [np.asarray(c, dtype=dtype).ravel() for c in chunks]
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype)


def _manifest_columns(part: str, records: list[TraceRecord], arrays: dict) -> dict:
    trace_row, entry_ptr = arrays["trace_row_ptr"], arrays["row_entry_ptr"]
    agg_ptr, token_ptr = arrays["agg_ptr"], arrays["token_ptr"]
    return {
        "trace_id": [r.trace_id for r in records],
        "prompt_id": [str(r.prompt_id) for r in records],
        "sample_index": [int(r.sample_index) for r in records],
        "model_id": [str(r.model_id) for r in records],
        "model_revision": [str(r.model_revision) for r in records],
        "part": [part] * len(records),
        "trace_index": list(range(len(records))),
        "row_start": trace_row[:-1], "row_stop": trace_row[1:],
        "entry_start": entry_ptr[trace_row[:-1]], "entry_stop": entry_ptr[trace_row[1:]],
        "agg_start": agg_ptr[:-1], "agg_stop": agg_ptr[1:],
        "token_start": token_ptr[:-1], "token_stop": token_ptr[1:],
        "prompt_tokens": [int(r.prompt_tokens) for r in records],
        "response_tokens": [r.response_tokens for r in records],
        "n_rows": np.diff(trace_row),
        "n_entries": entry_ptr[trace_row[1:]] - entry_ptr[trace_row[:-1]],
        "finish_reason": [str(r.finish_reason) for r in records],
        "text": [str(r.text) for r in records],
        "reference_answer": [None if r.reference_answer is None else str(r.reference_answer)
                             for r in records],
        "token_stats": [sorted(r.token_stats, key=TOKEN_STATS.index) for r in records],
        "status": [STATUS_COMPLETE] * len(records),
    }


def decode_records(arrays: dict, manifest: dict) -> list[TraceRecord]:
    """Rebuild the records of a part from its arrays and manifest columns (as python lists)."""
    out = []
    trace_row, entry_ptr = arrays["trace_row_ptr"], arrays["row_entry_ptr"]
    for t, trace_id in enumerate(manifest["trace_id"]):
        r0, r1 = int(trace_row[t]), int(trace_row[t + 1])
        e0, e1 = int(entry_ptr[r0]), int(entry_ptr[r1])
        a0, a1 = int(arrays["agg_ptr"][t]), int(arrays["agg_ptr"][t + 1])
        k0, k1 = int(arrays["token_ptr"][t]), int(arrays["token_ptr"][t + 1])
        stats = {name: arrays[name][k0:k1].astype(np.float32)
                 for name in manifest["token_stats"][t]}
        out.append(TraceRecord(
            trace_id=trace_id, prompt_id=manifest["prompt_id"][t],
            sample_index=int(manifest["sample_index"][t]), model_id=manifest["model_id"][t],
            model_revision=manifest["model_revision"][t],
            prompt_tokens=int(manifest["prompt_tokens"][t]),
            finish_reason=manifest["finish_reason"][t], text=manifest["text"][t],
            token_ids=arrays["token_ids"][k0:k1].astype(np.int32),
            row_entry_ptr=(entry_ptr[r0:r1 + 1] - e0).astype(np.int64),
            row_tokens=arrays["row_tokens"][r0:r1].astype(np.int64),
            keys=arrays["keys"][e0:e1].astype(np.uint32),
            masses=arrays["masses"][e0:e1].astype(np.float32),
            agg_keys=arrays["agg_keys"][a0:a1].astype(np.uint32),
            agg_masses=arrays["agg_masses"][a0:a1].astype(np.float32),
            token_stats=stats, reference_answer=manifest["reference_answer"][t],
        ))
    return out
