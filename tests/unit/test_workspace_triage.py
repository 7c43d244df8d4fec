"""The failure taxonomy against real exception objects (the MLflow client's, requests',
urllib3's, ours) and real Prefect states; the scan triage and the stall rule, both pure."""

from __future__ import annotations

import importlib
import json
import os
import socket
import time

import pytest

from pipelines.crashsafe import Holder, holder_record
from pipelines.failures import BAD_INPUT, BAD_INPUT_STATE, TRANSIENT, describe, failure_kind
from pipelines.workspace import (CheckpointError, Facts, StageBusy, StageError, WorkspaceError,
                                 after_failure, stall_reason, triage)

pytestmark = pytest.mark.timeout(120)


def need(module: str):
    if os.environ.get("CI", "").lower() == "true":
        return importlib.import_module(module)
    return pytest.importorskip(module)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_mlflow_clients_own_errors(monkeypatch):
    need("mlflow")
    import requests
    from mlflow.exceptions import RestException
    from mlflow.tracking import MlflowClient
    from mlflow.utils.rest_utils import verify_rest_response

    # connection refused, as the client raises it (its retries cut to none for speed)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(Exception) as refused:
        MlflowClient(uri, uri).get_model_version("m", "1")
    assert "Connection refused" in str(refused.value) or "Max retries" in str(refused.value)
    assert failure_kind(refused.value) == TRANSIENT

    def answer(status: int, body: dict | str):
        response = requests.Response()
        response.status_code = status
        response._content = (json.dumps(body) if isinstance(body, dict) else body).encode()
        with pytest.raises(Exception) as err:
            verify_rest_response(response, "/api/2.0/mlflow/model-versions/get")
        return err.value

    missing = answer(404, {"error_code": "RESOURCE_DOES_NOT_EXIST",
                           "message": "Model Version (name=m, version=9) not found"})
    assert isinstance(missing, RestException) and failure_kind(missing) == BAD_INPUT
    bad = answer(400, {"error_code": "INVALID_PARAMETER_VALUE", "message": "bad name"})
    assert failure_kind(bad) == BAD_INPUT
    for status, body in ((500, {"error_code": "INTERNAL_ERROR", "message": "db locked"}),
                         (503, "<html>Service Unavailable</html>"), (502, "Bad Gateway"),
                         (401, "<html>Unauthorized</html>"), (429, "slow down")):
        err = answer(status, body)
        assert failure_kind(err) == TRANSIENT, (status, describe(err))


def test_connection_errors_of_requests_and_urllib3():
    import requests
    import urllib3

    url = f"http://127.0.0.1:{closed_port()}/"
    with pytest.raises(requests.exceptions.ConnectionError) as refused:
        requests.get(url, timeout=5)
    assert failure_kind(refused.value) == TRANSIENT
    with pytest.raises(urllib3.exceptions.MaxRetryError) as retries:
        urllib3.PoolManager().request("GET", url, retries=urllib3.Retry(0))
    assert failure_kind(retries.value) == TRANSIENT
    assert failure_kind(TimeoutError("read timed out")) == TRANSIENT
    assert failure_kind(OSError(28, "No space left on device")) == TRANSIENT


def test_prefect_states():
    need("prefect")
    from prefect.states import Cancelled, Completed, Crashed, Failed, Pending, Running

    assert failure_kind(Crashed(message="worker died")) == TRANSIENT
    assert failure_kind(Cancelled()) == TRANSIENT
    assert failure_kind(Running()) == TRANSIENT  # gave up on a run that never finished
    assert failure_kind(Pending()) == TRANSIENT
    assert failure_kind(Failed(message="ConnectionError")) == TRANSIENT
    assert failure_kind(Failed(name=BAD_INPUT_STATE, message="checkpoint x: bad")) == BAD_INPUT
    with pytest.raises(ValueError):
        failure_kind(Completed())
    with pytest.raises(TypeError):
        failure_kind("failed")
    assert describe(Crashed(message="worker died\nmore")) == "Crashed: worker died"


def test_our_errors():
    from pipelines.capture import ArchitectureError
    from pipelines.publish import PublishError

    for bad in (CheckpointError("weights: expected a file, got none"),
                ArchitectureError("mixtral: expected a dense MLP, got experts"),
                WorkspaceError("calibration set x: bad"), PublishError("version: missing")):
        assert failure_kind(bad) == BAD_INPUT and after_failure(bad) == "record"
    assert failure_kind(StageBusy("running elsewhere")) == TRANSIENT
    assert failure_kind(KeyError("surprise")) == TRANSIENT  # unknown: tried again
    # a stage error carries its cause's verdict, whatever its own class
    assert failure_kind(StageError("ck", "publish", ConnectionError("refused"))) == TRANSIENT
    assert after_failure(StageError("ck", "capture", CheckpointError("bad"))) == "record"
    need("prefect")
    from prefect.states import Crashed

    crashed = StageError("ck", "capture", Crashed(message="no heartbeat"))
    assert crashed.transient and str(crashed) == "checkpoint ck, stage capture: Crashed: no heartbeat"


def _item(state: str, **extra) -> dict:
    checkpoint = {"name": "a", "path": "/a", "content_hash": "ab" * 32, "source": {}}
    return dict({"name": "a", "path": "/a", "state": state, "why": "w",
                 "checkpoint": checkpoint if state == "ready" else None}, **extra)


def test_triage():
    live = Holder({"owner": "scan A", "pid": 1, "host": "h"}, 1.0, True)
    dead = Holder({"owner": "scan A", "pid": 1, "host": "h"}, 1.0, False)
    assert triage(_item("pending"), Facts("")).action == "pending"
    assert triage(_item("unavailable"), Facts("")).action == "unavailable"
    assert triage(_item("ready"), Facts("k", done={"nex": 0.5})).action == "done"
    assert triage(_item("ready"), Facts("k", failure={"error": "x"})).action == "failed_before"
    claimed = triage(_item("ready"), Facts("k", holder=live))
    assert claimed.action == "claimed" and "scan A" in claimed.detail["holder"]
    score = triage(_item("ready"), Facts("k", holder=dead))
    assert score.action == "score" and score.target["name"] == "a" and score.key == "k"
    broken = triage(_item("broken"), Facts("a-broken-1"))
    assert broken.action == "score" and broken.target == "/a"  # fails its own flow run
    assert triage(_item("broken"), Facts("a-broken-1", failure={"error": "x"})).action == \
        "failed_before"


def test_stall_rule():
    me = holder_record(60)
    assert stall_reason(Holder(me, 1.0, True), 10_000, 5) is None  # a live heartbeat works
    gone = dict(me, pid=_dead_pid())
    assert "process died" in stall_reason(Holder(gone, 1.0, False), 0, 600)  # at once
    lapsed = dict(me, host="elsewhere")
    assert stall_reason(Holder(lapsed, 90.0, False), 10, 600) is None
    assert "no new store part" in stall_reason(Holder(lapsed, 90.0, False), 600, 600)
    assert stall_reason(None, 5, 600) is None and stall_reason(None, 601, 600)


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    time.sleep(0.05)
    return proc.pid
