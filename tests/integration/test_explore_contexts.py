"""The neuron-contexts job on real stores and real engines: a hand-built store whose top
rows are known, a brute-force oracle, engine parity (local, Beam, a Dask cluster of
worker processes), any split into units, and memory bounded by neurons x contexts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nex_transforms.params import UNIT_BITS
from pipelines import tables
from pipelines.cli import main
from pipelines.engines.contexts import ContextsJob, TopContexts, run_contexts
from pipelines.testing.stores import synthetic_store
from pipelines.explore.inputs import select_neurons
from pipelines.records import TraceRecord
from pipelines.store import ActivationStore
from tests import servers

pytestmark = pytest.mark.timeout(600)
COLUMNS = ("model_id", "key", "layer", "unit", "rank", "trace_id", "row", "mass",
           "token_start", "token_stop")


def key(layer: int, unit: int) -> int:
    return (layer << UNIT_BITS) | unit


def record(trace_id: str, model: str, rows: list[dict], row_tokens: list[int]) -> TraceRecord:
    """A trace of rows given as {key: mass} (masses exact in float16)."""
    keys, masses, ptr = [], [], [0]
    for row in rows:
        for k in sorted(row):
            keys.append(k)
            masses.append(row[k])
        ptr.append(len(keys))
    keys_a = np.asarray(keys, np.uint32)
    masses_a = np.asarray(masses, np.float32)
    agg_keys, inverse = np.unique(keys_a, return_inverse=True)
    agg = np.bincount(inverse, weights=masses_a, minlength=agg_keys.size).astype(np.float32)
    n_tokens = int(sum(row_tokens))
    return TraceRecord(trace_id=trace_id, prompt_id=trace_id.split(":")[1], sample_index=0,
                       model_id=model, model_revision="hand", prompt_tokens=3,
                       finish_reason="stop", text="x" * n_tokens,
                       token_ids=np.arange(n_tokens, dtype=np.int32),
                       row_entry_ptr=np.asarray(ptr, np.int64),
                       row_tokens=np.asarray(row_tokens, np.int64), keys=keys_a,
                       masses=masses_a, agg_keys=agg_keys, agg_masses=agg)


A, B, N = key(3, 11), key(7, 2), key(0, 40)   # N: a neuron nobody asks for


def test_hand_built_store_gives_the_planted_top_rows(tmp_path):
    """Planted masses 8, 6, 5, 5 (a tie: trace id decides) of neuron A in model m1 over
    three parts, background masses below 1 elsewhere, the same key in model m2 with
    larger masses (not m1's neuron), and B planted once."""
    rng = np.random.default_rng(0)

    def background(n_rows):
        return [{A: 0.25 * int(rng.integers(1, 4)), N: 3.0} for _ in range(n_rows)]

    store = ActivationStore.create(tmp_path / "store", {"capture": {"hand": True}})
    planted = {("m1:p0:b", 2): 8.0, ("m1:p1:a", 0): 6.0, ("m1:p2:z", 1): 5.0,
               ("m1:p2:c", 3): 5.0}
    parts = {"part-0": ["m1:p0:a", "m1:p0:b"], "part-1": ["m1:p1:a"],
             "part-2": ["m1:p2:c", "m1:p2:z"]}
    for part, ids in parts.items():
        records = []
        for trace in ids:
            rows = background(5)
            for (t, r), mass in planted.items():
                if t == trace:
                    rows[r][A] = mass
            if trace == "m1:p1:a":
                rows[4][B] = 2.5
            records.append(record(trace, "m1", rows, [3, 4, 3, 4, 2]))
        store.write_part(part, records)
    store.write_part("part-3", [record("m2:p0:a", "m2", [{A: 50.0}, {A: 40.0, B: 1.0}], [2, 2])])
    store.finalize()
    job = ContextsJob(store=str(tmp_path / "store"), neurons=(("m1", A), ("m1", B), ("m2", B)),
                      per_neuron=3)
    run_contexts("local", job, tmp_path)
    got = tables.read_table(tmp_path, "neuron_contexts").to_pylist()
    assert [(r["model_id"], r["key"], r["rank"], r["trace_id"], r["row"], r["mass"],
             r["token_start"], r["token_stop"]) for r in got] == [
        ("m1", A, 1, "m1:p0:b", 2, 8.0, 7, 10),
        ("m1", A, 2, "m1:p1:a", 0, 6.0, 0, 3),
        ("m1", A, 3, "m1:p2:c", 3, 5.0, 10, 14),   # ties with m1:p2:z row 1: trace id
        ("m1", B, 1, "m1:p1:a", 4, 2.5, 14, 16),
        ("m2", B, 1, "m2:p0:a", 1, 1.0, 2, 4),
    ]
    assert {(r["layer"], r["unit"]) for r in got if r["key"] == A} == {(3, 11)}


# --------------------------------------------------------------------------- oracle
MODELS = ("model-a", "model-b")


@pytest.fixture(scope="module")
def scored(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("contexts")
    synthetic_store(root / "store", n_traces=64, models=MODELS, traces_per_part=16,
                    min_rows=8, max_rows=30, keys_per_row=40, units_per_layer=256, seed=5)
    out = {"root": root, "store": root / "store"}
    for calibration in ("per-model", "global"):
        folder = root / f"tables-{calibration}"
        assert main(["score", str(root / "store"), "--out", str(folder), "--phases",
                     "--calibration", calibration]) == 0
        out[calibration] = folder
    return out


def job_for(scored: dict, calibration: str, per_sign: int = 6, per_neuron: int = 5,
            batch_entries: int = 4000) -> ContextsJob:
    neurons = select_neurons(tables.read_table(scored[calibration], "neurons"), per_sign)
    return ContextsJob(store=str(scored["store"]),
                       neurons=tuple((n["model_id"], int(n["key"])) for n in neurons),
                       per_model=calibration == "per-model", per_neuron=per_neuron,
                       batch_entries=batch_entries)


def brute_force(store_path: Path, job: ContextsJob) -> list[tuple]:
    """Every row of every trace, one at a time, in plain Python."""
    store = ActivationStore.open(store_path)
    manifest = store.manifest().to_pylist()
    corpus = store.read_corpus()
    wanted = set(job.neurons)
    found: dict[tuple, list] = {n: [] for n in job.neurons}
    for t, trace in enumerate(manifest):
        calibration = trace["model_id"] if job.per_model else "*"
        r0, r1 = corpus.trace_row_ptr[t], corpus.trace_row_ptr[t + 1]
        token = 0
        for r in range(r0, r1):
            sums: dict[int, float] = {}
            for e in range(corpus.row_entry_ptr[r], corpus.row_entry_ptr[r + 1]):
                k = int(corpus.keys[e])
                m = float(corpus.masses[e])
                sums[k] = sums.get(k, 0.0) + (m if np.isfinite(m) and m > 0 else 0.0)
            tokens = int(corpus.row_tokens[r])
            for k, m in sums.items():
                if (calibration, k) in wanted and m > 0:
                    found[(calibration, k)].append((-m, trace["trace_id"], r - r0, token,
                                                    token + tokens))
            token += tokens
    rows = []
    for (calibration, k), hits in sorted(found.items()):
        for rank, (m, t, r, a, b) in enumerate(sorted(hits)[:job.per_neuron], 1):
            rows.append((calibration, k, rank, t, r, -m, a, b))
    return rows


def contexts_rows(folder: Path) -> list[tuple]:
    table = tables.read_table(folder, "neuron_contexts")
    return [(r["model_id"], r["key"], r["rank"], r["trace_id"], r["row"], r["mass"],
             r["token_start"], r["token_stop"]) for r in table.to_pylist()]


@pytest.mark.parametrize("calibration", ["per-model", "global"])
def test_local_job_equals_a_brute_force_oracle(scored, tmp_path, calibration):
    job = job_for(scored, calibration)
    assert len({k for k, _ in job.neurons}) == (2 if calibration == "per-model" else 1)
    summary = run_contexts("local", job, tmp_path)
    assert summary["n_units"] > 4 and summary["n_traces"] == 64
    got = contexts_rows(tmp_path)
    assert got == brute_force(scored["store"], job)
    assert len(got) > len(job.neurons)  # most neurons fire in several rows


def test_any_split_into_units_gives_the_same_table(scored, tmp_path):
    import dataclasses

    job = job_for(scored, "per-model")
    reference = None
    for batch in (500, 4000, 1 << 24):
        folder = tmp_path / str(batch)
        folder.mkdir()
        summary = run_contexts("local", dataclasses.replace(job, batch_entries=batch), folder)
        rows = contexts_rows(folder)
        reference = reference or (rows, summary["n_units"])
        assert rows == reference[0]
    assert summary["n_units"] < reference[1]


# --------------------------------------------------------------------------- engines
@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    """A real scheduler and two worker processes (one thread each) on 127.0.0.1."""
    with servers.dask_cluster(tmp_path_factory.mktemp("dask-logs")) as (address, _):
        yield address


def test_engines_give_the_same_table(scored, tmp_path, dask_cluster):
    job = job_for(scored, "per-model", per_sign=8, per_neuron=6)
    folders = {}
    for engine, options in (("local", {}), ("beam", {"pipeline_args": []}),
                            ("dask", {"scheduler": dask_cluster})):
        folder = tmp_path / engine
        folder.mkdir()
        summary = run_contexts(engine, job, folder, options)
        folders[engine] = folder
        if engine == "dask":
            assert summary["engine_info"]["workers"] == 2
    local = tables.read_table(folders["local"], "neuron_contexts")
    assert local.num_rows > 0 and local.column_names == list(COLUMNS)
    for engine in ("beam", "dask"):
        other = tables.read_table(folders[engine], "neuron_contexts")
        assert other.to_pylist() == local.to_pylist(), engine
    # Beam's sink leaves only its part files behind
    assert sorted(p.name for p in folders["beam"].iterdir()) == ["neuron_contexts.parquet"]


def test_a_corrupt_store_is_one_error_naming_the_part(scored, tmp_path):
    import shutil

    from pipelines.store.reader import BatchReadError

    broken = tmp_path / "store"
    shutil.copytree(scored["store"], broken)
    shard = next(p for p in sorted((broken / "parts" / "part-00001").rglob("c/*"))
                 if p.is_file() and "keys" in p.parts)
    shard.unlink()
    job = ContextsJob(**{**job_for(scored, "per-model").__getstate__(), "store": str(broken)})
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(BatchReadError, match="part part-00001"):
        run_contexts("local", job, out)


def test_memory_is_bounded_by_neurons_times_contexts(scored, monkeypatch, tmp_path):
    """Every value the local loop holds (each unit's, every running merge) has at most
    neurons x contexts rows, however many units the store has."""
    job = job_for(scored, "per-model", per_sign=4, per_neuron=3, batch_entries=300)
    bound = len(job.neurons) * job.per_neuron
    sizes = []
    merge = TopContexts.merge

    def watched(self, other):
        sizes.extend([len(self), len(other)])
        result = merge(self, other)
        sizes.append(len(result))
        return result

    monkeypatch.setattr(TopContexts, "merge", watched)
    summary = run_contexts("local", job, tmp_path)
    assert summary["n_units"] >= 40
    assert len(sizes) == 3 * summary["n_units"]
    assert bound / 2 < max(sizes) <= bound
    assert sizes[-1] == len(tables.read_table(tmp_path, "neuron_contexts"))


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_peak_memory_does_not_grow_with_the_store(tmp_path):
    """benchmarks/bench_contexts.py on 2,500 and 10,000 synthetic traces (about 3 M and
    12 M row entries; stores cached in $NEX_BENCH_CACHE when set): the job's memory above
    each size's import-and-plan floor grows far less than the store (4x)."""
    repo = Path(__file__).resolve().parents[2]
    cache = os.environ.get("NEX_BENCH_CACHE") or str(tmp_path / "cache")
    done = subprocess.run([sys.executable, str(repo / "benchmarks" / "bench_contexts.py"),
                           "--traces", "2500", "--factor", "4", "--repeat", "1", "--cache",
                           cache, "--json"], cwd=repo, capture_output=True, text=True,
                          check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    small, large = (str(n) for n in result["sizes"])
    peak, floor = result["peak_bytes"], result["floor_peak_bytes"]
    assert result["sizes"] == [2500, 10000]
    assert peak[large] / peak[small] <= 1.3
    # what the streaming pass holds beyond imports, manifest and plan: not 4x
    assert (peak[large] - floor[large]) / max(peak[small] - floor[small], 1) <= 1.5
