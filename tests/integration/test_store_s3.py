"""The store on object storage: a real S3-compatible server (moto in server mode, its own
process group on 127.0.0.1), credentials and endpoint from the environment or
``--storage-options``. Capture a tiny model into ``s3://``, verify, export, and score with
the local engine and a Dask cluster of two worker processes (tables to ``s3://``) and with
Beam (tables on disk): the same tables as the same run on local disk."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto")

from pipelines import tables  # noqa: E402
from pipelines.cli import main  # noqa: E402
from pipelines.store import ActivationStore  # noqa: E402
from pipelines.testing.traces import synthetic_records  # noqa: E402
from tests import servers  # noqa: E402
from tests.servers import free_port  # noqa: E402

pytestmark = pytest.mark.timeout(600)

REPO = Path(__file__).resolve().parents[2]
CAPTURE = {"model_id": "tiny", "top_k": 8}
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "nex-test", "AWS_SECRET_ACCESS_KEY": "nex-test-secret",
               "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory):
    """``python -m moto.server`` in its own process group; the group is killed after."""
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "moto server did not start"
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.fixture()
def s3(s3_server, monkeypatch, request):
    """Credentials and endpoint in the environment (inherited by worker processes) and a
    fresh bucket; yields the bucket URL."""
    import s3fs

    for key, value in {**CREDENTIALS, "AWS_ENDPOINT_URL": s3_server}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("NEX_STORAGE_OPTIONS", raising=False)
    bucket = "nex-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    fs.mkdir(bucket)
    from pipelines.engines.plan import open_store

    open_store.cache_clear()
    yield f"s3://{bucket}"
    open_store.cache_clear()


def write_synthetic(path: str) -> ActivationStore:
    store = ActivationStore.create(path, {"capture": CAPTURE})
    for i, part in enumerate(("a", "b", "c")):
        store.write_part(part, synthetic_records(4, seed=20 + i, prefix=part, n_tokens=96))
    store.finalize()
    return store


def one_error(capfd) -> str:
    lines = [line for line in capfd.readouterr().err.splitlines()
             if line.startswith("nex: error:")]
    assert len(lines) == 1, lines
    return lines[0]


def test_store_round_trip_verify_export_on_s3_equal_local(s3, tmp_path, capfd):
    remote = write_synthetic(f"{s3}/store")
    local = write_synthetic(tmp_path / "local")
    assert remote.parts() == local.parts() == ["a", "b", "c"]
    a, b = remote.read_corpus(), local.read_corpus()
    for field in ("trace_row_ptr", "row_entry_ptr", "row_tokens", "keys", "masses"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field
    sa, sb = remote.read_token_stats(), local.read_token_stats()
    for name in sa:
        np.testing.assert_array_equal(sa[name][1], sb[name][1])
    assert remote.manifest().equals(local.manifest())
    capfd.readouterr()
    assert main(["store", "verify", f"{s3}/store"]) == 0
    assert "every invariant holds" in capfd.readouterr().out
    assert main(["store", "export-rows-cache", f"{s3}/store", str(tmp_path / "r")]) == 0
    assert main(["store", "export-rows-cache", str(tmp_path / "local"), str(tmp_path / "l")]) == 0
    for name in sorted(p.relative_to(tmp_path / "l") for p in (tmp_path / "l").rglob("*")
                       if p.is_file()):
        assert (tmp_path / "r" / name).read_bytes() == (tmp_path / "l" / name).read_bytes()


def test_storage_options_flag_gives_credentials_and_endpoint(s3, s3_server, monkeypatch,
                                                              capfd):
    write_synthetic(f"{s3}/store")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key)
    options = json.dumps({"key": CREDENTIALS["AWS_ACCESS_KEY_ID"],
                          "secret": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
                          "endpoint_url": s3_server})
    capfd.readouterr()
    assert main(["store", "info", f"{s3}/store", "--json", "--storage-options", options]) == 0
    assert json.loads(capfd.readouterr().out)["traces"] == 12
    assert main(["store", "info", f"{s3}/store", "--storage-options", "[1]"]) == 2
    assert "--storage-options: expected a JSON object" in one_error(capfd)


def test_two_writers_of_one_part_on_s3_leave_one_complete_part(s3):
    first = ActivationStore.create(f"{s3}/store", {"capture": CAPTURE})
    second = ActivationStore.create(f"{s3}/store", {"capture": CAPTURE})
    records = synthetic_records(3, seed=5, prefix="p", n_tokens=64)
    first.write_part("p", records, {"writer": 1})
    second.write_part("p", records, {"writer": 2})  # complete already: a no-op
    # a writer that died before its manifest left a group no manifest names
    orphan = "parts/p~0123456789abcdef"
    first.loc.put(f"{orphan}/zarr.json", b"{}")
    first.finalize(stale_after=0)
    assert not first.loc.exists(f"{orphan}/zarr.json")
    store = ActivationStore.open(f"{s3}/store")
    assert store.parts() == ["p"] and store.part_summary("p")["extra_metadata"] == {"writer": 1}
    assert [r.trace_id for r in store.read_records("p")] == [r.trace_id for r in records]


def test_a_deleted_or_corrupt_shard_on_s3_is_named_and_no_table_written(s3, tmp_path, capfd):
    store = write_synthetic(f"{s3}/store")
    rel = store.part_rel("b")
    store.loc.remove_file(f"{rel}/masses/c/0")
    capfd.readouterr()
    assert main(["store", "verify", f"{s3}/store"]) == 2
    assert "part b" in one_error(capfd)
    assert main(["score", f"{s3}/store", "--out", str(tmp_path / "t")]) == 2
    error = one_error(capfd)
    assert "part b" in error and "masses shard 0" in error and not (tmp_path / "t").exists()
    data = bytearray(store.loc.read_bytes(f"{rel}/keys/c/0"))
    data[len(data) // 3] ^= 0x5A
    store.loc.put(f"{rel}/keys/c/0", bytes(data))
    with pytest.raises(Exception, match="part b"):
        ActivationStore.open(f"{s3}/store").read_corpus(trace_ids=["b:0"])


# ------------------------------------------------------------------ capture -> s3 -> score
@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    pytest.importorskip("torch")
    from pipelines.testing.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "llama", "llama", seed=4)


@pytest.fixture()
def dask_cluster(tmp_path, s3):
    """A real scheduler and two worker processes (one thread each) on 127.0.0.1; they
    inherit the object-store credentials and endpoint from the environment."""
    with servers.dask_cluster(tmp_path) as (address, _):
        yield address


def tables_equal(a, b) -> None:
    for name in ("responses", "models", "neurons"):
        ta, tb = tables.read_table(a, name), tables.read_table(b, name)
        assert ta.equals(tb), name


def test_capture_into_s3_then_score_local_and_dask_equal_local_disk(s3, tiny, tmp_path,
                                                                     dask_cluster):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": t}) + "\n" for i, t in
                               enumerate(["two plus three is", "she sold ten eggs",
                                          "one plus one is", "how many apples are left ?"])))
    common = ["--model", str(tiny), "--prompts", str(prompts), "--samples", "3",
              "--max-new-tokens", "24", "--top-k-neurons", "40", "--row-size", "4",
              "--temperature", "1.0", "--part-size", "2", "--no-progress"]
    assert main(["capture", "--out", f"{s3}/acts", *common]) == 0
    assert main(["capture", "--out", str(tmp_path / "acts"), *common]) == 0
    remote, local = ActivationStore.open(f"{s3}/acts"), ActivationStore.open(tmp_path / "acts")
    assert remote.manifest().equals(local.manifest())
    assert main(["store", "verify", f"{s3}/acts"]) == 0
    out = tmp_path / "tables"
    assert main(["score", str(tmp_path / "acts"), "--out", str(out / "disk")]) == 0
    # store and tables on s3: the local engine and a Dask cluster of two worker processes
    assert main(["score", f"{s3}/acts", "--out", f"{s3}/tables-local"]) == 0
    assert main(["score", f"{s3}/acts", "--out", f"{s3}/tables-dask", "--engine", "dask",
                 "--scheduler", dask_cluster]) == 0
    assert tables.read_run(f"{s3}/tables-dask")["engine_info"]["workers"] == 2
    # Beam (embedded runner) reading the s3 store, tables on local disk
    assert main(["score", f"{s3}/acts", "--out", str(out / "s3-beam"), "--engine", "beam"]) == 0
    for run in (f"{s3}/tables-local", f"{s3}/tables-dask", out / "s3-beam"):
        tables_equal(out / "disk", run)
    shutil.rmtree(out)


def test_any_fsspec_url_holds_a_store(tmp_path):
    """A synchronous fsspec filesystem (memory://) works too: zarr gets an async wrapper."""
    remote = write_synthetic("memory://nex-test/store")
    local = write_synthetic(tmp_path / "local")
    assert remote.manifest().equals(local.manifest())
    assert np.array_equal(remote.read_corpus().keys, local.read_corpus().keys)
    assert main(["store", "verify", "memory://nex-test/store"]) == 0
