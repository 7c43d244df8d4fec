"""`nex score` refuses repeated trace ids, publishes tables in one atomic step (a kill at
any point leaves the old or the new tables), and writes tables to object storage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipelines import tables
from pipelines.cli import main
from pipelines.engines.synthetic import synthetic_store
from pipelines.store import ActivationStore

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("outputs") / "store"
    synthetic_store(path, n_traces=24, models=("model-a", "model-b"), traces_per_part=8,
                    min_rows=10, max_rows=20, keys_per_row=30, seed=5)
    return path


@pytest.mark.parametrize("engine", ["local", "beam", "dask"])
def test_a_store_listing_a_trace_id_twice_is_refused_naming_it(tmp_path, capfd, engine):
    path = tmp_path / "store"
    synthetic_store(path, n_traces=16, models=("model-a",), traces_per_part=8, min_rows=8,
                    max_rows=12, keys_per_row=20, seed=1, finalize=False)
    store = ActivationStore.open(path)
    again = store.read_records("part-00001")[2:4]            # two traces written twice
    writable = ActivationStore.create(path, store.metadata)
    writable.write_part("part-00009", again)
    writable.finalize()
    capfd.readouterr()
    rc = main(["score", str(path), "--out", str(tmp_path / "tables"), "--engine", engine])
    err = capfd.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and err.startswith("nex: error:")
    assert "expected every trace id once" in err
    assert f"'{again[0].trace_id}' 2 times, in parts part-00001, part-00009" in err
    assert "and 1 more repeated ids" in err
    assert not (tmp_path / "tables").exists()
