"""Safe writers (real processes): a live second writer's staging survives, a dead one's is
reclaimed; float32-mass export clips to float16 and counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from pipelines.cli import main
from pipelines.records import TraceRecord
from pipelines.rows_cache import read_rows_cache
from pipelines.store import ActivationStore
from pipelines.crashsafe import FAULT_ENV, LEASE_FILE, Lease, lease_live
from pipelines.store.rows_cache_io import export_rows_cache
from pipelines.testing.traces import synthetic_records
from pipelines.store.verify import verify_store

REPO = Path(__file__).resolve().parents[2]
CAPTURE = {"model_id": "tiny", "top_k": 8}

WRITER = """
import sys
from pathlib import Path
from pipelines.store import ActivationStore
from pipelines.testing.traces import synthetic_records

store, part, seed = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
records = synthetic_records(3, seed=seed, prefix=part, n_tokens=48)
ActivationStore.create(store, {"capture": {"model_id": "tiny", "top_k": 8}}).write_part(
    part, records, {"writer": seed})
print("done")
"""


def writer(store: Path, part: str, seed: int, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(store), part, str(seed)],
                            cwd=REPO, env={**os.environ, **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def staging_of(store: Path, part: str) -> list[Path]:
    folder = store / ".staging"
    return sorted(p for p in folder.iterdir() if p.name.split("~")[0] == part) \
        if folder.is_dir() else []


def test_a_live_second_writer_keeps_the_first_writers_staging(tmp_path):
    store = tmp_path / "store"
    release = tmp_path / "release"
    first = writer(store, "p", 1, {FAULT_ENV: f"pause:staged:p:{release}"})
    deadline = time.monotonic() + 60
    while not any((s / "zarr.json").is_file() and (s / LEASE_FILE).is_file()
                  for s in staging_of(store, "p")):
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline, "first writer never staged its part"
        time.sleep(0.05)
    (paused,) = staging_of(store, "p")
    # the second writer starts (and finishes) while the first sits in its staging folder
    second = writer(store, "p", 2)
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert paused.is_dir() and (paused / LEASE_FILE).is_file(), "live staging was removed"
    release.touch()
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err  # the first finds the part complete: a no-op
    opened = ActivationStore.open(store)
    assert opened.parts() == ["p"] and verify_store(opened).ok
    assert opened.part_summary("p")["extra_metadata"] == {"writer": 2}
    assert staging_of(store, "p") == [] and not (store / "parts" / "p" / LEASE_FILE).exists()


def test_stale_staging_is_reclaimed_only_after_its_lease_expires(tmp_path):
    store = ActivationStore.create(tmp_path / "s", {"capture": CAPTURE})
    held = Lease(tmp_path / "s" / ".staging" / "p~held", seconds=0.6)
    try:
        time.sleep(1.0)  # the heartbeat keeps it live past its lease period
        assert lease_live(held.folder, 0.6)
        store.write_part("p", synthetic_records(2, seed=3, n_tokens=40), lease_seconds=0.6)
        assert held.folder.is_dir()
    finally:
        held._stop.set()
        held._thread.join()
    # a lease of another host that nobody refreshes expires after its period
    (held.folder / LEASE_FILE).write_text(json.dumps({"host": "elsewhere", "pid": 1}))
    assert lease_live(held.folder, 0.6)
    time.sleep(0.8)
    assert not lease_live(held.folder, 0.6)
    store.write_part("q", synthetic_records(1, seed=4, n_tokens=40))
    store.finalize(stale_after=0.6)
    assert not held.folder.exists() and store.parts() == ["p", "q"]


def test_a_dead_writers_lease_on_this_host_expires_at_once(tmp_path):
    folder = tmp_path / "staged"
    folder.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    import socket

    (folder / LEASE_FILE).write_text(json.dumps({"host": socket.gethostname(),
                                                 "pid": int(dead.stdout)}))
    assert not lease_live(folder, 3600)
    (folder / LEASE_FILE).write_text(json.dumps({"host": socket.gethostname(),
                                                 "pid": os.getpid()}))
    assert lease_live(folder, 3600)


def big_mass_record(trace_id: str, scale: float) -> TraceRecord:
    keys = np.array([3, 7, 9, 3, 11], np.uint32)
    masses = np.array([1.0, scale, -scale, 2.0, 0.5], np.float32)
    agg_keys = np.array([3, 7, 9, 11], np.uint32)
    agg = np.array([3.0, scale, -scale, 0.5], np.float32)
    return TraceRecord(
        trace_id=trace_id, prompt_id=trace_id, sample_index=0, model_id="m",
        model_revision="", prompt_tokens=1, finish_reason="stop", text="",
        token_ids=np.arange(6, dtype=np.int32), row_entry_ptr=np.array([0, 3, 5]),
        row_tokens=np.array([3, 3]), keys=keys, masses=masses, agg_keys=agg_keys,
        agg_masses=agg)


def test_export_of_float32_masses_clips_to_float16_and_counts(tmp_path, capsys):
    store = ActivationStore.create(tmp_path / "s", {
        "capture": CAPTURE, "storage": {"mass_dtype": "float32", "aggregate_dtype": "float32"}})
    store.write_part("p", [big_mass_record("a", 1e6), big_mass_record("b", 100.0)])
    result = export_rows_cache(store, tmp_path / "cache")
    assert (result.clipped_masses, result.clipped_aggregate_masses) == (2, 2)
    corpus = read_rows_cache(tmp_path / "cache")
    f16 = float(np.finfo(np.float16).max)
    assert np.isfinite(corpus.masses).all() and corpus.masses.size == 10
    assert corpus.masses[1] == f16 and corpus.masses[2] == -f16
    assert corpus.masses[6] == 100.0 and corpus.masses[7] == -100.0
    agg = corpus.aggregate()
    assert np.isfinite(agg.masses).all() and agg.masses[1] == f16 and agg.masses[2] == -f16
    assert main(["store", "export-rows-cache", str(tmp_path / "s"), str(tmp_path / "c2")]) == 0
    assert "masses clipped to the float16 range: 2 row, 2 aggregate" in capsys.readouterr().out
