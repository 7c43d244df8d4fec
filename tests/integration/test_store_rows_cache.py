"""Row-cache import/export: byte identity, NEX equality and size on the reference example."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nex_transforms import learn_weights, score_corpus
from pipelines.cli import main
from pipelines.rows_cache import read_rows_cache, write_rows_cache
from pipelines.store import ActivationStore, StoreError
from pipelines.testing.traces import synthetic_records
from pipelines.store.verify import verify_store


def files(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def imported(reference_dir, tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("ref") / "store"
    assert main(["store", "import-rows-cache", str(reference_dir / "example_cache"),
                 str(store), "--model-id", "qwen3-4b"]) == 0
    return store


def test_export_of_an_import_is_byte_identical(imported, reference_dir, tmp_path):
    out = tmp_path / "exported"
    assert main(["store", "export-rows-cache", str(imported), str(out),
                 "--model-id", "qwen3-4b"]) == 0
    original = files(reference_dir / "example_cache")
    assert files(out) == original and len(original) == 8


def test_nex_on_the_store_equals_nex_on_the_exported_cache(imported, reference_dir, tmp_path):
    store = ActivationStore.open(imported)
    corpus = store.read_corpus()
    out = tmp_path / "exported"
    main(["store", "export-rows-cache", str(imported), str(out)])
    cache = read_rows_cache(out)
    weights_store, weights_cache = learn_weights(corpus), learn_weights(cache)
    np.testing.assert_array_equal(weights_store, weights_cache)
    result = score_corpus(corpus, weights_store)
    assert result.nex == score_corpus(cache, weights_cache).nex
    assert round(result.nex, 5) == 0.98684                      # METHOD.md section 6
    assert int(np.count_nonzero(weights_store)) == 2480
    published = np.load(reference_dir / "example_weights.npz")["weights"]
    assert round(float(score_corpus(corpus, published).gmf[0]), 5) == 0.99831


def test_imported_traces_have_ids_and_model(imported):
    table = ActivationStore.open(imported).manifest()
    assert table["trace_id"].to_pylist() == ["example_cache:0"]
    assert table["model_id"].to_pylist() == ["qwen3-4b"]
    assert table["response_tokens"].to_pylist() == [2646]
    assert table["n_rows"].to_pylist() == [83]


def test_info_on_the_reference_example_beats_the_row_cache(imported, reference_dir, capsys):
    assert main(["store", "info", str(imported), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    for key in ("traces", "rows", "entries", "tokens", "bytes_on_disk", "bytes_per_entry",
                "models", "parts", "schema_version"):
        assert key in info
    assert (info["traces"], info["rows"], info["entries"], info["tokens"]) == (1, 83, 26660, 2646)
    assert info["models"] == {"qwen3-4b": 1} and info["finalized"]
    # README and docs/STORE.md: 2.78 bytes per entry with everything on disk (2.60 for the
    # arrays a row cache also holds) against 6.84 in the row-cache layout
    assert round(info["bytes_per_entry"], 2) == 2.78
    assert round(info["sparse_bytes_per_entry"], 2) == 2.60
    cache = [f for f in (reference_dir / "example_cache").rglob("*") if f.is_file()]
    assert round(sum(f.stat().st_size for f in cache) / info["entries"], 2) == 6.84
    assert main(["store", "verify", str(imported)]) == 0


def test_reimport_is_a_no_op_and_a_second_cache_appends(imported, reference_dir, tmp_path):
    store = tmp_path / "s"
    cache = reference_dir / "example_cache"
    assert main(["store", "import-rows-cache", str(cache), str(store)]) == 0
    assert main(["store", "import-rows-cache", str(cache), str(store)]) == 0
    assert ActivationStore.open(store).info()["traces"] == 1
    assert main(["store", "import-rows-cache", str(cache), str(store), "--name", "again",
                 "--model-id", "m2"]) == 0
    info = ActivationStore.open(store).info()
    assert info["models"] == {"imported": 1, "m2": 1}
    out = tmp_path / "only-m2"
    assert main(["store", "export-rows-cache", str(store), str(out), "--model-id", "m2"]) == 0
    assert files(out) == files(cache)


def test_multi_trace_cache_round_trips_across_parts(tmp_path):
    store = ActivationStore.create(tmp_path / "src", {"capture": {"model": "x"}})
    store.write_part("p", synthetic_records(5, seed=3, n_tokens=90, with_stats=False))
    cache = write_rows_cache(store.read_corpus(), tmp_path / "cache")
    assert main(["store", "import-rows-cache", str(cache), str(tmp_path / "dst"),
                 "--traces-per-part", "2"]) == 0
    dst = ActivationStore.open(tmp_path / "dst")
    assert dst.parts() == ["import-cache-00000", "import-cache-00001", "import-cache-00002"]
    assert verify_store(dst).ok
    assert main(["store", "export-rows-cache", str(dst.path), str(tmp_path / "back")]) == 0
    assert files(tmp_path / "back") == files(cache)


def test_export_refuses_an_unknown_model_and_an_existing_output(imported, tmp_path, capsys):
    assert main(["store", "export-rows-cache", str(imported), str(tmp_path / "x"),
                 "--model-id", "nope"]) == 2
    assert "expected one of ['qwen3-4b']" in capsys.readouterr().err
    (tmp_path / "exists").mkdir()
    assert main(["store", "export-rows-cache", str(imported), str(tmp_path / "exists")]) == 2


def test_importing_into_a_captured_store_is_refused(reference_dir, tmp_path):
    ActivationStore.create(tmp_path / "s", {"capture": {"model_id": "real"}})
    with pytest.raises(StoreError, match="capture parameters"):
        from pipelines.store.rows_cache_io import import_rows_cache
        import_rows_cache(reference_dir / "example_cache", tmp_path / "s")
