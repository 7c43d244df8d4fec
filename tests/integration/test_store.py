"""The activation store on a real filesystem: round trips, reading, verify, schema checks, CLI."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.cli import main
from pipelines.records import TOKEN_STAT_NAMES, TraceRecord
from pipelines.store import SCHEMA_VERSION, ActivationStore, StoreError
from pipelines.store.encode import quantize_token_stat
from pipelines.testing.traces import synthetic_records
from pipelines.store.verify import verify_store

from tests.store_edit import edit_logical

CAPTURE = {"model_id": "tiny", "revision": "r1", "dtype": "float32", "top_k": 500,
           "layers": [0, 1, 2], "row_size": 32}
F16_MAX = float(np.finfo(np.float16).max)


def new_store(path: Path, **extra) -> ActivationStore:
    return ActivationStore.create(path, {"capture": dict(CAPTURE), **extra})


def tree(path: Path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


# ------------------------------------------------------------------ record strategy
@st.composite
def records_strategy(draw):
    n_traces = draw(st.integers(0, 4))
    out = []
    for t in range(n_traces):
        n_rows = draw(st.integers(0, 4))
        row_tokens = np.array([draw(st.integers(0, 5)) for _ in range(n_rows)], np.int64)
        keys, masses, ptr = [], [], [0]
        for _ in range(n_rows):
            n = draw(st.integers(0, 6))
            layer = draw(st.lists(st.sampled_from([0, 5, 63, 255]), min_size=n, max_size=n))
            unit = draw(st.lists(st.integers(0, 65535), min_size=n, max_size=n))
            keys += [(a << 16) | b for a, b in zip(layer, unit)]
            masses += draw(st.lists(st.floats(-100, 1e5, width=32), min_size=n, max_size=n))
            ptr.append(len(keys))
        keys = np.array(keys, np.uint32)
        masses = np.array(masses, np.float32)
        agg_keys, inverse = np.unique(keys, return_inverse=True)
        agg = np.bincount(inverse, weights=masses, minlength=agg_keys.size).astype(np.float32)
        n_tokens = int(row_tokens.sum())
        stats = {name: np.array(draw(st.lists(st.floats(-50, 50, width=32), min_size=n_tokens,
                                              max_size=n_tokens)), np.float32)
                 for name in draw(st.sets(st.sampled_from(TOKEN_STAT_NAMES)))}
        out.append(TraceRecord(
            trace_id=f"m:{draw(st.text(max_size=5))}:{t}", prompt_id=draw(st.text(max_size=8)),
            sample_index=draw(st.integers(0, 10)), model_id=draw(st.sampled_from(["a", "b"])),
            model_revision="rev", prompt_tokens=draw(st.integers(0, 100)),
            finish_reason=draw(st.sampled_from(["stop", "length", "forced"])),
            text=draw(st.text(max_size=20)),
            token_ids=np.array(draw(st.lists(st.integers(0, 2**31 - 1), min_size=n_tokens,
                                             max_size=n_tokens)), np.int32),
            row_entry_ptr=np.array(ptr, np.int64), row_tokens=row_tokens, keys=keys,
            masses=masses, agg_keys=agg_keys, agg_masses=agg, token_stats=stats,
            reference_answer=draw(st.none() | st.text(max_size=5))))
    return out


def as_stored(values: np.ndarray) -> np.ndarray:
    return np.clip(values.astype(np.float64), -F16_MAX, F16_MAX).astype(np.float16)


def stored_stat(values: np.ndarray) -> np.ndarray:
    """A trace's token statistic as the store keeps it (running-sum quantised float16)."""
    return as_stored(quantize_token_stat(values, np.array([0, np.asarray(values).size])))


def assert_same_record(a: TraceRecord, b: TraceRecord) -> None:
    for name in ("trace_id", "prompt_id", "sample_index", "model_id", "model_revision",
                 "prompt_tokens", "finish_reason", "text", "reference_answer"):
        assert getattr(a, name) == getattr(b, name), name
    for name in ("token_ids", "row_entry_ptr", "row_tokens", "keys", "agg_keys"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    np.testing.assert_array_equal(as_stored(a.masses), b.masses.astype(np.float16))
    np.testing.assert_array_equal(as_stored(a.agg_masses), b.agg_masses.astype(np.float16))
    assert sorted(a.token_stats) == sorted(b.token_stats)
    for name, values in a.token_stats.items():  # stored as float16 (schema 2), read as float32
        np.testing.assert_array_equal(stored_stat(values), b.token_stats[name].astype(np.float16))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=records_strategy())
def test_records_round_trip_through_a_part(records):
    with tempfile.TemporaryDirectory() as tmp:
        store = new_store(Path(tmp) / "s")
        store.write_part("p-0", records, {"nan_activations": 1})
        back = ActivationStore.open(store.path).read_records("p-0")
        assert len(back) == len(records)
        for a, b in zip(records, back):
            assert_same_record(a, b)
        report = verify_store(ActivationStore.open(store.path))
        assert report.ok, report.problems
        corpus = store.read_corpus()
        assert corpus.n_traces == len(records)
        assert corpus.n_entries == sum(r.keys.size for r in records)


# ------------------------------------------------------------------ API behaviour
@pytest.fixture()
def two_part_store(tmp_path) -> ActivationStore:
    store = new_store(tmp_path / "s")
    store.write_part("b", synthetic_records(3, seed=1, prefix="b", n_tokens=100),
                     {"nan_activations": 2, "device": "cpu"})
    store.write_part("a", synthetic_records(2, seed=2, prefix="a", n_tokens=70,
                                            model_id="other", with_stats=False),
                     {"nan_activations": 1, "device": "cpu"})
    return store


def test_manifest_has_one_row_per_trace_in_part_order(two_part_store):
    table = two_part_store.manifest()
    assert table.column_names[:6] == ["trace_id", "prompt_id", "sample_index", "model_id",
                                      "model_revision", "part"]
    assert table["trace_id"].to_pylist() == ["a:0", "a:1", "b:0", "b:1", "b:2"]
    assert set(table["status"].to_pylist()) == {"complete"}
    assert two_part_store.parts() == ["a", "b"]


def test_read_corpus_selects_traces_in_manifest_order(two_part_store):
    full = two_part_store.read_corpus()
    assert full.n_traces == 5 and full.aggregates is not None
    some = two_part_store.read_corpus(trace_ids=["b:2", "a:1"])
    assert some.n_traces == 2
    expected = full.select(np.array([1, 4]))
    np.testing.assert_array_equal(some.keys, expected.keys)
    np.testing.assert_array_equal(some.masses, expected.masses)
    np.testing.assert_array_equal(some.aggregates.keys, expected.aggregates.keys)
    only_b = two_part_store.read_corpus(parts=["b"])
    assert only_b.n_traces == 3
    with pytest.raises(StoreError, match="unknown"):
        two_part_store.read_corpus(trace_ids=["nope"])
    with pytest.raises(StoreError, match="part"):
        two_part_store.read_corpus(parts=["zzz"])


def test_read_token_stats_fills_missing_statistics_with_nan(two_part_store):
    stats = two_part_store.read_token_stats()
    ptr, ids = stats["token_ids"]
    assert ptr.tolist() == [0, 70, 140, 240, 340, 440] and ids.dtype == np.int32
    ptr, entropy = stats["entropy"]
    assert np.isnan(entropy[:140]).all() and np.isfinite(entropy[140:]).all()
    b1 = two_part_store.read_token_stats(trace_ids=["b:1"])
    record = two_part_store.read_records("b")[1]
    np.testing.assert_array_equal(b1["token_logprob"][1],
                                  stored_stat(record.token_stats["token_logprob"]).astype(np.float32))


def test_rewriting_a_complete_part_is_a_no_op(two_part_store):
    before = tree(two_part_store.path)
    two_part_store.write_part("a", synthetic_records(1, seed=9, prefix="x"))
    assert tree(two_part_store.path) == before


def test_info_sums_extras_and_counts_models(two_part_store):
    info = two_part_store.info()
    assert info["traces"] == 5 and info["parts"] == 2
    assert info["models"] == {"other": 2, "synthetic-model": 3}
    assert info["extra_metadata"] == {"device": ["cpu"], "nan_activations": 3}
    assert info["tokens"] == 440 and info["schema_version"] == SCHEMA_VERSION


def test_finalize_is_idempotent_and_readers_see_parts_added_later(two_part_store):
    two_part_store.finalize()
    first = tree(two_part_store.path)
    two_part_store.finalize()
    assert tree(two_part_store.path).keys() == first.keys()
    root = json.loads((two_part_store.path / "zarr.json").read_text())
    # no consolidated zarr metadata (readers open each part's group): it only added bytes
    assert "consolidated_metadata" not in root
    assert root["attributes"]["schema_version"] == SCHEMA_VERSION
    assert zarr.open_group(str(two_part_store.path), mode="r")["parts/a/keys"].shape[0] > 0
    assert two_part_store.info()["finalized"]
    two_part_store.write_part("c", synthetic_records(1, seed=3, prefix="c", n_tokens=40))
    reader = ActivationStore.open(two_part_store.path)
    assert reader.manifest().num_rows == 6 and not reader.info()["finalized"]
    assert verify_store(reader).ok


def test_read_only_store_refuses_writes(two_part_store):
    reader = ActivationStore.open(two_part_store.path)
    with pytest.raises(StoreError, match="read-only"):
        reader.write_part("z", [])
    with pytest.raises(StoreError, match="read-only"):
        reader.finalize()


def test_saturated_masses_are_clipped_and_counted(tmp_path):
    r = synthetic_records(1, seed=5, n_tokens=40)[0]
    masses = r.masses.copy()
    masses[:3] = [70000.0, 1e9, -8e4]
    store = new_store(tmp_path / "s")
    store.write_part("p", [TraceRecord(**{**r.__dict__, "masses": masses})])
    assert store.info()["saturated_masses"] == 3
    back = store.read_records("p")[0].masses
    assert back[:3].tolist() == [F16_MAX, F16_MAX, -F16_MAX]


def test_float32_storage_keeps_masses_exactly(tmp_path):
    records = synthetic_records(2, seed=6, n_tokens=50)
    store = new_store(tmp_path / "s", storage={"mass_dtype": "float32",
                                               "aggregate_dtype": "float32"})
    store.write_part("p", records)
    for a, b in zip(records, ActivationStore.open(store.path).read_records("p")):
        np.testing.assert_array_equal(a.masses, b.masses)
        np.testing.assert_array_equal(a.agg_masses, b.agg_masses)


# ------------------------------------------------------------------ creation errors
def test_open_refuses_missing_paths_and_foreign_directories(tmp_path):
    with pytest.raises(StoreError, match="expected an existing directory"):
        ActivationStore.open(tmp_path / "missing")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "data.txt").write_text("x")
    with pytest.raises(StoreError, match="store_kind"):
        ActivationStore.open(tmp_path / "other")
    with pytest.raises(StoreError, match="an empty directory or a NEX store"):
        new_store(tmp_path / "other")


def test_schema_version_mismatch_is_refused_and_nothing_is_lost(two_part_store):
    root = two_part_store.path / "zarr.json"
    node = json.loads(root.read_text())
    node["attributes"]["schema_version"] = SCHEMA_VERSION + 1
    root.write_text(json.dumps(node))
    before = tree(two_part_store.path)
    for attempt in (lambda: new_store(two_part_store.path),
                    lambda: ActivationStore.open(two_part_store.path)):
        with pytest.raises(StoreError) as err:
            attempt()
        assert "expected 2 or 3" in str(err.value)
        assert f"got {SCHEMA_VERSION + 1}" in str(err.value)
    assert tree(two_part_store.path) == before
    assert main(["store", "info", str(two_part_store.path)]) == 2


def test_appending_with_other_capture_parameters_names_the_keys(two_part_store):
    other = dict(CAPTURE, top_k=100, dtype="bfloat16")
    with pytest.raises(StoreError) as err:
        ActivationStore.create(two_part_store.path, {"capture": other})
    assert "['dtype', 'top_k']" in str(err.value)
    same = ActivationStore.create(two_part_store.path, {"capture": dict(CAPTURE)})
    assert same.parts() == ["a", "b"]


# ------------------------------------------------------------------ verify
def test_verify_passes_on_a_sound_store(two_part_store, capsys):
    assert main(["store", "verify", str(two_part_store.path)]) == 0
    assert capsys.readouterr().out.startswith("ok: 2 parts, 5 traces")


def test_verify_names_a_corrupted_pointer(two_part_store, capsys):
    row = int(np.asarray(two_part_store.manifest(["b"])["row_start"])[1]) + 2

    def change(values):
        values[row] = values[row + 1] + 5

    edit_logical(two_part_store.path / "parts" / "b", "row_entry_ptr", change)
    assert main(["store", "verify", str(two_part_store.path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nex: error: verify") and err.count("\n") == 1
    assert "part b, trace b:1: row_entry_ptr: expected non-decreasing values" in err


def test_verify_catches_a_deleted_chunk_file(two_part_store, capsys):
    (two_part_store.path / "parts" / "a" / "keys" / "c" / "0").unlink()
    assert main(["store", "verify", str(two_part_store.path)]) == 2
    assert "part a: array keys shard 0: expected shard file" in capsys.readouterr().err


def test_verify_catches_changed_values_by_checksum(two_part_store):
    array = zarr.open_array(str(two_part_store.path / "parts" / "a" / "token_ids"), mode="r+")
    array[0] = array[0] + 1
    report = verify_store(ActivationStore.open(two_part_store.path))
    assert "part a: array token_ids: expected CRC-32" in report.problems[0]


def test_verify_catches_a_wrong_aggregate(two_part_store):
    def change(residuals):  # the stored aggregate mass moves far from its rows' sum
        residuals[5] += 0x800

    edit_logical(two_part_store.path / "parts" / "b", "agg_residuals", change)
    report = verify_store(ActivationStore.open(two_part_store.path))
    assert report.problems[0].startswith("part b, trace b:0: aggregate of key")


def test_verify_catches_a_duplicate_trace_id_across_parts(two_part_store, capsys):
    two_part_store.write_part("c", synthetic_records(1, seed=1, prefix="b", n_tokens=30))
    assert main(["store", "verify", str(two_part_store.path)]) == 2
    err = capsys.readouterr().err
    assert "part c, trace b:0: duplicate trace id" in err and "part b" in err


def test_verify_catches_a_manifest_part_without_arrays(two_part_store):
    shutil.rmtree(two_part_store.path / "parts" / "a")
    report = verify_store(ActivationStore.open(two_part_store.path))
    assert report.problems[0].startswith("part a: part arrays: expected a group")


def test_info_cli_prints_json_with_the_documented_keys(two_part_store, capsys):
    assert main(["store", "info", str(two_part_store.path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    for key in ("traces", "rows", "entries", "tokens", "bytes_on_disk", "bytes_per_entry",
                "models", "parts", "schema_version"):
        assert key in info
    assert main(["store", "finalize", str(two_part_store.path)]) == 0
    assert ActivationStore.open(two_part_store.path).info()["finalized"]


# ------------------------------------------------------------------ format (golden facts)
def test_stored_format_matches_the_documented_schema(two_part_store):
    root = json.loads((two_part_store.path / "zarr.json").read_text())
    assert root["zarr_format"] == 3 and root["node_type"] == "group"
    assert root["attributes"]["store_kind"] == "nex-activation-store"
    assert set(root["attributes"]["packages"]) >= {"zarr", "numpy", "pyarrow"}
    assert root["attributes"]["schema_version"] == SCHEMA_VERSION == 3
    node = json.loads((two_part_store.path / "parts" / "b" / "keys" / "zarr.json").read_text())
    assert node["data_type"] == "uint32"
    # one chunk: no sharding codec (arrays of several chunks are sharded, see
    # test_store_integrity); every chunk carries its crc32c
    assert [c["name"] for c in node["codecs"]] == ["bytes", "blosc", "crc32c"]
    blosc = node["codecs"][1]["configuration"]
    assert (blosc["cname"], blosc["shuffle"]) == ("zstd", "shuffle")
    masses = json.loads((two_part_store.path / "parts" / "b" / "masses" / "zarr.json").read_text())
    assert masses["data_type"] == "float16"
    arrays = sorted(p.name for p in (two_part_store.path / "parts" / "b").iterdir() if p.is_dir())
    assert arrays == ["agg_residuals", "keys", "masses", "pointers", "token_ids", "token_stats"]
    assert "token_stats" not in {p.name for p in (two_part_store.path / "parts" / "a").iterdir()}
    group = json.loads((two_part_store.path / "parts" / "b" / "zarr.json").read_text())
    assert group["attributes"]["aggregates"] == "derived"
    assert group["attributes"]["token_stats"] == list(TOKEN_STAT_NAMES)
    residuals = zarr.open_array(str(two_part_store.path / "parts" / "b" / "agg_residuals"))
    assert residuals.dtype == np.uint16
    assert two_part_store.manifest().column_names == [
        "trace_id", "prompt_id", "sample_index", "model_id", "model_revision", "part",
        "trace_index", "row_start", "row_stop", "entry_start", "entry_stop", "agg_start",
        "agg_stop", "token_start", "token_stop", "prompt_tokens", "response_tokens", "n_rows",
        "n_entries", "finish_reason", "text", "reference_answer", "token_stats", "status"]


def test_realistic_parts_take_fewer_bytes_than_the_row_cache(tmp_path):
    store = new_store(tmp_path / "s")
    store.write_part("p", synthetic_records(12, seed=11, with_stats=False))
    store.finalize()
    info = store.info()
    assert info["entries"] > 50_000
    assert info["sparse_bytes_per_entry"] < 4.5 and info["bytes_per_entry"] < 6.0
