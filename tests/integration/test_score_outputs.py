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
from pipelines.testing.stores import synthetic_store
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


# --------------------------------------------------------------------------- object storage
@pytest.fixture(scope="module")
def s3_endpoint():
    """A real S3-compatible server (moto in server mode) in its own process group."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                               str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=2).read()
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.3)
        yield endpoint
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(timeout=30)


@pytest.fixture()
def s3_bucket(s3_endpoint, monkeypatch, request):
    import s3fs

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    bucket = f"nex-{request.node.name.lower().replace('_', '-')[:40]}"
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint, key="testing", secret="testing",
                           skip_instance_cache=True)
    fs.mkdir(bucket)
    return fs, bucket


def test_tables_on_object_storage_equal_the_local_tables(store, tmp_path, s3_bucket, capfd,
                                                         monkeypatch):
    fs, bucket = s3_bucket
    local = tmp_path / "local"
    assert main(["score", str(store), "--out", str(local), "--phases"]) == 0
    url = f"s3://{bucket}/runs/tables"
    assert main(["score", str(store), "--out", url, "--phases"]) == 0      # AWS_* variables
    run = tables.read_run(url)
    assert run["n_traces"] == 24 and set(run["tables"]) == set(tables.TABLE_NAMES)
    pointer = json.loads(fs.cat_file(f"{bucket}/runs/tables/{tables.POINTER}"))
    for name in tables.TABLE_NAMES:                      # the same bytes as on local disk
        remote = f"{bucket}/runs/tables/{pointer['version']}/{name}.parquet"
        assert fs.cat_file(remote) == tables.table_path(local, name).read_bytes(), name
        assert tables.read_table(url, name).num_rows == tables.read_table(local, name).num_rows
    np.testing.assert_array_equal(tables.weights_from_neurons(url, "model-a"),
                                  tables.weights_from_neurons(local, "model-a"))

    # a rerun with explicit options (no AWS_* variables) replaces the pointer; the
    # previous version is removed
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var)
    options = {"endpoint_url": fs.client_kwargs.get("endpoint_url") or fs.endpoint_url,
               "key": "testing", "secret": "testing"}
    assert main(["score", str(store), "--out", url, "--calibration", "global",
                 "--storage-options", json.dumps(options)]) == 0
    assert tables.read_run(url, options)["calibration"] == "global"
    fs.invalidate_cache()
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{bucket}/runs/tables"))
    version = json.loads(fs.cat_file(f"{bucket}/runs/tables/{tables.POINTER}"))["version"]
    assert names == sorted([tables.POINTER, version]) and version != pointer["version"]

    fs.pipe_file(f"{bucket}/other/notes.txt", b"keep")   # a foreign prefix is refused
    capfd.readouterr()
    assert main(["score", str(store), "--out", f"s3://{bucket}/other",
                 "--storage-options", json.dumps(options)]) == 2
    err = capfd.readouterr().err
    assert err.startswith("nex: error:") and "holding other objects" in err
    assert fs.cat_file(f"{bucket}/other/notes.txt") == b"keep"


def test_a_distributed_beam_runner_cannot_write_tables_to_a_url(store, capfd):
    capfd.readouterr()
    assert main(["score", str(store), "--out", "s3://bucket/tables", "--engine", "beam",
                 "--", "--runner=FlinkRunner"]) == 2
    err = capfd.readouterr().err
    assert err.startswith("nex: error: --out s3://bucket/tables: expected a path every Beam")
