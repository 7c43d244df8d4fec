"""Real servers and workers for the flows tests: a Prefect server, an MLflow server (sqlite,
one worker, no job runner; optionally its basic-auth app), process workers, and the
deployments of infra/prefect.yaml deployed as a user deploys them. Everything binds
127.0.0.1 and runs in its own process group, stopped by the caller."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from base64 import b64encode
from contextlib import contextmanager
from pathlib import Path

import yaml

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, log: Path, seconds: float = 180,
              auth: str | None = None) -> float:
    """Wait until ``url`` answers; returns the seconds waited."""
    start = time.monotonic()
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + b64encode(auth.encode()).decode())
    while time.monotonic() < start + seconds:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: server exited {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(request, timeout=2):
                return time.monotonic() - start
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url}: not up after {seconds} s: {log.read_text()[-2000:]}")


def stop_group(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop a process and every process it started (its own process group)."""
    try:
        os.killpg(proc.pid, sig)
        proc.wait(20)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


@contextmanager
def dask_cluster(logs: Path, workers: int = 2):
    """A real Dask scheduler and ``workers`` worker processes (one thread each, no nanny)
    on 127.0.0.1, started from this venv with the repository importable and this process's
    environment (object-store credentials and endpoint included); yields
    ``(address, worker processes)`` once every worker has joined, and kills them all on
    exit. Logs go to ``logs``."""
    from distributed import Client

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    dask = str(BIN / "dask")
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--no-dashboard"], stdout=open(logs / "scheduler.log", "w"),
                              stderr=subprocess.STDOUT, env=env, start_new_session=True)]
    started = []
    try:
        for i in range(workers):
            started.append(subprocess.Popen(
                [dask, "worker", address, "--nworkers", "1", "--nthreads", "1", "--no-nanny",
                 "--no-dashboard", "--host", "127.0.0.1", "--name", f"w{i}"],
                stdout=open(logs / f"worker{i}.log", "w"), stderr=subprocess.STDOUT, env=env,
                start_new_session=True))
        procs += started
        with Client(address, timeout="60s") as client:
            client.wait_for_workers(workers, timeout=90)
        yield address, started
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def deliver_prefect_backlog(timeout: float = 60.0) -> None:
    """Send what this process's Prefect log and event services still hold while the
    server is up, and stop them. A flow run in the test process queues logs and events for
    its server; stopping the server first leaves them queued, and Prefect's exit hook then
    retries each one against the dead server (over an hour for a few hundred items), so
    the test process never exits. Called before the fixtures stop their servers."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        service.drain_all(timeout=timeout, at_exit=False)


def discard_prefect_backlog(timeout: float = 30.0) -> int:
    """Drop the items Prefect services of this process could not deliver (their server is
    gone) and stop the services within ``timeout``; returns how many were dropped. The
    test session's last step, so exit never waits on a server that no longer exists."""
    if "prefect" not in sys.modules:
        return 0
    import concurrent.futures
    import queue as queue_module

    from prefect._internal.concurrency import services

    dropped, pending = 0, []
    for service in list(services._active_services):
        if service._done_event is None or service._done_event.is_set():
            continue
        while True:
            try:
                service._queue.get_nowait()
            except queue_module.Empty:
                break
            service._queue.task_done()
            dropped += 1
        pending.append(service._drain(at_exit=True))
    concurrent.futures.wait(pending, timeout=timeout)
    return dropped


def prefect_env(root: Path, auth: str | None = None) -> dict:
    """Environment of a Prefect server (and its clients) whose state lives under ``root``."""
    env = dict(os.environ, PREFECT_HOME=str(root / "prefect-home"),
               PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{root / 'prefect.db'}",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false",
               PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="1",
               PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED="false")
    env.pop("PREFECT_API_URL", None)
    if auth:
        env["PREFECT_SERVER_API_AUTH_STRING"] = auth
    return env


def start_prefect(root: Path, port: int, auth: str | None = None) -> subprocess.Popen:
    log = root / "prefect.log"
    return subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=prefect_env(root, auth), start_new_session=True, stdout=open(log, "w"),
        stderr=subprocess.STDOUT)


def start_mlflow(root: Path, port: int, admin: tuple[str, str] | None = None,
                 env: dict | None = None) -> subprocess.Popen:
    """An MLflow server on sqlite (``root/mlflow.db``, artifacts under ``root``); with
    ``admin`` its basic-auth app (MLFLOW_FLASK_SERVER_SECRET_KEY must be in ``env``), that
    user as admin and no access for anyone else."""
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", **(env or {}))
    argv = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--default-artifact-root", str(root / "mlflow-artifacts"), "--host", "127.0.0.1",
            "--port", str(port), "--workers", "1"]
    if admin:
        config = root / "basic_auth.ini"
        config.write_text(f"[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
                          f"database_uri = sqlite:///{root / 'basic_auth.db'}\n"
                          f"admin_username = {admin[0]}\nadmin_password = {admin[1]}\n"
                          f"authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(config)
        argv += ["--app-name", "basic-auth"]
    log = root / "mlflow.log"
    return subprocess.Popen(argv, env=env, start_new_session=True, stdout=open(log, "a"),
                            stderr=subprocess.STDOUT)


def deploy_infra(root: Path, env: dict, workspace: Path, tracking_uri: str,
                 capture_device: str | None = None) -> dict:
    """Deploy infra/prefect.yaml with ``prefect deploy`` after setting only the fields a
    user edits (the checkout, the workspace, the tracking URI; ``capture_device`` for the
    GPU pool's device where the test machine has no GPU); the watcher's cron schedule is
    left out so that no scheduled scan runs during a test. Creates the work pools first
    (this process must have the server's API URL in its settings). Returns the deployed
    spec."""
    spec = yaml.safe_load((REPO / "infra" / "prefect.yaml").read_text())
    spec["pull"][0]["prefect.deployments.steps.set_working_directory"]["directory"] = str(REPO)
    for deployment in spec["deployments"]:
        params = deployment.get("parameters") or {}
        params["workspace"] = str(workspace)
        if "tracking_uri" in params:
            params["tracking_uri"] = tracking_uri
        if deployment["entrypoint"].endswith(":capture_flow") and capture_device:
            params["device"] = capture_device
        deployment.pop("schedules", None)
    spec.pop("definitions", None)
    path = root / "prefect.yaml"
    path.write_text(yaml.safe_dump(spec))
    create_pools(("gpu", "cpu"))
    done = subprocess.run([str(BIN / "prefect"), "--no-prompt", "deploy", "--all",
                           "--prefect-file", str(path)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return spec


def create_pools(names) -> None:
    """Process work pools (what ``prefect work-pool create NAME --type process`` makes)."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        for name in names:
            try:
                client.create_work_pool(WorkPoolCreate(name=name, type="process"))
            except ObjectAlreadyExists:
                pass


def start_worker(pool: str, env: dict, log: Path, extra_env: dict | None = None
                 ) -> subprocess.Popen:
    """``prefect worker start --pool POOL`` polling every second, in its own session."""
    worker_env = dict(env, PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_WORKER_PREFETCH_SECONDS="5",
                      **(extra_env or {}))
    return subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", pool,
                             "--type", "process"], cwd=REPO, env=worker_env,
                            start_new_session=True, stdout=open(log, "a"),
                            stderr=subprocess.STDOUT)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())
