"""Schema-3 part layout: packing is lossless and aggregate residuals give back the stored
aggregate masses bit for bit (any values, float16 or float32)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.records import TraceRecord
from pipelines.store import StoreError
from pipelines.store.encode import encode_part
from pipelines.store.layout import (aggregate_residuals, apply_residuals, derive_aggregates,
                                    pack, sections, unpack)
from pipelines.store.schema import DEFAULT_STORAGE

SPECIAL = [0.0, -0.0, 1e-8, 65504.0, 7e4, -7e4, np.inf, -np.inf, np.nan, 3.0e38]


def record(rng, trace_id: str, n_rows: int, special: bool) -> TraceRecord:
    ptr, keys, masses = [0], [], []
    for _ in range(n_rows):
        row = np.unique(rng.integers(0, 50, rng.integers(0, 12))).astype(np.uint32)
        keys.append(row)
        values = rng.lognormal(0, 2, row.size)
        if special and row.size:
            values[rng.integers(0, row.size)] = SPECIAL[rng.integers(0, len(SPECIAL))]
        masses.append(values.astype(np.float32))
        ptr.append(ptr[-1] + row.size)
    keys = np.concatenate([np.zeros(0, np.uint32), *keys])
    masses = np.concatenate([np.zeros(0, np.float32), *masses])
    agg_keys, inverse = np.unique(keys, return_inverse=True)
    agg = np.bincount(inverse, weights=masses.astype(np.float64), minlength=agg_keys.size)
    tokens = 3 * n_rows
    return TraceRecord(
        trace_id=trace_id, prompt_id=trace_id, sample_index=0, model_id="m",
        model_revision="r", prompt_tokens=1, finish_reason="stop", text="",
        token_ids=np.arange(tokens, dtype=np.int32), row_entry_ptr=np.asarray(ptr),
        row_tokens=np.full(n_rows, 3), keys=keys, masses=masses, agg_keys=agg_keys,
        agg_masses=agg.astype(np.float32),
        token_stats={"entropy": rng.normal(size=tokens).astype(np.float32)})


def attrs_of(encoded, aggregates: str) -> dict:
    return dict(encoded.counts, schema_version=3, aggregates=aggregates)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), dtype=st.sampled_from(["float16", "float32"]),
       special=st.booleans())
def test_residuals_give_back_the_stored_aggregates_bit_for_bit(seed, dtype, special):
    rng = np.random.default_rng(seed)
    records = [record(rng, f"t{i}", int(rng.integers(0, 5)), special) for i in range(3)]
    storage = dict(DEFAULT_STORAGE, mass_dtype=dtype, aggregate_dtype=dtype)
    encoded = encode_part("p", records, storage)
    res = aggregate_residuals(encoded.arrays, storage)
    assert res is not None  # the aggregate keys are the rows' distinct keys
    attrs = attrs_of(encoded, "derived")
    physical = pack(dict(encoded.arrays, agg_residuals=res), attrs)
    assert sorted(physical) == ["agg_residuals", "keys", "masses", "pointers", "token_ids",
                                "token_stats"]
    back = unpack(physical, attrs, storage)
    for name, values in encoded.arrays.items():
        assert back[name].dtype == values.dtype, name
        assert back[name].tobytes() == values.tobytes(), name


def test_aggregates_that_are_not_the_rows_keys_are_stored_as_they_are():
    rng = np.random.default_rng(1)
    r = record(rng, "t", 3, special=False)
    odd = TraceRecord(**{**r.__dict__, "agg_keys": np.append(r.agg_keys, np.uint32(99)),
                         "agg_masses": np.append(r.agg_masses, np.float32(1.0))})
    encoded = encode_part("p", [odd], DEFAULT_STORAGE)
    assert aggregate_residuals(encoded.arrays, DEFAULT_STORAGE) is None
    attrs = attrs_of(encoded, "stored")
    physical = pack(encoded.arrays, attrs)
    assert {"agg_keys", "agg_masses"} <= set(physical) and "agg_residuals" not in physical
    back = unpack(physical, attrs, DEFAULT_STORAGE)
    assert back["agg_keys"].tobytes() == encoded.arrays["agg_keys"].tobytes()


def test_sections_tile_the_packed_arrays():
    rng = np.random.default_rng(2)
    encoded = encode_part("p", [record(rng, f"t{i}", 2 + i, False) for i in range(3)],
                          DEFAULT_STORAGE)
    where = sections(attrs_of(encoded, "derived"))
    pointer = sorted((o, n) for p, o, n in where.values() if p == "pointers")
    assert [o for o, _ in pointer] == list(np.cumsum([0] + [n for _, n in pointer])[:-1])


def test_derivation_refuses_broken_pointers_and_residuals_of_the_wrong_size():
    with pytest.raises(StoreError, match="entry pointer"):
        derive_aggregates(np.array([0, 2]), np.array([0, 3, 1]), np.zeros(1, np.uint32),
                          np.zeros(1, np.float16), np.float16)
    derived = np.ones(3, np.float16)
    with pytest.raises(StoreError, match="residuals"):
        apply_residuals(derived, np.zeros(2, np.uint16))
