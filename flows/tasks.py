"""Prefect tasks: each wraps one ``pipelines.workspace`` stage (no maths, no store logic).

Retries: a task is retried (twice, with backoff) only when the failure taxonomy
(:func:`pipelines.failures.failure_kind`) calls its failure transient: a lost connection,
a registry answering 5xx, a crashed stage run; bad input (a broken checkpoint, a bad
calibration set, a missing registry version) fails at once. The MLflow client's own
retries are capped inside flows (:func:`pipelines.publish.mlflow.cap_client_retries`), so
an unreachable registry costs seconds per try.

Reuse: the workspace is the cache, keyed on the checkpoint's content hash and the
calibration set's parameters (never on run ids): a finished capture or score is found and
returned, a half-finished capture resumes from its complete parts. Prefect's own result
cache is therefore off (``NO_CACHE``): it would outlive a deleted workspace.
"""

from __future__ import annotations

import os
import signal
import threading

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run as current_flow_run

from pipelines import workspace as ws
from pipelines.failures import TRANSIENT, failure_kind
from pipelines.publish.mlflow import cap_client_retries

RETRIES = 2
#: Seconds before each retry of a task (backoff).
RETRY_DELAYS = [2, 8]


def transient_only(task_obj, task_run, state) -> bool:
    """Retry condition: retry when the taxonomy calls the failure transient."""
    try:
        state.result(raise_on_failure=True)
    except BaseException as err:  # noqa: BLE001 - every failure is judged by the taxonomy
        return failure_kind(err) == TRANSIENT
    return False


def _checkpoint(value) -> ws.Checkpoint:
    return value if isinstance(value, ws.Checkpoint) else ws.Checkpoint(**value)


def log(message: str, level: str = "info") -> None:
    """Log to the run's logger, or print outside a run."""
    try:
        getattr(get_run_logger(), level)(message)
    except Exception:  # noqa: BLE001 - called directly, outside a run
        print(message)


def owner_label() -> str:
    """Who this process is, for claims and heartbeats: the flow run when there is one."""
    try:
        name = current_flow_run.get_name()
    except Exception:  # noqa: BLE001 - outside a run
        return ""
    return f"flow run {name} ({os.uname().nodename}:{os.getpid()})" if name else ""


_ORPHAN_WATCH = {"started": False}


def stop_with_worker(interval: float = 1.0) -> bool:
    """In a flow-run process a worker (or ``nex flows serve``) started, end this process
    when its parent dies: a SIGKILLed process worker otherwise leaves its flow runs
    capturing. The process gets SIGTERM, which Prefect reports as a crashed run, and a
    later scan resumes the stage. Returns True when the watch runs (once per process)."""
    if _ORPHAN_WATCH["started"] or not os.environ.get("PREFECT__FLOW_RUN_ID"):
        return _ORPHAN_WATCH["started"]
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            threading.Event().wait(interval)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True, name="nex-stop-with-worker").start()
    _ORPHAN_WATCH["started"] = True
    return True


def capture(workspace: str, checkpoint: dict, calibration_set: dict | str,
            device: str | None = None, dtype: str | None = None) -> dict:
    """Capture stage of one checkpoint (see :func:`pipelines.workspace.capture_stage`);
    ``device`` / ``dtype`` are the run's, used where the calibration set leaves them open."""
    ckpt, calset = _checkpoint(checkpoint), ws.load_calibration_set(calibration_set)
    root = ws.Workspace(workspace)
    log(f"{ckpt.name} [{calset.name}]: capture -> {root.store_path(ckpt, calset)}")
    summary = ws.capture_stage(root, ckpt, calset, run={"device": device, "dtype": dtype},
                               owner=owner_label())
    log(f"{ckpt.name} [{calset.name}]: capture "
        + ("reused (finished before)" if summary["reused"] else
           f"done: {summary['traces_written']} traces, {summary['tokens_written']} tokens, "
           f"{summary['parts_skipped']} parts resumed"))
    return summary


def score(workspace: str, checkpoint: dict, calibration_set: dict | str,
          engine: str | None = None) -> dict:
    """Score stage of one checkpoint (see :func:`pipelines.workspace.score_stage`)."""
    ckpt, calset = _checkpoint(checkpoint), ws.load_calibration_set(calibration_set)
    summary = ws.score_stage(ws.Workspace(workspace), ckpt, calset, engine=engine,
                             owner=owner_label())
    log(f"{ckpt.name} [{calset.name}]: score "
        + ("reused (same store)" if summary["reused"] else
           f"done with {summary['engine']}: {summary['n_traces']} traces"))
    return {k: summary[k] for k in ("engine", "n_traces", "store_fingerprint", "reused")}


def publish(workspace: str, checkpoint: dict, calibration_set: dict | str,
            targets: list[str] | None = None, tracking_uri: str | None = None) -> dict:
    """Publish stage of one checkpoint (see :func:`pipelines.workspace.publish_stage`);
    logs ``nex score``'s coverage warning when the NEX rests on too few credited cycles."""
    cap_client_retries()
    ckpt, calset = _checkpoint(checkpoint), ws.load_calibration_set(calibration_set)
    out = ws.publish_stage(ws.Workspace(workspace), ckpt, calset,
                           targets if targets is not None else ["folder", "source"], tracking_uri)
    row = out["row"]
    for warning in out["warnings"]:
        log(f"nex: warning: {warning}", "warning")
    log(f"{ckpt.name} [{calset.name}]: NEX {row['nex']:.5f} (log-gap {row['log_gap']:.4f}, "
        f"{row['responses_with_credit']} of {row['n_responses']} responses with credit, "
        f"{row['credited_cycles']} credited cycles); published: {out['changes']}")
    return out


def scan(workspace: str, source: dict, settle_seconds: float) -> list[dict]:
    """Every checkpoint candidate of one source (ready, pending, broken or unavailable)."""
    cap_client_retries()
    return ws.scan_source(ws.Workspace(workspace), source, settle_seconds)


def _task(fn, name: str):
    return task(fn, name=name, retries=RETRIES, retry_delay_seconds=RETRY_DELAYS,
                retry_condition_fn=transient_only, cache_policy=NO_CACHE)


capture_task = _task(capture, "capture")
score_task = _task(score, "score")
publish_task = _task(publish, "publish")
scan_task = _task(scan, "scan")

__all__ = ["RETRIES", "RETRY_DELAYS", "capture", "capture_task", "log", "owner_label",
           "publish", "publish_task", "scan", "scan_task", "score", "score_task",
           "stop_with_worker", "transient_only"]
