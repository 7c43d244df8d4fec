"""Real processes: two writers creating one fresh store at once, and writers killed mid-part."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.store import ActivationStore
from pipelines.crashsafe import FAULT_ENV
from pipelines.testing.traces import synthetic_records
from pipelines.store.verify import verify_store

REPO = Path(__file__).resolve().parents[2]
CAPTURE = {"model_id": "tiny", "top_k": 8}

WORKER = """
import sys, time
from pathlib import Path
from pipelines.store import ActivationStore
from pipelines.testing.traces import synthetic_records

go, part, seed = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
stores = [Path(p) for p in sys.argv[4:]]
records = synthetic_records(4, seed=seed, prefix=part, n_tokens=64)
(go.parent / f"ready-{part}").touch()
while not go.exists():
    time.sleep(0.002)
for store in stores:
    ActivationStore.create(store, {"capture": {"model_id": "tiny", "top_k": 8}}).write_part(
        part, records, {"writer": part})
"""


def run_worker(args: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WORKER, *args], cwd=REPO,
                            env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_ready(folder: Path, names: list[str], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not all((folder / f"ready-{n}").exists() for n in names):
        if time.monotonic() > deadline:
            pytest.fail("workers did not start")
        time.sleep(0.01)


def test_two_processes_create_one_fresh_store_and_write_disjoint_parts(tmp_path):
    stores = [tmp_path / f"store{i}" for i in range(3)]
    go = tmp_path / "go"
    workers = [run_worker([str(go), part, str(seed), *map(str, stores)])
               for part, seed in (("w0", 1), ("w1", 2))]
    wait_ready(tmp_path, ["w0", "w1"])
    go.touch()
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
    for path in stores:
        store = ActivationStore.open(path)
        assert store.parts() == ["w0", "w1"]
        ids = store.manifest()["trace_id"].to_pylist()
        assert ids == [f"w0:{i}" for i in range(4)] + [f"w1:{i}" for i in range(4)]
        assert store.metadata["capture"] == CAPTURE
        assert verify_store(store).ok
        assert store.info()["extra_metadata"] == {"writer": ["w0", "w1"]}


@pytest.mark.parametrize("stage", ["staging", "renamed"])
def test_a_writer_killed_mid_part_leaves_nothing_visible_and_a_rerun_completes(tmp_path, stage):
    path, go = tmp_path / "store", tmp_path / "go"
    go.touch()
    worker = run_worker([str(go), "p", "7", str(path)], env={FAULT_ENV: f"kill:{stage}:p"})
    worker.communicate(timeout=120)
    assert worker.returncode == -signal.SIGKILL
    store = ActivationStore.open(path)
    assert not store.has_part("p") and store.parts() == []
    assert store.manifest().num_rows == 0 and store.read_corpus().n_traces == 0
    leftover = (path / "parts" / "p").exists() or any((path / ".staging").iterdir())
    assert leftover, "the hook should have killed the writer with a part half-written"
    # the killed writer's lease names a dead process of this host: reclaimed at once
    ActivationStore.create(path, {"capture": CAPTURE}).finalize()
    assert not (path / "parts" / "p").exists() and not any((path / ".staging").iterdir())

    rerun = run_worker([str(go), "p", "7", str(path)])
    _, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    store = ActivationStore.open(path)
    ids = store.manifest()["trace_id"].to_pylist()
    assert ids == [f"p:{i}" for i in range(4)]
    assert verify_store(store).ok
    assert list((path / ".staging").iterdir()) == []
    expected = synthetic_records(4, seed=7, prefix="p", n_tokens=64)
    assert [r.keys.size for r in store.read_records("p")] == [r.keys.size for r in expected]


def test_finalize_removes_only_stale_leftovers(tmp_path):
    store = ActivationStore.create(tmp_path / "s", {"capture": CAPTURE})
    store.write_part("done", synthetic_records(1, seed=1, n_tokens=40))
    (tmp_path / "s" / ".staging" / "busy~0123").mkdir()
    (tmp_path / "s" / "parts" / "orphan").mkdir()
    store.finalize()
    assert (tmp_path / "s" / ".staging" / "busy~0123").exists()
    store.finalize(stale_after=0)
    assert not (tmp_path / "s" / ".staging" / "busy~0123").exists()
    assert not (tmp_path / "s" / "parts" / "orphan").exists()
    assert store.parts() == ["done"] and verify_store(store).ok
