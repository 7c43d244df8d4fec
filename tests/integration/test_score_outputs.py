"""`nex score` refuses repeated trace ids, publishes tables in one atomic step (a kill at
any point leaves the old or the new tables), and writes tables to object storage."""

from __future__ import annotations

import json
import os
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


def score_process(store: Path, out: Path, *args: str, fault: str | None = None):
    import os
    import subprocess
    import sys

    env = dict(os.environ)
    env.pop("NEX_TABLES_FAULT", None)
    if fault:
        env["NEX_TABLES_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "pipelines", "score", str(store), "--out",
                           str(out), *args], env=env, capture_output=True, text=True,
                          timeout=240, cwd=Path(__file__).resolve().parents[2])


def complete_tables(out: Path) -> dict:
    """run.json and the bytes of every table of ``out``, each table read in full first
    (fails on a partial folder)."""
    run = tables.read_run(out)
    assert set(run["tables"]) >= {"responses", "models", "neurons"}
    found = {}
    for name in run["tables"]:
        assert tables.read_table(out, name).num_rows == (run["n_traces"] if name == "responses"
                                                        else tables.read_table(out, name).num_rows)
        found[name] = tables.table_path(out, name).read_bytes()
    return {"run": run, **found}


@pytest.mark.parametrize("stage, published", [("written", "old"), ("linked", "old"),
                                              ("swapped", "new")])
def test_a_kill_while_publishing_leaves_the_old_or_the_new_tables_complete(
        store, tmp_path, stage, published):
    out = tmp_path / "tables"
    assert score_process(store, out, "--calibration", "global").returncode == 0
    old = complete_tables(out)
    killed = score_process(store, out, fault=stage)             # per-model: other tables
    assert killed.returncode == -9, killed.stderr
    now = complete_tables(out)
    assert now["run"]["calibration"] == {"old": "global", "new": "per-model"}[published]
    if published == "old":
        assert now == old
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert len(leftovers) > 2                                   # the crash left something
    assert score_process(store, out).returncode == 0            # the next run cleans up
    again = complete_tables(out)
    assert again["run"]["calibration"] == "per-model"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["tables", os.readlink(out)])
    for name in ("responses", "models", "neurons"):
        if published == "new":
            assert again[name] == now[name]


def test_an_earlier_tables_folder_is_replaced_by_a_link(store, tmp_path):
    out = tmp_path / "tables"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"tables": []}))    # the earlier layout
    assert score_process(store, out).returncode == 0
    assert out.is_symlink() and complete_tables(out)["run"]["n_traces"] == 24
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["tables", os.readlink(out)])
