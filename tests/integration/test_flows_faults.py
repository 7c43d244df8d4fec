"""Scheduled scoring under the faults of a real deployment, end to end and with no manual
step: a real Prefect server behind its API auth string, a real MLflow server (sqlite, one
worker, no job runner) and a second one behind MLflow's basic-auth app, the deployments of
infra/prefect.yaml deployed with ``prefect deploy``, and real ``prefect worker start``
process workers for the ``gpu`` and ``cpu`` pools, all started here and shared by the cases
(tiny models, 2 prompts x 2 samples, short stall limits; one torch thread per process, as
the machine running them is a shared 2-core one). Captures run on the ``gpu`` pool; scoring
runs on the ``cpu`` pool where a case is about it and in the scanning process elsewhere
(each flow run on a worker is a fresh interpreter: seconds of start-up per stage).

The basic-auth app checks the password hash on every request (about 1 s of CPU per
request on the loaded 2-core CI machine, against 0.04 s without it), so the registry of
the fault cases is the plain server and the authenticated setup gets one case of its own.

* the registry stopped before a scan and restarted after it: the folder source is scored
  in that scan, every registered version within the next two, each published exactly once
  (stages in the scanning process: the case is about the registry);
* the ``gpu`` worker killed in the middle of a capture: its flow-run process ends by
  itself; then the worker and its flow-run process SIGKILLed together: the waiting
  watcher gives the run up, retries, and the capture resumes from its complete parts;
* ``nex flows watch`` SIGKILLed during a capture on the ``gpu`` pool and run again at once:
  the claim of the dead scan is taken over, the capture run it started is waited on (not
  started twice), and the checkpoint finished in the second run;
* a broken checkpoint beside good ones: only it fails and is recorded, exit status 1, the
  others published; the next scan exits 0;
* a bounded soak: 12 checkpoints (8 folders, 4 registered versions) dropped over 90 s
  while the registry is restarted 3 times and the ``gpu`` worker SIGKILLed 3 times (seeded):
  every checkpoint scored and published exactly once (one catalog row each, every
  version tag set once by the registry's own request log, one value per metric, one
  artifact folder), no claim left, nothing recorded as failed;
* the credentials come from the environment: unauthenticated requests are refused; a scan
  and ``nex publish`` publish to the basic-auth registry with the credentials of their
  environment (a URI with credentials in it is refused), and neither secret appears in
  any flow run's parameters or logs.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

if os.environ.get("CI", "").lower() != "true":
    pytest.importorskip("prefect")
    pytest.importorskip("mlflow")
    pytest.importorskip("flask_wtf")

from pipelines.testing.models import build_tiny_model  # noqa: E402
from pipelines.catalog import published_metrics, published_tags  # noqa: E402
from pipelines.crashsafe import FAULT_ENV  # noqa: E402
from tests.servers import (BIN, REPO, deliver_prefect_backlog, deploy_infra,  # noqa: E402
                           free_port, start_mlflow, start_prefect, start_worker, stop_group,
                           wait_http)

pytestmark = pytest.mark.slow
PROMPTS = ["two plus three is", "she sold ten eggs"]
PREFECT_AUTH = f"nex-ci:prefect-{uuid.uuid4().hex[:16]}"
MLFLOW_ADMIN = ("nex-ci", f"mlflow-{uuid.uuid4().hex[:16]}")
#: Stall limit of the watchers here: longer than a worker takes to come back up.
STALL_SECONDS = 30


class Cluster:
    """The servers and workers of this module, with the faults the cases inflict."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.prefect_port, self.mlflow_port, self.auth_port = free_port(), free_port(), free_port()
        self.prefect_api = f"http://127.0.0.1:{self.prefect_port}/api"
        self.mlflow_uri = f"http://127.0.0.1:{self.mlflow_port}"
        self.auth_mlflow_uri = f"http://127.0.0.1:{self.auth_port}"
        self.env = dict(os.environ, PREFECT_API_URL=self.prefect_api,
                        PREFECT_API_AUTH_STRING=PREFECT_AUTH,
                        PREFECT_HOME=str(root / "client-home"),
                        MLFLOW_TRACKING_URI=self.mlflow_uri,
                        MLFLOW_TRACKING_USERNAME=MLFLOW_ADMIN[0],
                        MLFLOW_TRACKING_PASSWORD=MLFLOW_ADMIN[1], OMP_NUM_THREADS="1")
        self.env.pop(FAULT_ENV, None)
        self.workers: dict[str, subprocess.Popen] = {}
        self.prefect = start_prefect(root, self.prefect_port, PREFECT_AUTH)
        self.mlflow = self._mlflow()
        (root / "auth").mkdir()
        self.auth_mlflow = start_mlflow(root / "auth", self.auth_port, MLFLOW_ADMIN,
                                        env={"MLFLOW_FLASK_SERVER_SECRET_KEY": uuid.uuid4().hex})
        self.mlflow_lock = threading.Lock()

    def _mlflow(self) -> subprocess.Popen:
        return start_mlflow(self.root, self.mlflow_port)

    def wait_mlflow(self) -> float:
        return wait_http(f"{self.mlflow_uri}/health", self.mlflow, self.root / "mlflow.log")

    def stop_mlflow(self) -> None:
        stop_group(self.mlflow)

    def start_mlflow(self) -> float:
        self.mlflow = self._mlflow()
        return self.wait_mlflow()

    def restart_mlflow(self) -> float:
        with self.mlflow_lock:
            self.stop_mlflow()
            return self.start_mlflow()

    def start_worker(self, pool: str, extra_env: dict | None = None) -> None:
        self.workers[pool] = start_worker(pool, self.env, self.root / f"worker-{pool}.log",
                                          extra_env)

    def kill_worker(self, pool: str) -> None:
        """SIGKILL the worker process alone (its flow-run processes have their own sessions)."""
        worker = self.workers.pop(pool)
        worker.send_signal(signal.SIGKILL)
        worker.wait(30)

    def stop(self) -> None:
        for worker in self.workers.values():
            stop_group(worker)
        stop_group(self.prefect)
        stop_group(self.mlflow)
        stop_group(self.auth_mlflow)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    started = time.monotonic()
    cluster = Cluster(root)
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    try:
        wait_http(f"{cluster.prefect_api}/health", cluster.prefect, root / "prefect.log")
        cluster.wait_mlflow()
        wait_http(f"{cluster.auth_mlflow_uri}/health", cluster.auth_mlflow,
                  root / "auth" / "mlflow.log")
        os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = MLFLOW_ADMIN
        from prefect.settings import (PREFECT_API_AUTH_STRING, PREFECT_API_URL, PREFECT_HOME,
                                      temporary_settings)

        with temporary_settings({PREFECT_API_URL: cluster.prefect_api,
                                 PREFECT_API_AUTH_STRING: PREFECT_AUTH,
                                 PREFECT_HOME: str(root / "client-home")}):
            deploy_infra(root, cluster.env, root / "ws-deployed", cluster.mlflow_uri,
                         capture_device="cpu")
            cluster.start_worker("gpu")
            cluster.start_worker("cpu")
            print(f"fault suite: servers, deployments and workers up in "
                  f"{time.monotonic() - started:.1f} s")
            import torch

            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # stages that run in this process
            try:
                yield cluster
            finally:
                torch.set_num_threads(threads)
                deliver_prefect_backlog()
    finally:
        cluster.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="module")
def calset(tmp_path_factory) -> dict:
    """2 prompts x 2 samples, parts of one prompt (so a capture can stop between parts)."""
    root = tmp_path_factory.mktemp("calset")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": text}) + "\n"
                               for i, text in enumerate(PROMPTS)))
    data = dict(name="tiny2x2", prompts=str(prompts), samples=2, max_new_tokens=24, row_size=2,
                top_k_neurons=40, temperature=1.0, part_size=1, batch_size=4)
    import yaml

    (root / "tiny2x2.yaml").write_text(yaml.safe_dump(data))
    data["file"] = str(root / "tiny2x2.yaml")
    return data


def _calset(calset: dict) -> dict:
    return {k: v for k, v in calset.items() if k != "file"}


def mlflow_client(cluster: Cluster, uri: str | None = None):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri or cluster.mlflow_uri, uri or cluster.mlflow_uri)


def register_version(client, name: str, model_dir: Path) -> str:
    experiment = client.get_experiment_by_name("training")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("training")
    run = client.create_run(experiment_id)
    client.log_artifacts(run.info.run_id, str(model_dir), "model")
    client.set_terminated(run.info.run_id)
    version = client.create_model_version(name, f"{run.info.artifact_uri}/model",
                                          run_id=run.info.run_id)
    return str(version.version)


def drop_folder(directory: Path, name: str, seed: int) -> Path:
    """A model folder appearing whole (built aside, renamed in)."""
    staging = directory.parent / f".build-{name}"
    build_tiny_model(staging, "llama", seed=seed)
    old = time.time() - 60  # already settled
    for path in [staging, *staging.rglob("*")]:
        os.utime(path, (old, old))
    directory.mkdir(parents=True, exist_ok=True)
    staging.rename(directory / name)
    return directory / name


POOLS = {"both": dict(capture_deployment="capture/gpu", score_deployment="score/cpu"),
         "gpu": dict(capture_deployment="capture/gpu"), "none": {}}


def scan(cluster: Cluster, workspace: Path, calset: dict, tracking_uri: str | None = None,
         pools: str = "gpu", **sources) -> tuple[bool, dict]:
    """One in-process scan; captures on the gpu pool (``pools="gpu"``), capture and scoring
    on their pools (``"both"``) or every stage here (``"none"``). ``(completed, summary)``."""
    from flows.flows import watch_checkpoints_flow, watch_summary

    stages = POOLS[pools]
    state = watch_checkpoints_flow(
        str(workspace), _calset(calset), tracking_uri=tracking_uri or cluster.mlflow_uri,
        publish_to=["folder", "source"], settle_seconds=0, stall_seconds=STALL_SECONDS,
        return_state=True, **stages, **sources)
    return state.is_completed(), watch_summary(state)


def nex_watch(cluster: Cluster, workspace: Path, calset: dict, directory: Path,
              *extra: str, env: dict | None = None) -> subprocess.Popen:
    argv = [str(BIN / "nex"), "flows", "watch", str(workspace), "--checkpoints", str(directory),
            "--calibration-set", calset["file"], "--settle-seconds", "0", "--publish-to",
            "folder", "--stall-seconds", str(STALL_SECONDS), "--json", *extra]
    return subprocess.Popen(argv, cwd=REPO, env=dict(cluster.env, **(env or {})),
                            start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, seconds: float = 400) -> tuple[int, dict, str]:
    out, err = proc.communicate(timeout=seconds)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return proc.returncode, (json.loads(lines[-1]) if lines else {}), out + err


def wait_file(path: Path, seconds: float = 240, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{path} never appeared: {finish(proc, 5)[2][-3000:]}")
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


def heartbeat(workspace: Path, stage: str = "capture") -> dict:
    (path,) = list((workspace / "checkpoints").glob(f"*/*/{stage}.heartbeat"))
    return json.loads(path.read_text())


def pid_gone(pid: int, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if Path(f"/proc/{pid}/stat").exists() and \
                Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z"):
            return True  # exited, not yet reaped
        time.sleep(0.2)
    return False


def capture_runs(workspace: Path) -> list:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        flows = {f.id: f.name for f in client.read_flows()}
        runs = [r for r in client.read_flow_runs() if flows.get(r.flow_id) == "capture"
                and r.parameters.get("workspace") == str(workspace)]
    return sorted(runs, key=lambda r: r.created)


def entries(workspace: Path) -> dict:
    from pipelines.workspace import Workspace

    return {r["checkpoint"]: r for r in Workspace(workspace).entries()}


def assert_clean(workspace: Path) -> None:
    """No claim left, nothing recorded as failed, every store verifies."""
    from pipelines.store import ActivationStore
    from pipelines.store.verify import verify_store
    from pipelines.workspace import Workspace

    ws = Workspace(workspace)
    assert ws.claims() == [] and ws.failures() == []
    for store in (workspace / "checkpoints").glob("*/*/store"):
        opened = ActivationStore.open(store)
        ids = opened.manifest()["trace_id"].to_pylist()
        assert len(ids) == len(set(ids)) == len(PROMPTS) * 2, store  # every trace once
        assert verify_store(opened).ok


def assert_published_once(client, name: str, version: str, row: dict,
                          tag_changes: int | None) -> None:
    """Tags equal to the catalog row, each set once (``tag_changes``: the tags the scans
    reported setting, when known); one value per metric; one artifact folder with every
    table."""

    mv = client.get_model_version(name, version)
    tags = published_tags(row)
    assert {k: mv.tags.get(k) for k in tags} == tags
    assert tag_changes in (None, len(tags)), (name, version, tag_changes)
    metrics = published_metrics(row)
    for key, value in metrics.items():
        history = client.get_metric_history(mv.run_id, key)
        assert [m.value for m in history] == [value], (name, version, key)
    folders = client.list_artifacts(mv.run_id, f"nex/{row['calibration_set']}")
    assert [Path(f.path).name for f in folders] == [row["tables_fingerprint"][:16]]
    files = {Path(a.path).name for a in client.list_artifacts(mv.run_id, folders[0].path)}
    assert {"models.parquet", "responses.parquet", "neurons.parquet", "run.json"} <= files


def _sum_changes(summaries: list[dict], name: str, target_prefix: str, key: str) -> int:
    total = 0
    for summary in summaries:
        for item in summary["scored"]:
            if item["name"] == name:
                total += sum(v.get(key, 0) for t, v in item["published"].items()
                             if t.startswith(target_prefix))
    return total


# --------------------------------------------------------------------------- the cases
@pytest.mark.timeout(300)
def test_the_servers_refuse_requests_without_the_credentials(cluster):
    import urllib.error
    import urllib.request

    for url in (f"{cluster.prefect_api}/flows/filter",
                f"{cluster.auth_mlflow_uri}/api/2.0/mlflow/registered-models/search"):
        method = "POST" if url.endswith("filter") else "GET"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(url, method=method, data=b"{}"
                                                          if method == "POST" else None), timeout=10)
        assert refused.value.code == 401, url
    assert mlflow_client(cluster, cluster.auth_mlflow_uri).search_registered_models() == []


@pytest.mark.timeout(900)
def test_a_registry_outage_delays_only_the_registry_source(cluster, calset, tmp_path):
    client = mlflow_client(cluster)
    client.create_registered_model("outage")
    for seed in (1, 2):
        register_version(client, "outage", build_tiny_model(tmp_path / f"m{seed}", "llama",
                                                           seed=seed))
    source = tmp_path / "checkpoints"
    drop_folder(source, "folder-one", seed=3)
    workspace = tmp_path / "ws"
    sources = dict(directories=[str(source)], mlflow_models=["outage"])
    cluster.stop_mlflow()
    try:
        started = time.monotonic()
        completed, first = scan(cluster, workspace, calset, pools="none", **sources)
        outage_scan = time.monotonic() - started
    finally:
        cluster.start_mlflow()
    assert not completed
    assert [s["source"] for s in first["sources_failed"]] == ["mlflow outage"]
    assert first["sources_failed"][0]["transient"]
    assert [s["name"] for s in first["scored"]] == ["folder-one"]  # scored regardless
    summaries = [first]
    for _ in range(2):
        completed, summary = scan(cluster, workspace, calset, pools="none", **sources)
        summaries.append(summary)
        if {"outage-v1", "outage-v2"} <= set(entries(workspace)):
            break
    assert completed and sorted(entries(workspace)) == ["folder-one", "outage-v1", "outage-v2"]
    rows = entries(workspace)
    for version in ("1", "2"):
        name = f"outage-v{version}"
        assert_published_once(client, "outage", version, rows[name],
                              _sum_changes(summaries, name, "mlflow:", "tags"))
    for name in rows:
        assert _sum_changes(summaries, name, "folder:", "tables") == 1
    assert_clean(workspace)
    print(f"registry outage: the scan with the registry down took {outage_scan:.1f} s")


@pytest.mark.timeout(900)
def test_killed_gpu_workers_and_flow_runs_resume_the_capture(cluster, calset, tmp_path):
    source = tmp_path / "checkpoints"
    drop_folder(source, "victim", seed=4)
    workspace = tmp_path / "ws"
    release = tmp_path / "release"  # never created: the capture holds at part 1
    waiting = Path(f"{release}.waiting")
    pause = {FAULT_ENV: f"pause:staged:*-c000001-*:{release}"}
    cluster.kill_worker("gpu")
    cluster.start_worker("gpu", pause)
    watch = nex_watch(cluster, workspace, calset, source, "--capture-deployment", "capture/gpu",
                      "--score-deployment", "score/cpu")
    try:
        wait_file(waiting, proc=watch)
        first = heartbeat(workspace)["pid"]
        # the worker alone, SIGKILLed: its flow-run process ends by itself
        cluster.kill_worker("gpu")
        assert pid_gone(first), "the flow-run process outlived its worker"
        waiting.unlink()
        cluster.start_worker("gpu", pause)
        wait_file(waiting, proc=watch)  # the watcher's retry; part 0 is kept
        second = heartbeat(workspace)["pid"]
        assert second != first
        # the worker and its flow-run process, both SIGKILLed: no one reports the run
        cluster.kill_worker("gpu")
        os.kill(second, signal.SIGKILL)
        cluster.start_worker("gpu")
        code, summary, output = finish(watch)
    finally:
        if watch.poll() is None:
            stop_group(watch, signal.SIGKILL)
        if "gpu" not in cluster.workers:
            cluster.start_worker("gpu")
    assert code == 0, output[-4000:]
    assert [s["name"] for s in summary["scored"]] == ["victim"]
    (marker,) = list((workspace / "checkpoints").glob("*/*/capture.json"))
    capture = json.loads(marker.read_text())
    assert capture["parts_skipped"] == 1 and capture["parts_written"] == 1  # resumed
    runs = capture_runs(workspace)
    assert [r.state.type.value for r in runs] == ["CRASHED", "CRASHED", "COMPLETED"]
    assert "process died" in runs[1].state.message
    assert _sum_changes([summary], "victim", "folder:", "tables") == 1
    assert_clean(workspace)


@pytest.mark.timeout(600)
def test_a_killed_watcher_is_taken_over_by_the_next_one_at_once(cluster, calset, tmp_path):
    source = tmp_path / "checkpoints"
    drop_folder(source, "taken", seed=5)
    workspace = tmp_path / "ws"
    release = tmp_path / "release"  # the capture on the gpu pool holds at part 1 until it exists
    cluster.kill_worker("gpu")
    cluster.start_worker("gpu", {FAULT_ENV: f"pause:staged:*-c000001-*:{release}"})
    pools = ("--capture-deployment", "capture/gpu")
    first = nex_watch(cluster, workspace, calset, source, *pools)
    second = None
    try:
        wait_file(Path(f"{release}.waiting"), proc=first)
        (claim,) = list((workspace / "claims").glob("*.claim"))
        assert json.loads(claim.read_text())["pid"] == first.pid  # the scan holds it
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(30)
        started = time.monotonic()
        second = nex_watch(cluster, workspace, calset, source, *pools)
        deadline = time.monotonic() + 120
        while json.loads(claim.read_text() if claim.exists() else "{}").get("pid") != second.pid:
            assert time.monotonic() < deadline and second.poll() is None, "claim not taken over"
            time.sleep(0.2)
        release.touch()  # the capture run the dead scan started goes on
        code, summary, output = finish(second)
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                stop_group(proc, signal.SIGKILL)
        cluster.kill_worker("gpu")
        cluster.start_worker("gpu")
    assert code == 0, output[-4000:]
    assert [s["name"] for s in summary["scored"]] == ["taken"]
    assert summary["claimed_elsewhere"] == []  # the dead scan's claim was taken over at once
    runs = capture_runs(workspace)  # the second scan waited on the first one's capture run
    assert [r.state.type.value for r in runs] == ["COMPLETED"]
    assert_clean(workspace)
    print(f"killed watcher: the second scan finished in {time.monotonic() - started:.1f} s")


@pytest.mark.timeout(600)
def test_a_broken_checkpoint_fails_alone_and_is_recorded(cluster, calset, tmp_path):
    source = tmp_path / "checkpoints"
    for index, name in enumerate(("good-a", "good-b")):
        drop_folder(source, name, seed=10 + index)
    broken = source / "no-weights"
    broken.mkdir()
    (broken / "config.json").write_text((source / "good-a" / "config.json").read_text())
    old = time.time() - 60
    os.utime(broken / "config.json", (old, old))
    os.utime(broken, (old, old))
    workspace = tmp_path / "ws"
    code, summary, output = finish(nex_watch(cluster, workspace, calset, source))
    assert code == 1, output[-4000:]
    assert sorted(s["name"] for s in summary["scored"]) == ["good-a", "good-b"]
    (failed,) = summary["failed"]
    assert failed["name"] == "no-weights" and failed["recorded"] and not failed["transient"]
    assert "checkpoint no-weights, stage check" in failed["error"]
    from pipelines.workspace import Workspace

    assert [f["name"] for f in Workspace(workspace).failures()] == ["no-weights"]
    published = (workspace / "published" / "catalog.parquet")
    import pyarrow.parquet as pq

    assert sorted(pq.read_table(published).column("checkpoint").to_pylist()) == ["good-a", "good-b"]
    code, again, output = finish(nex_watch(cluster, workspace, calset, source))
    assert code == 0, output[-4000:]  # recorded before: not tried, not a failure of this scan
    assert [f["name"] for f in again["failed_before"]] == ["no-weights"] and again["failed"] == []
    assert len(again["done_before"]) == 2


@pytest.mark.timeout(1500)
def test_soak_twelve_checkpoints_through_registry_restarts_and_worker_kills(
        cluster, calset, tmp_path):
    rng = random.Random(15)
    client = mlflow_client(cluster)
    client.create_registered_model("soak")
    source, workspace = tmp_path / "checkpoints", tmp_path / "ws"
    source.mkdir()
    kinds = ["folder"] * 8 + ["mlflow"] * 4
    rng.shuffle(kinds)
    span = 90.0  # seconds over which checkpoints are dropped and faults happen
    events = [(rng.uniform(0, span), "drop", i) for i in range(12)]
    events += [(rng.uniform(10, span), "restart-mlflow", None) for _ in range(3)]
    events += [(rng.uniform(10, span), "kill-worker", "gpu") for _ in range(3)]
    events.sort(key=lambda e: e[0])
    done_events: list[tuple] = []
    errors: list[BaseException] = []

    def chaos() -> None:
        start = time.monotonic()
        try:
            for at, what, arg in events:
                time.sleep(max(0.0, start + at - time.monotonic()))
                if what == "drop" and kinds[arg] == "folder":
                    drop_folder(source, f"soak-{arg:02d}", seed=100 + arg)
                elif what == "drop":
                    model = build_tiny_model(tmp_path / "models" / f"soak-{arg:02d}", "llama",
                                             seed=100 + arg)
                    with cluster.mlflow_lock:  # registering needs the registry up
                        register_version(client, "soak", model)
                elif what == "restart-mlflow":
                    cluster.restart_mlflow()
                else:
                    cluster.kill_worker(arg)
                    time.sleep(1.0)
                    cluster.start_worker(arg)
                done_events.append((round(time.monotonic() - start, 1), what, arg))
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            errors.append(err)

    mlflow_log = cluster.root / "mlflow.log"
    log_start = mlflow_log.stat().st_size
    thread = threading.Thread(target=chaos, daemon=True)
    started = time.monotonic()
    thread.start()
    summaries = []
    sources = dict(directories=[str(source)], mlflow_models=["soak"])
    while time.monotonic() - started < 1200:
        _, summary = scan(cluster, workspace, calset, **sources)
        summaries.append(summary)
        assert not any(f.get("recorded") for f in summary["failed"]), summary["failed"]
        if not thread.is_alive() and len(entries(workspace)) == 12:
            break
        if not summary["scored"] and not summary["failed"]:
            time.sleep(3.0)  # nothing new yet
    thread.join(60)
    assert not errors, errors
    rows = entries(workspace)
    assert len(rows) == 12, (sorted(rows), done_events)
    completed, last = scan(cluster, workspace, calset, **sources)  # nothing left to do
    assert completed and len(last["done_before"]) == 12 and last["scored"] == []
    summaries.append(last)
    import pyarrow.parquet as pq

    published = pq.read_table(workspace / "published" / "catalog.parquet").to_pylist()
    assert sorted(r["checkpoint"] for r in published) == sorted(rows)  # one row each
    for name, row in rows.items():
        scored = [s for summary in summaries for s in summary["scored"] if s["name"] == name]
        assert len(scored) == 1, (name, len(scored))  # scored exactly once
        if name.startswith("soak-v"):
            assert_published_once(client, "soak", name.rsplit("-v", 1)[1], row, None)
    versions = [n for n in rows if n.startswith("soak-v")]
    assert len(versions) == 4
    # every tag was set once: the registry's own request log (a publish cut off by a
    # restart is finished later, never repeated)
    with open(mlflow_log, "rb") as handle:
        handle.seek(log_start)
        requests = handle.read().decode(errors="replace")
    tags_per_version = len(published_tags(rows[versions[0]]))
    assert requests.count("/model-versions/set-tag HTTP/1.1\" 200") == 4 * tags_per_version
    assert_clean(workspace)
    # each checkpoint captured once on the pool: a publish retried after a registry restart
    # does not send another capture there (runs given up after a kill are crashed ones)
    completed_captures = [r for r in capture_runs(workspace) if r.state.is_completed()]
    assert len(completed_captures) == 12
    assert [e[1] for e in done_events].count("restart-mlflow") == 3
    assert [e[1] for e in done_events].count("kill-worker") == 3
    print(f"soak: {len(summaries)} scans in {time.monotonic() - started:.0f} s; "
          f"faults: {[e for e in done_events if e[1] != 'drop']}")


@pytest.mark.timeout(600)
def test_a_scan_and_nex_publish_reach_the_basic_auth_registry_with_environment_credentials(
        cluster, calset, tmp_path):
    uri = cluster.auth_mlflow_uri
    client = mlflow_client(cluster, uri)
    client.create_registered_model("guarded")
    register_version(client, "guarded", build_tiny_model(tmp_path / "m", "llama", seed=21))
    workspace = tmp_path / "ws"
    # stages here: the credentials are this process's environment
    completed, summary = scan(cluster, workspace, calset, tracking_uri=uri, pools="none",
                              mlflow_models=["guarded"])
    assert completed and [s["name"] for s in summary["scored"]] == ["guarded-v1"]
    row = entries(workspace)["guarded-v1"]
    assert client.get_model_version("guarded", "1").tags["nex"] == published_text(row["nex"])
    tables = str(workspace / row["tables"])
    argv = [str(BIN / "nex"), "publish", tables, "--to", "mlflow:models:/guarded/1",
            "--calibration-set", calset["name"], "--tracking-uri", uri]
    done = subprocess.run(argv, env=cluster.env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    anonymous = {k: v for k, v in cluster.env.items() if not k.startswith("MLFLOW_TRACKING_")}
    refused = subprocess.run(argv, env=anonymous, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1 and "nex: error: registry" in refused.stderr
    inline = argv[:-1] + [uri.replace("://", f"://{MLFLOW_ADMIN[0]}:{MLFLOW_ADMIN[1]}@")]
    leaked = subprocess.run(inline, env=anonymous, capture_output=True, text=True, timeout=300)
    assert leaked.returncode == 2 and "no user name or password in it" in leaked.stderr
    assert MLFLOW_ADMIN[1] not in leaked.stderr + leaked.stdout


def published_text(value: float) -> str:
    return repr(float(value))


@pytest.mark.timeout(300)
def test_the_credentials_never_reach_flow_parameters_or_logs(cluster):
    from prefect import get_client
    from prefect.client.schemas.sorting import LogSort

    secrets = (PREFECT_AUTH, PREFECT_AUTH.split(":", 1)[1], MLFLOW_ADMIN[1])
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(limit=200)
        assert runs, "no flow runs: the cases above did not run"
        for run in runs:
            text = json.dumps(run.parameters, default=str)
            assert not any(s in text for s in secrets), run.name
        offset, seen = 0, 0
        while True:
            logs = client.read_logs(limit=200, offset=offset, sort=LogSort.TIMESTAMP_ASC)
            for entry in logs:
                assert not any(s in entry.message for s in secrets), entry.message[:200]
            seen += len(logs)
            offset += len(logs)
            if len(logs) < 200:
                break
    assert seen > 0
    for log in cluster.root.glob("worker-*.log"):
        assert not any(s in log.read_text(errors="replace") for s in secrets), log
