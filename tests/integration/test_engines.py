"""`nex score` on real engines: local, Beam (embedded and multi-process) and Dask (local
cluster and a real scheduler with worker processes), parity, oracles and failures.

Every engine runs on one small multi-model store built once per module; Beam and Dask
runs are real pipelines and real processes (no mocks).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from nex_transforms import analyse, learn_weights, score_corpus
from pipelines import tables
from pipelines.cli import main
from pipelines.testing.stores import synthetic_store
from pipelines.store import ActivationStore
from tests import servers

pytestmark = pytest.mark.timeout(300)

MODELS = ("model-a", "model-b", "model-c")
#: Small units so every part is split and engines really distribute work.
BATCH = ["--batch-entries", "6000"]
#: Against computations outside the engines (float32 weights in tables, the rows-cache CLI).
TOLERANCE = 1e-6
#: Engine against engine: the same core on the same units; only the order of floating-point
#: merges differs (Dask's tree reduction), measured <= 4e-15.
ENGINE_TOLERANCE = 1e-13


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("engines") / "store"
    synthetic_store(path, n_traces=96, models=MODELS, traces_per_part=16, min_rows=10,
                    max_rows=40, keys_per_row=50, seed=3)
    return path


def score(store: Path, out: Path, *args: str) -> Path:
    assert main(["score", str(store), "--out", str(out), *BATCH, *args]) == 0
    return out


def max_table_diff(a: Path, b: Path, names=("responses", "models", "neurons")) -> float:
    """Largest absolute difference between the numeric columns of two tables folders;
    non-numeric columns and NaN positions must be equal."""
    worst = 0.0
    for name in names:
        ta, tb = tables.read_table(a, name), tables.read_table(b, name)
        assert ta.num_rows == tb.num_rows, name
        assert ta.schema.names == tb.schema.names
        for column in ta.column_names:
            x = ta[column].to_numpy(zero_copy_only=False)
            y = tb[column].to_numpy(zero_copy_only=False)
            if x.dtype.kind in "fiu":
                x, y = x.astype(np.float64), y.astype(np.float64)
                np.testing.assert_array_equal(np.isnan(x), np.isnan(y), err_msg=f"{name}.{column}")
                finite = ~np.isnan(x)
                if finite.any():
                    worst = max(worst, float(np.abs(x[finite] - y[finite]).max()))
            else:
                assert x.tolist() == y.tolist(), f"{name}.{column}"
    return worst


@pytest.fixture(scope="module")
def local(store, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("local")
    return {"per-model": score(store, root / "per-model", "--phases"),
            "global": score(store, root / "global", "--calibration", "global")}


# --------------------------------------------------------------------------- local oracle
def test_local_engine_equals_the_core_on_each_model_and_on_the_whole_store(store, local):
    st = ActivationStore.open(store)
    manifest = st.manifest()
    responses = tables.read_table(local["per-model"], "responses")
    gmf = dict(zip(responses["trace_id"].to_pylist(), responses["gmf"].to_numpy()))
    for model in MODELS:
        ids = [t for t, m in zip(manifest["trace_id"].to_pylist(),
                                 manifest["model_id"].to_pylist()) if m == model]
        corpus = st.read_corpus(trace_ids=ids)
        weights = learn_weights(corpus)
        stored = tables.weights_from_neurons(local["per-model"], model)
        assert np.abs(stored - weights).max() <= TOLERANCE
        expected = score_corpus(corpus, weights).gmf
        assert np.abs(np.array([gmf[t] for t in ids]) - expected).max() <= TOLERANCE
    corpus = st.read_corpus()
    weights = learn_weights(corpus)
    assert np.abs(tables.weights_from_neurons(local["global"], "*") - weights).max() <= TOLERANCE
    glob = tables.read_table(local["global"], "responses", sort=False)
    assert glob["trace_id"].to_pylist() == manifest["trace_id"].to_pylist()  # manifest order
    assert np.abs(glob["gmf"].to_numpy() - score_corpus(corpus, weights).gmf).max() <= TOLERANCE


def test_tables_hold_the_documented_content(store, local):
    out = local["per-model"]
    run = tables.read_run(out)
    assert run["engine"] == "local" and run["calibration"] == "per-model"
    assert run["params"]["rho"] == 0.95 and run["store_fingerprint"].startswith("sha256:")
    assert run["tables"] == ["responses", "models", "neurons", "phases"]
    assert set(run["timings"]) >= {"plan_s", "engine_s", "total_s"}
    assert run["n_units"] > 6  # parts were split into several units
    models = tables.read_table(out, "models")
    assert models["model_id"].to_pylist() == list(MODELS)
    assert models["n_responses"].to_pylist() == [32, 32, 32]
    neurons = tables.read_table(out, "neurons")
    for row in models.to_pylist():
        mine = neurons.filter(np.array(neurons["model_id"].to_pylist()) == row["model_id"])
        assert row["n_nonzero_weights"] == int(np.count_nonzero(mine["weight"].to_numpy()))
        assert 0 <= row["nex"] <= 1 and row["calibration"] == "per-model"
    keys = neurons["key"].to_numpy()
    np.testing.assert_array_equal(neurons["layer"].to_numpy(), keys >> 16)
    np.testing.assert_array_equal(neurons["unit"].to_numpy(), keys & 0xFFFF)
    responses = tables.read_table(out, "responses")
    no_stats = np.isnan(responses["mean_entropy"].to_numpy())
    assert 0 < no_stats.sum() < responses.num_rows    # every 3rd synthetic trace has none
    for name in ("mean_token_logprob", "deepconf_mean_confidence",
                 "deepconf_lowest_group_confidence"):
        np.testing.assert_array_equal(np.isnan(responses[name].to_numpy()), no_stats)
    # responses shorter than the 2,048-token window: lowest group = whole-response mean
    np.testing.assert_allclose(responses["deepconf_lowest_group_confidence"].to_numpy(),
                               responses["deepconf_mean_confidence"].to_numpy(), rtol=1e-9)


def test_phases_are_the_core_labels(store, local):
    phases = tables.read_table(local["per-model"], "phases")
    st = ActivationStore.open(store)
    trace = st.manifest()["trace_id"].to_pylist()[5]
    mine = [r for r in phases.to_pylist() if r["trace_id"] == trace]
    analysis = analyse(st.read_corpus(trace_ids=[trace]))
    assert "".join(r["label"] for r in mine).replace("X", "x") == analysis.labels(0)
    np.testing.assert_allclose([r["z"] for r in mine], analysis.segmentation.z)
    assert [r["row"] for r in mine] == list(analysis.rows.row_index)
    # cycle within the response and the core's own credit verdict for it
    credit = analysis.credit
    assert [r["cycle"] for r in mine] == credit.row_cycle.tolist()
    assert [r["credited"] for r in mine] == [
        bool(c >= 0 and credit.cycle_credited[c]) for c in credit.row_cycle]
    credited = {r["cycle"] for r in phases.to_pylist() if r["credited"]
                and r["trace_id"] == trace}
    assert len(credited) == int(credit.trace_effective[0] + credit.trace_redundant[0])


# --------------------------------------------------------------------------- Beam
@pytest.mark.parametrize("calibration", ["per-model", "global"])
def test_beam_embedded_runner_matches_local(store, local, tmp_path, calibration):
    out = score(store, tmp_path / "beam", "--engine", "beam", "--calibration", calibration,
                *(["--phases"] if calibration == "per-model" else []))
    names = ("responses", "models", "neurons", "phases") if calibration == "per-model" \
        else ("responses", "models", "neurons")
    assert max_table_diff(local[calibration], out, names) <= ENGINE_TOLERANCE
    assert tables.table_path(out, "responses").is_dir()  # Beam's sharded Parquet sink
    assert tables.read_run(out)["engine_info"]["runner"] == "FnApiRunner (embedded)"


def test_beam_multi_process_mode_matches_local(store, local, tmp_path):
    out = score(store, tmp_path / "beam-mp", "--engine", "beam", "--",
                "--direct_num_workers=2", "--direct_running_mode=multi_processing")
    assert max_table_diff(local["per-model"], out) <= ENGINE_TOLERANCE
    assert "--direct_num_workers=2" in tables.read_run(out)["engine_info"]["pipeline_args"]


# --------------------------------------------------------------------------- Dask
@pytest.mark.parametrize("calibration", ["per-model", "global"])
def test_dask_local_cluster_matches_local(store, local, tmp_path, calibration):
    out = score(store, tmp_path / "dask", "--engine", "dask", "--workers", "2",
                "--calibration", calibration,
                *(["--phases"] if calibration == "per-model" else []))
    names = ("responses", "models", "neurons", "phases") if calibration == "per-model" \
        else ("responses", "models", "neurons")
    assert max_table_diff(local[calibration], out, names) <= ENGINE_TOLERANCE
    assert tables.read_run(out)["engine_info"]["workers"] == 2


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    """A real scheduler and two worker processes (one thread each) on 127.0.0.1."""
    with servers.dask_cluster(tmp_path_factory.mktemp("dask-logs")) as (address, workers):
        yield {"address": address, "workers": workers}


def test_dask_real_cluster_matches_local(store, local, tmp_path, dask_cluster):
    out = score(store, tmp_path / "dask-remote", "--engine", "dask",
                "--scheduler", dask_cluster["address"])
    assert max_table_diff(local["per-model"], out) <= ENGINE_TOLERANCE
    info = tables.read_run(out)["engine_info"]
    assert info["scheduler"] == dask_cluster["address"] and info["workers"] == 2


def test_dask_survives_a_worker_killed_mid_run(store, local, tmp_path, dask_cluster):
    """SIGKILL the worker holding the first finished unit while the run is in flight: its
    results are recomputed on the other worker and the tables are unchanged."""
    from distributed import Client

    out = tmp_path / "dask-kill"
    status: dict = {}

    def run() -> None:
        status["rc"] = main(["score", str(store), "--out", str(out), "--batch-entries", "1500",
                             "--engine", "dask", "--scheduler", dask_cluster["address"]])

    def held_results(dask_scheduler=None):
        return {str(ts.key): sorted(ws.address for ws in ts.who_has)
                for ts in dask_scheduler.tasks.values()
                if str(ts.key).startswith("nex-analyse") and ts.who_has}

    with Client(dask_cluster["address"], timeout="30s") as client:
        pids = client.run(os.getpid)
        thread = threading.Thread(target=run)
        thread.start()
        killed = None
        deadline = time.monotonic() + 120
        while killed is None and thread.is_alive() and time.monotonic() < deadline:
            held = client.run_on_scheduler(held_results)
            if held:
                address = sorted(held.values())[0][0]
                killed = pids[address]
                os.kill(killed, signal.SIGKILL)
                status["alive_at_kill"] = thread.is_alive()
            else:
                time.sleep(0.005)
        thread.join(timeout=240)
    assert killed is not None and status["alive_at_kill"], "the run ended before the kill"
    assert status["rc"] == 0
    assert max_table_diff(local["per-model"], out) <= ENGINE_TOLERANCE
    assert any(w.poll() is not None for w in dask_cluster["workers"])  # one really died


# --------------------------------------------------------------------------- weights mode
def test_given_weights_score_like_the_learned_ones(store, local, tmp_path):
    weights = tables.weights_from_neurons(local["per-model"], "model-a")
    path = tmp_path / "w.npz"
    np.savez(path, weights=weights)
    outs = [score(store, tmp_path / engine, "--weights", str(path), "--engine", engine)
            for engine in ("local", "dask", "beam")]
    assert max_table_diff(outs[0], outs[1]) <= ENGINE_TOLERANCE
    assert max_table_diff(outs[0], outs[2]) <= ENGINE_TOLERANCE
    learned = tables.read_table(local["per-model"], "responses")
    given = tables.read_table(outs[0], "responses")
    is_a = np.array(learned["model_id"].to_pylist()) == "model-a"
    assert np.abs(learned["gmf"].to_numpy()[is_a] - given["gmf"].to_numpy()[is_a]).max() \
        <= TOLERANCE
    models = tables.read_table(outs[0], "models").to_pylist()
    assert {m["calibration"] for m in models} == {"weights"}
    assert {m["n_nonzero_weights"] for m in models} == {int(np.count_nonzero(weights))}
    np.testing.assert_array_equal(tables.weights_from_neurons(outs[0], "*"), weights)


# --------------------------------------------------------------------------- reference
def test_local_engine_matches_rows_cache_run_on_the_reference(reference_dir, tmp_path):
    cache = reference_dir / "example_cache"
    st = tmp_path / "store"
    assert main(["store", "import-rows-cache", str(cache), str(st), "--model-id", "qwen3"]) == 0
    assert main(["rows-cache", "run", str(cache), "--out", str(tmp_path / "rc")]) == 0
    out = score(st, tmp_path / "tables")
    summary = json.loads((tmp_path / "rc" / "summary.json").read_text())
    model = tables.read_table(out, "models").to_pylist()[0]
    assert round(model["nex"], 5) == 0.98684                   # METHOD.md section 6
    assert abs(model["nex"] - summary["nex_score"]) <= TOLERANCE
    assert model["n_nonzero_weights"] == summary["n_nonzero_weights"] == 2480
    assert (model["n_positive_weights"], model["n_negative_weights"]) == (2103, 377)
    rc_weights = np.load(tmp_path / "rc" / "weights.npz")["weights"]
    assert np.abs(tables.weights_from_neurons(out, "qwen3") - rc_weights).max() <= TOLERANCE
    gmf = np.load(tmp_path / "rc" / "response_scores.npy")
    responses = tables.read_table(out, "responses")
    assert np.abs(responses["gmf"].to_numpy() - gmf).max() <= TOLERANCE
    assert responses["n_cycles"].to_pylist() == [summary["n_cycles"]] == [4]


# --------------------------------------------------------------------------- failures
def corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for i in range(64, min(len(data), 400)):
        data[i] = (data[i] * 7 + 13) % 256
    path.write_bytes(bytes(data))


def tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.fixture()
def broken_store(store, tmp_path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    return copy


@pytest.mark.parametrize("engine", ["local", "beam", "dask"])
def test_corrupt_chunk_names_the_part_and_traces_and_publishes_nothing(
        broken_store, tmp_path, capfd, engine):
    out = score(broken_store, tmp_path / "tables")
    before = tree(out)
    part = sorted(p.name for p in (broken_store / "parts").iterdir() if p.is_dir())[2]
    corrupt(broken_store / "parts" / part / "keys" / "c" / "0")
    capfd.readouterr()
    extra = ["--workers", "2"] if engine == "dask" else []
    rc = main(["score", str(broken_store), "--out", str(out), *BATCH, "--engine", engine,
               *extra])
    err = capfd.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("nex: error:")]
    assert rc == 2 and len(errors) == 1
    assert f"part {part}, trace" in errors[0] and "keys" in errors[0]
    assert tree(out) == before                                   # previous tables intact
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(  # no staging left
        ["store", "tables", os.readlink(out)])


def test_missing_part_is_named_and_a_rerun_after_repair_gives_the_same_tables(
        store, broken_store, local, tmp_path, capfd):
    part = sorted(p.name for p in (broken_store / "parts").iterdir() if p.is_dir())[1]
    shutil.rmtree(broken_store / "parts" / part)
    out = tmp_path / "tables"
    capfd.readouterr()
    assert main(["score", str(broken_store), "--out", str(out), *BATCH, "--phases"]) == 2
    err = capfd.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("nex: error: part " + part)
    assert "missing part" in err and not out.exists()
    shutil.copytree(store / "parts" / part, broken_store / "parts" / part)
    score(broken_store, out, "--phases")
    assert max_table_diff(local["per-model"], out,
                          ("responses", "models", "neurons", "phases")) == 0.0


def test_missing_shard_file_is_reported_not_read_as_zeros(broken_store, tmp_path, capfd):
    part = sorted(p.name for p in (broken_store / "parts").iterdir() if p.is_dir())[0]
    (broken_store / "parts" / part / "masses" / "c" / "0").unlink()
    capfd.readouterr()
    assert main(["score", str(broken_store), "--out", str(tmp_path / "t"), *BATCH]) == 2
    err = capfd.readouterr().err
    assert f"part {part}" in err and "masses shard 0" in err


@pytest.mark.parametrize("args, fragment", [
    (["--weights", "w.npz", "--calibration", "global"], "--weights: expected no --calibration"),
    (["--scheduler", "tcp://127.0.0.1:1"], "--scheduler/--workers: expected only with"),
    (["--", "--runner=FlinkRunner"], "expected only with --engine beam"),
    (["--engine", "dask", "--workers", "0"], "--workers: expected an integer >= 1"),
])
def test_bad_option_combinations_are_one_line_errors(store, tmp_path, capfd, args, fragment):
    capfd.readouterr()
    assert main(["score", str(store), "--out", str(tmp_path / "t"), *args]) == 2
    err = capfd.readouterr().err
    assert err.startswith("nex: error:") and fragment in err and err.count("\n") == 1


def test_missing_store_and_foreign_out_folder_are_errors(store, tmp_path, capfd):
    assert main(["score", str(tmp_path / "nope"), "--out", str(tmp_path / "t")]) == 2
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    assert main(["score", str(store), "--out", str(tmp_path / "mine")]) == 2
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    err = capfd.readouterr().err
    assert "activation store" in err and "earlier tables folder" in err
