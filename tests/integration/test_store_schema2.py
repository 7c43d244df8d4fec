"""Schema-2 stores (one array per logical array, stored aggregates) are still read, checked
and appended to in their own layout, and read the same as a schema-3 store of the same
traces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipelines.cli import main
from pipelines.store import SCHEMA_VERSION, ActivationStore
from pipelines.store.schema import PART_ARRAYS
from pipelines.testing.traces import synthetic_records
from pipelines.store.verify import verify_store

CAPTURE = {"model_id": "synthetic-model", "top_k": 8}


def schema2_store(path: Path) -> ActivationStore:
    """A fresh store whose root says schema 2 (as the previous version created it): its
    parts are written in the schema-2 layout."""
    ActivationStore.create(path, {"capture": dict(CAPTURE)})
    root = json.loads((path / "zarr.json").read_text())
    root["attributes"]["schema_version"] = 2
    (path / "zarr.json").write_text(json.dumps(root))
    return ActivationStore.create(path, {"capture": dict(CAPTURE)})


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    base = tmp_path_factory.mktemp("schema2")
    records = synthetic_records(5, seed=4, n_tokens=150)
    old, new = schema2_store(base / "v2"), ActivationStore.create(base / "v3",
                                                                 {"capture": dict(CAPTURE)})
    for store in (old, new):
        store.write_part("p0", records[:3])
        store.write_part("p1", records[3:])
        store.finalize()
    return ActivationStore.open(base / "v2"), ActivationStore.open(base / "v3")


def test_a_schema2_store_keeps_its_layout(pair):
    old, new = pair
    assert (old.schema_version, new.schema_version) == (2, SCHEMA_VERSION)
    arrays = sorted(p.name for p in (old.path / "parts" / "p0").iterdir() if p.is_dir())
    assert arrays == sorted([*PART_ARRAYS, "entropy", "self_certainty", "token_logprob",
                             "topk_confidence"])
    node = json.loads((old.path / "parts" / "p0" / "keys" / "zarr.json").read_text())
    assert node["codecs"][0]["name"] == "sharding_indexed"
    assert old.info()["schema_version"] == 2 and verify_store(old).ok and verify_store(new).ok


def test_schema2_and_schema3_read_the_same(pair):
    old, new = pair
    a, b = old.read_corpus(), new.read_corpus()
    for name in ("trace_row_ptr", "row_entry_ptr", "row_tokens", "keys", "masses"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name
    for name in ("row_ptr", "keys", "masses"):
        x, y = getattr(a.aggregates, name), getattr(b.aggregates, name)
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), name
    stats_a, stats_b = old.read_token_stats(), new.read_token_stats()
    for name, (ptr, values) in stats_a.items():
        assert np.array_equal(ptr, stats_b[name][0])
        assert np.array_equal(values, stats_b[name][1], equal_nan=True), name
    for part in ("p0", "p1"):
        for x, y in zip(old.read_records(part), new.read_records(part)):
            assert x.trace_id == y.trace_id and x.agg_masses.tobytes() == y.agg_masses.tobytes()


def test_schema2_and_schema3_score_to_identical_tables(pair, tmp_path):
    import pyarrow.parquet as pq

    old, new = pair
    for store, out in ((old, tmp_path / "t2"), (new, tmp_path / "t3")):
        assert main(["score", str(store.path), "--out", str(out)]) == 0
    for name in ("neurons", "responses", "models"):
        a = pq.read_table(tmp_path / "t2" / f"{name}.parquet").replace_schema_metadata(None)
        b = pq.read_table(tmp_path / "t3" / f"{name}.parquet").replace_schema_metadata(None)
        assert a.equals(b), name


def test_a_schema2_store_is_appended_to_in_its_layout(tmp_path):
    store = schema2_store(tmp_path / "s")
    store.write_part("a", synthetic_records(2, seed=5, n_tokens=60))
    assert (store.path / "parts" / "a" / "agg_keys").is_dir()
    assert not (store.path / "parts" / "a" / "pointers").exists()
    assert verify_store(ActivationStore.open(store.path)).ok
