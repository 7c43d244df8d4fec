"""Unit tests of the store's pure parts: encoding records into part arrays and back."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.records import TraceRecord
from pipelines.store import StoreError, aggregate_extras
from pipelines.store.encode import decode_records, encode_part, to_storage
from pipelines.store.schema import (CHUNK_ELEMENTS, CHUNKS_PER_SHARD, DEFAULT_STORAGE,
                                    check_part_name, check_storage, chunking)
from pipelines.testing.traces import synthetic_records


def test_to_storage_clips_and_counts_float16_saturation():
    stored, saturated = to_storage(np.array([1.0, 70000.0, -1e6, np.inf, np.nan]),
                                   np.dtype("float16"))
    assert saturated == 2
    assert stored.dtype == np.float16
    assert stored[1] == np.finfo(np.float16).max and stored[2] == -np.finfo(np.float16).max
    assert np.isinf(stored[3]) and np.isnan(stored[4])
    same, none = to_storage(np.array([70000.0], np.float32), np.dtype("float32"))
    assert none == 0 and same[0] == 70000.0


@pytest.mark.parametrize("n", [0, 1, 5, CHUNK_ELEMENTS, CHUNK_ELEMENTS + 1,
                               CHUNK_ELEMENTS * CHUNKS_PER_SHARD * 3 + 7])
def test_chunking_gives_shards_that_are_multiples_of_chunks(n):
    chunk, shard = chunking(n)
    assert 1 <= chunk <= CHUNK_ELEMENTS
    assert shard % chunk == 0 and shard // chunk <= CHUNKS_PER_SHARD


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "a b", "a~b", "zarr.json", "a\n", "ü",
                                  None, 3])
def test_bad_part_names_are_refused(name):
    with pytest.raises(StoreError, match="part name: expected"):
        check_part_name(name)


def test_storage_options_are_validated():
    assert check_storage(None) == DEFAULT_STORAGE
    assert check_storage({"mass_dtype": "float32"})["mass_dtype"] == "float32"
    with pytest.raises(StoreError, match="mass_dtype"):
        check_storage({"mass_dtype": "int8"})
    with pytest.raises(StoreError, match="expected keys"):
        check_storage({"other": 1})


def test_encode_then_decode_round_trips_records_in_memory():
    records = synthetic_records(3, seed=4)
    encoded = encode_part("p", records, {"mass_dtype": "float32", "aggregate_dtype": "float32"})
    assert encoded.counts["n_traces"] == 3
    assert encoded.arrays["row_entry_ptr"][-1] == encoded.arrays["keys"].size
    back = decode_records(encoded.arrays, encoded.columns)
    for a, b in zip(records, back):
        assert a.trace_id == b.trace_id
        np.testing.assert_array_equal(a.keys, b.keys)
        np.testing.assert_array_equal(a.masses, b.masses)
        np.testing.assert_array_equal(a.row_entry_ptr, b.row_entry_ptr)
        assert set(a.token_stats) == set(b.token_stats)


def test_encode_refuses_duplicate_ids_and_non_records():
    record = synthetic_records(1, seed=0)[0]
    with pytest.raises(StoreError, match="unique ids"):
        encode_part("p", [record, record], DEFAULT_STORAGE)
    with pytest.raises(StoreError, match="a TraceRecord"):
        encode_part("p", [object()], DEFAULT_STORAGE)


def test_encode_refuses_mismatched_aggregate_lengths():
    r = synthetic_records(1, seed=0)[0]
    bad = TraceRecord(**{**r.__dict__, "agg_masses": r.agg_masses[:-1]})
    with pytest.raises(StoreError, match="agg_masses"):
        encode_part("p", [bad], DEFAULT_STORAGE)


def test_aggregate_extras_sums_numbers_and_lists_other_values():
    out = aggregate_extras([{"nan_activations": 3, "device": "cpu"},
                            {"nan_activations": 2, "device": "cuda"}, {}])
    assert out == {"device": ["cpu", "cuda"], "nan_activations": 5}


def test_encode_refuses_keys_outside_the_key_space_but_keeps_layer_255():
    r = synthetic_records(1, seed=0)[0]
    reserved = r.keys.copy()
    reserved[0] = (255 << 16) | 7
    encode_part("p", [TraceRecord(**{**r.__dict__, "keys": reserved})], DEFAULT_STORAGE)
    outside = r.keys.copy()
    outside[0] = 64 << 16
    with pytest.raises(StoreError, match="layer 64"):
        encode_part("p", [TraceRecord(**{**r.__dict__, "keys": outside})], DEFAULT_STORAGE)
