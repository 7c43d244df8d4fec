"""The Prefect flows against a real Prefect server and a real MLflow server (sqlite, local
artifact root, free localhost ports), both started once for this module.

* an MLflow registered model with two versions whose artifacts are tiny models: the watcher
  scores both (version tags, metrics on the linked runs, tables as artifacts); a second
  scan publishes nothing new; a third version registered later is scored by the next scan;
  a live claim (an overlapping scan) keeps a checkpoint from being scored twice;
* a directory of model folders served by ``nex flows serve`` on a short interval: a folder
  dropped in is scored by the next scheduled run; broken folders (missing weights, an
  unknown architecture) fail their own flow runs with a message naming the checkpoint and
  the stage, a folder still being written waits, and the others are scored;
* infra/prefect.yaml deployed as a user would (``prefect deploy``): the flow runs of
  ``capture/gpu`` the watcher starts receive that deployment's parameters (``device: cuda``),
  and with no worker on the pool each run is given up after the stall limit (marked
  crashed, a transient failure: nothing recorded, no claim left), so the watcher returns.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

if os.environ.get("CI", "").lower() != "true":
    pytest.importorskip("prefect")
    pytest.importorskip("mlflow")
    pytest.importorskip("torch")

from pipelines.testing.models import build_tiny_model  # noqa: E402
from tests.servers import (BIN, deliver_prefect_backlog, deploy_infra,  # noqa: E402
                           free_port, start_mlflow, start_prefect, stop_group, wait_http)

PROMPTS = ["two plus three is", "how many apples are left ?", "she sold ten eggs"]


# The module costs about a minute (its servers, then 15-45 s a test): slow as a whole.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """A Prefect server and an MLflow server, started side by side; yields their URLs and the
    environment a subprocess needs to reach them."""
    root = tmp_path_factory.mktemp("servers")
    prefect_port, mlflow_port = free_port(), free_port()
    prefect = start_prefect(root, prefect_port)
    mlflow = start_mlflow(root, mlflow_port)
    try:
        prefect_api = f"http://127.0.0.1:{prefect_port}/api"
        mlflow_uri = f"http://127.0.0.1:{mlflow_port}"
        wait_http(f"{prefect_api}/health", prefect, root / "prefect.log")
        wait_http(f"{mlflow_uri}/health", mlflow, root / "mlflow.log")
        from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

        client_env = dict(os.environ, PREFECT_HOME=str(root / "prefect-home"),
                          PREFECT_API_URL=prefect_api, PREFECT_RUNNER_POLL_FREQUENCY="1",
                          MLFLOW_TRACKING_URI=mlflow_uri)
        with temporary_settings({PREFECT_API_URL: prefect_api,
                                 PREFECT_HOME: str(root / "prefect-home")}):
            try:
                yield {"prefect": prefect_api, "mlflow": mlflow_uri, "env": client_env,
                       "root": root}
            finally:
                deliver_prefect_backlog()
    finally:
        stop_group(prefect)
        stop_group(mlflow)


@pytest.fixture(scope="module")
def calset(tmp_path_factory) -> dict:
    """A calibration set sized for tiny models: 3 prompts x 2 samples, 48 tokens."""
    root = tmp_path_factory.mktemp("calset")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": text}) + "\n"
                               for i, text in enumerate(PROMPTS)))
    return dict(name="tiny", prompts=str(prompts), samples=2, max_new_tokens=48, row_size=2,
                top_k_neurons=40, temperature=1.0, part_size=3, batch_size=6)


def register_version(client, name: str, model_dir: Path) -> str:
    """Log a model folder as a run's artifacts and register it as a new version of ``name``."""
    experiment = client.get_experiment_by_name("training")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("training")
    run = client.create_run(experiment_id)
    client.log_artifacts(run.info.run_id, str(model_dir), "model")
    client.set_terminated(run.info.run_id)
    version = client.create_model_version(name, f"{run.info.artifact_uri}/model",
                                          run_id=run.info.run_id)
    return str(version.version)


@pytest.mark.timeout(900)
def test_watcher_scores_each_mlflow_version_once_and_publishes_to_the_registry(
        servers, calset, tmp_path):
    from mlflow.tracking import MlflowClient

    from flows.flows import watch_checkpoints_flow
    from pipelines.workspace import Checkpoint, Workspace, load_calibration_set

    client = MlflowClient(servers["mlflow"], servers["mlflow"])
    client.create_registered_model("tinyfam")
    for seed in (1, 2):
        register_version(client, "tinyfam", build_tiny_model(tmp_path / f"m{seed}", "llama", seed=seed))
    workspace = str(tmp_path / "ws")
    watch = dict(workspace=workspace, calibration_set=calset, mlflow_models=["tinyfam"],
                 tracking_uri=servers["mlflow"])

    first = watch_checkpoints_flow(**watch)
    assert sorted(s["name"] for s in first["scored"]) == ["tinyfam-v1", "tinyfam-v2"]
    assert first["failed"] == [] and first["pending"] == []
    rows = {r["checkpoint"]: r for r in Workspace(workspace).entries()}
    for version in ("1", "2"):
        mv = client.get_model_version("tinyfam", version)
        row = rows[f"tinyfam-v{version}"]
        assert mv.tags["nex_calibration_set"] == "tiny"
        assert float(mv.tags["nex"]) == row["nex"] and float(mv.tags["nex.tiny"]) == row["nex"]
        assert float(mv.tags["nex_log_gap"]) == row["log_gap"]
        metrics = client.get_run(mv.run_id).data.metrics
        assert metrics["nex.tiny"] == row["nex"] and metrics["log_gap.tiny"] == row["log_gap"]
        assert metrics["mean_entropy.tiny"] == pytest.approx(row["mean_entropy"])
        # the coverage travels with the score (a NEX may rest on no credited cycle)
        assert mv.tags["nex_credited_cycles"] == str(row["credited_cycles"])
        assert mv.tags["nex_responses_with_credit.tiny"] == str(row["responses_with_credit"])
        assert metrics["nex_credited_cycles.tiny"] == row["credited_cycles"]
        # and so does the regime the score rests on
        assert float(mv.tags["nex_late_novelty"]) == pytest.approx(row["late_novelty"])
        assert metrics["nex_pool_coverage.tiny"] == pytest.approx(row["pool_coverage"])
        folder = f"nex/tiny/{row['tables_fingerprint'][:16]}"
        names = {Path(a.path).name for a in client.list_artifacts(mv.run_id, folder)}
        assert {"models.parquet", "responses.parquet", "neurons.parquet", "run.json"} <= names
    assert rows["tinyfam-v1"]["checkpoint_hash"] != rows["tinyfam-v2"]["checkpoint_hash"]

    def registry_state():
        out = {}
        for version in ("1", "2"):
            mv = client.get_model_version("tinyfam", version)
            history = {k: len(client.get_metric_history(mv.run_id, k))
                       for k in client.get_run(mv.run_id).data.metrics}
            artifacts = [a.path for a in client.list_artifacts(mv.run_id, "nex/tiny")]
            out[version] = (dict(mv.tags), history, artifacts)
        return out

    before = registry_state()
    second = watch_checkpoints_flow(**watch)
    assert second["scored"] == [] and len(second["done_before"]) == 2
    assert registry_state() == before  # nothing new published

    # a third version registered later is scored by the next scan; an overlapping scan
    # holding the claim of a fourth keeps this scan from scoring it
    register_version(client, "tinyfam", build_tiny_model(tmp_path / "m3", "llama", seed=3))
    register_version(client, "tinyfam", build_tiny_model(tmp_path / "m4", "llama", seed=4))
    from pipelines.publish.mlflow import download_version
    from pipelines.workspace import content_hash

    v4 = download_version("tinyfam", "4", tmp_path / "v4", servers["mlflow"])
    ckpt4 = Checkpoint("tinyfam-v4", str(v4), content_hash(v4))
    calibration = load_calibration_set(calset)
    other_scan = Workspace(workspace).claim(ckpt4.key, calibration, owner="other scan")
    assert other_scan is not None  # a live claim, its heartbeat kept by this process
    third = watch_checkpoints_flow(**watch)
    other_scan.release()
    assert [s["name"] for s in third["scored"]] == ["tinyfam-v3"]
    assert [s["name"] for s in third["claimed_elsewhere"]] == ["tinyfam-v4"]
    assert "other scan (pid" in third["claimed_elsewhere"][0]["holder"]
    assert float(client.get_model_version("tinyfam", "3").tags["nex"]) == \
        {r["checkpoint"]: r for r in Workspace(workspace).entries()}["tinyfam-v3"]["nex"]
    assert "nex" not in client.get_model_version("tinyfam", "4").tags
    assert registry_state() == before
    # the catalog: one row per (checkpoint, calibration set), readable with pyarrow and DuckDB
    import duckdb

    catalog = Path(workspace) / "catalog" / "models.parquet"
    count = duckdb.sql(f"select count(*), count(distinct checkpoint_hash) from '{catalog}'").fetchall()[0]
    assert count == (3, 3)


@pytest.mark.timeout(900)
def test_nex_flows_serve_scores_a_dropped_folder_and_fails_broken_ones_alone(
        servers, calset, tmp_path):
    from prefect import get_client

    from pipelines.workspace import Workspace

    source = tmp_path / "checkpoints"
    source.mkdir()
    build_tiny_model(source / "good", "llama", seed=5)
    build_tiny_model(source / "moe", "mixtral", seed=1)  # unknown architecture: capture fails
    broken = source / "noweights"
    broken.mkdir()
    (broken / "config.json").write_text((source / "good" / "config.json").read_text())
    writing = source / "writing"  # a sharded checkpoint whose second shard is being written
    writing.mkdir()
    (writing / "config.json").write_text((source / "good" / "config.json").read_text())
    (writing / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    (writing / "model-00001-of-00002.safetensors").write_bytes(b"0" * 64)
    (writing / "model-00002-of-00002.safetensors.tmp").write_bytes(b"0" * 16)
    calset_file = tmp_path / "tiny.yaml"
    import yaml

    calset_file.write_text(yaml.safe_dump(calset))
    workspace = tmp_path / "ws"
    log = tmp_path / "serve.log"
    serve = subprocess.Popen(
        [str(BIN / "nex"), "flows", "serve", str(workspace), "--checkpoints", str(source),
         "--calibration-set", str(calset_file), "--interval", "3", "--settle-seconds", "1"],
        env=servers["env"], start_new_session=True, stdout=open(log, "w"),
        stderr=subprocess.STDOUT)
    try:
        ws = Workspace(workspace)

        def wait_for(names: set, seconds: float = 240) -> None:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                done = {r["checkpoint"] for r in ws.entries()}
                failed = {json.loads(p.read_text())["name"]
                          for p in (workspace / "failures").glob("*.json")}
                if names <= done | failed:
                    return
                assert serve.poll() is None, log.read_text()[-3000:]
                time.sleep(1)
            raise AssertionError(f"not scored in time: {names}; log: {log.read_text()[-3000:]}")

        wait_for({"good", "moe", "noweights"})
        failures = {json.loads(p.read_text())["name"]: json.loads(p.read_text())["error"]
                    for p in (workspace / "failures").glob("*.json")}
        assert "checkpoint moe, stage capture" in failures["moe"]
        assert "checkpoint noweights, stage check" in failures["noweights"]
        assert "weights: expected a .safetensors" in failures["noweights"]
        assert [r["checkpoint"] for r in ws.entries()] == ["good"]
        assert "writing" not in failures  # still being written: waits for a later scan
        # a folder dropped in is scored by the next scheduled run
        build_tiny_model(source / "dropped", "llama", seed=6)
        wait_for({"dropped"})
        assert sorted(r["checkpoint"] for r in ws.entries()) == ["dropped", "good"]
        # each broken checkpoint failed its own flow run, named in its message
        with get_client(sync_client=True) as client:
            names = {f.id: f.name for f in client.read_flows()}
            deadline = time.monotonic() + 60
            while True:  # the marker is written just before the flow run reports completion
                runs = [r for r in client.read_flow_runs()
                        if names.get(r.flow_id) == "score-checkpoint"
                        and r.parameters.get("workspace") == str(workspace)]
                completed = [r for r in runs if r.state and r.state.is_completed()]
                if len(completed) >= 2 or time.monotonic() > deadline:
                    break
                time.sleep(1)
        failed = [r for r in runs if r.state and r.state.is_failed()]
        messages = " | ".join(r.state.message or "" for r in failed)
        assert len(failed) == 2 and "stage capture" in messages and "stage check" in messages
        assert len(completed) == 2 and len(runs) == 4  # each checkpoint scored exactly once
        assert (workspace / "published" / "catalog.parquet").is_file()
    finally:
        stop_group(serve)


@pytest.mark.timeout(600)
def test_capture_runs_get_the_gpu_deployments_parameters_and_are_given_up_without_a_worker(
        servers, calset, tmp_path):
    from prefect import get_client

    from flows.flows import watch_checkpoints_flow, watch_summary
    from pipelines.workspace import Workspace, load_calibration_set

    workspace = tmp_path / "ws"
    spec = deploy_infra(tmp_path, servers["env"], workspace, servers["mlflow"])
    gpu = next(d for d in spec["deployments"] if d["entrypoint"].endswith(":capture_flow"))
    assert gpu["parameters"]["device"] == "cuda"  # as shipped: nothing in the test changes it
    source = tmp_path / "checkpoints"
    build_tiny_model(source / "one", "llama", seed=7)
    started = time.monotonic()
    state = watch_checkpoints_flow(str(workspace), calset, directories=[str(source)],
                                   settle_seconds=0, capture_deployment="capture/gpu",
                                   score_deployment="score/cpu", stall_seconds=3,
                                   return_state=True)
    waited = time.monotonic() - started
    assert state.is_failed()  # a checkpoint failed this scan: the watcher's run fails
    summary = watch_summary(state)
    (failed,) = summary["failed"]
    assert failed["name"] == "one" and failed["transient"] and not failed["recorded"]
    assert "stage capture" in failed["error"] and "Crashed" in failed["error"]
    ws = Workspace(workspace)
    assert ws.failures() == [] and ws.claims() == []  # left for the next scan, unclaimed
    assert waited < 120, waited
    with get_client(sync_client=True) as client:
        flows = {f.id: f.name for f in client.read_flows()}
        runs = [r for r in client.read_flow_runs() if flows.get(r.flow_id) == "capture"
                and r.parameters.get("workspace") == str(workspace)]
    # the task tried three times; each run was given up (marked crashed) after the stall limit
    assert len(runs) == 3
    calibration = load_calibration_set(calset).to_dict()
    for run in runs:
        assert run.state.is_crashed() and "no new store part" in run.state.message
        expected = dict(gpu["parameters"], workspace=str(workspace), calibration_set=calibration)
        assert {k: v for k, v in run.parameters.items() if k != "checkpoint"} == expected
        assert run.parameters["checkpoint"]["name"] == "one"
