"""Prefect flows: capture, score and publish one checkpoint for one calibration set, and
watch checkpoint sources so that every new checkpoint is scored exactly once.

    capture_flow           checkpoint + calibration set -> the workspace store (GPU pool)
    score_flow             store -> tables (CPU pool; local, Dask or Beam engine)
    publish_flow           tables -> workspace catalog + folder / MLflow / Hugging Face
    score_checkpoint_flow  the three for one checkpoint; failures name checkpoint and stage
    watch_checkpoints_flow scan directories of model folders and MLflow registered models,
                           run score_checkpoint_flow for each checkpoint without a score

All work is in ``pipelines.workspace``; these functions only sequence it. A stage flow
whose input is bad ends in the ``Failed`` state named ``BadInput``
(:data:`pipelines.failures.BAD_INPUT_STATE`), so a flow that ran it on another pool reads
the verdict from the state; any other failure is transient (see :mod:`pipelines.failures`).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from prefect import flow, get_client, task
from prefect.cache_policies import NO_CACHE
from prefect.deployments import run_deployment
from prefect.states import Cancelling, Crashed, Failed

from pipelines import workspace as ws
from pipelines.crashsafe import atomic_write_json, read_json
from pipelines.failures import BAD_INPUT, BAD_INPUT_STATE, TRANSIENT, describe, failure_kind
from pipelines.publish.mlflow import cap_client_retries, check_tracking_uri

from flows.tasks import (RETRIES, RETRY_DELAYS, capture_task, log, owner_label, publish_task,
                         scan_task, score_task, stop_with_worker, transient_only)

#: A stage run sent to another pool that shows no progress (no new store part, no live
#: heartbeat) for this many seconds is given up, marked crashed and left for a retry.
STALL_SECONDS = ws.STALL_SECONDS
#: How often a flow waiting on a stage run elsewhere looks at it.
POLL_SECONDS = 1.0
#: After asking a live but overdue stage run to cancel, how long to wait for its worker.
CANCEL_GRACE_SECONDS = 30.0


class WatchFailed(Exception):
    """Some checkpoints failed or a source could not be read in this scan: the watcher's
    flow run ends ``Failed``; ``summary`` holds every checkpoint's outcome."""

    def __init__(self, summary: dict, text: str) -> None:
        self.summary = summary
        super().__init__(text)


def _verdict(err: Exception):
    """The final state of a stage flow that failed: ``Failed`` named ``BadInput`` for bad
    input (data: the exception), otherwise the exception is raised again (transient)."""
    if failure_kind(err) == BAD_INPUT:
        return Failed(name=BAD_INPUT_STATE, message=str(err), data=err)
    raise err


@flow(name="capture", log_prints=True)
def capture_flow(workspace: str, checkpoint: dict, calibration_set: str | dict = "gsm8k",
                 device: str | None = None, dtype: str | None = None) -> dict:
    """Capture one checkpoint's responses to the calibration set into its workspace store
    (``device`` / ``dtype``: this run's, where the calibration set leaves them open)."""
    stop_with_worker()
    try:
        return capture_task(workspace, checkpoint, calibration_set, device, dtype)
    except Exception as err:  # noqa: BLE001 - judged by the taxonomy
        return _verdict(err)


@flow(name="score", log_prints=True)
def score_flow(workspace: str, checkpoint: dict, calibration_set: str | dict = "gsm8k",
               engine: str | None = None) -> dict:
    """Score one checkpoint's store into its tables (engine: the calibration set's, or
    ``local`` / ``dask`` / ``beam``)."""
    stop_with_worker()
    try:
        return score_task(workspace, checkpoint, calibration_set, engine)
    except Exception as err:  # noqa: BLE001 - judged by the taxonomy
        return _verdict(err)


@flow(name="publish", log_prints=True)
def publish_flow(workspace: str, checkpoint: dict, calibration_set: str | dict = "gsm8k",
                 targets: list[str] | None = None, tracking_uri: str | None = None) -> dict:
    """Record the checkpoint in the workspace catalog and publish it to ``targets``."""
    stop_with_worker()
    try:
        return publish_task(workspace, checkpoint, calibration_set, targets, tracking_uri)
    except Exception as err:  # noqa: BLE001 - judged by the taxonomy
        return _verdict(err)


def _resolve(workspace: str, checkpoint: str | dict) -> dict:
    if isinstance(checkpoint, dict):
        return checkpoint
    path = Path(checkpoint).absolute()
    state, why = ws.checkpoint_state(path, settle_seconds=0.0)
    if state != "ready":
        raise ws.CheckpointError(f"{path}: {why}")
    return asdict(ws.Checkpoint(path.name, str(path), ws.cached_content_hash(workspace, path),
                                {"kind": "directory"}))


# --------------------------------------------------------------------------- remote stages
def _adoptable(client, record: dict | None, deployment: str):
    """The flow run an earlier (killed) flow sent for this stage, when it is still worth
    waiting on: not finished, or completed."""
    if not record or record.get("deployment") != deployment:
        return None
    try:
        run = client.read_flow_run(record["flow_run_id"])
    except Exception:  # noqa: BLE001 - deleted or unreadable: start a new one
        return None
    if run.state is None or not run.state.is_final() or run.state.is_completed():
        return run
    return None


def _give_up(client, run, holder, reason: str):
    """Stop waiting on a stage run: ask a live one to cancel (its worker ends the process),
    then mark it crashed so that nothing waits on it again. Returns the final state."""
    message = f"nex: stage run given up: {reason}"
    if holder is not None and holder.live:
        client.set_flow_run_state(run.id, Cancelling(message=message), force=True)
        deadline = time.monotonic() + CANCEL_GRACE_SECONDS
        while time.monotonic() < deadline:
            state = client.read_flow_run(run.id).state
            if state is not None and state.is_final():
                return state
            time.sleep(POLL_SECONDS)
    client.set_flow_run_state(run.id, Crashed(message=message), force=True)
    return client.read_flow_run(run.id).state


def remote_stage(workspace: str, checkpoint: dict, calibration_set: dict, stage: str,
                 deployment: str, parameters: dict, stall_seconds: float = STALL_SECONDS) -> dict:
    """Run a stage as a flow run of ``deployment`` (another work pool) and wait for it,
    never forever: the run is given up (cancelled, marked crashed, a transient failure)
    when its calibration set's deadline passes or it stalls (:func:`pipelines.workspace.
    stall_reason`). A flow run an earlier, killed flow sent for this stage is adopted
    instead of starting a second one. Raises :class:`pipelines.workspace.StageError`."""
    root, calset = ws.Workspace(workspace), ws.load_calibration_set(calibration_set)
    ckpt = ws.Checkpoint(**checkpoint)
    record_path = root.run_record_path(ckpt, calset, stage)
    deadline = calset.deadline(stage)
    with get_client(sync_client=True) as client:
        record = read_json(record_path)
        run = _adoptable(client, record, deployment)
        if run is None:
            ws.clear_stale_heartbeat(root, ckpt, calset, stage)
            run = run_deployment(deployment, parameters=parameters, timeout=0)
            record = {"flow_run_id": str(run.id), "deployment": deployment, "created": time.time()}
            atomic_write_json(record_path, record)
        else:
            log(f"{ckpt.name} [{calset.name}]: {stage}: waiting on flow run {run.name} "
                f"started by an earlier scan")
        last_parts, last_state, last_change = None, None, time.monotonic()
        while True:
            run = client.read_flow_run(run.id)
            state = run.state
            if state is not None and state.is_final():
                break
            parts, holder = ws.stage_progress(root, ckpt, calset, stage)
            now = time.monotonic()
            if parts != last_parts or (state and state.type) != last_state:
                last_parts, last_state, last_change = parts, state and state.type, now
            reason = ws.stall_reason(holder, now - last_change, stall_seconds)
            if reason is None and time.time() - record["created"] > deadline:
                reason = f"its deadline of {deadline:g} s passed"
            if reason is not None:
                log(f"{ckpt.name} [{calset.name}]: {stage}: giving up flow run {run.name}: "
                    f"{reason}", "warning")
                state = _give_up(client, run, holder, reason)
                break
            time.sleep(POLL_SECONDS)
    if state is not None and state.is_completed():
        return {"deployment": deployment, "flow_run": str(run.id), "flow_run_name": run.name}
    if state is None:
        raise ws.StageError(ckpt.name, stage, f"flow run {run.name} of {deployment} has no "
                            f"state", transient=True)
    raise ws.StageError(ckpt.name, stage, state)


remote_stage_task = task(remote_stage, name="remote-stage", retries=RETRIES,
                         retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=transient_only,
                         cache_policy=NO_CACHE)


# --------------------------------------------------------------------------- one checkpoint
@flow(name="score-checkpoint", log_prints=True)
def score_checkpoint_flow(workspace: str, checkpoint: str | dict,
                          calibration_set: str | dict = "gsm8k",
                          publish_to: list[str] | None = None, tracking_uri: str | None = None,
                          device: str | None = None, dtype: str | None = None,
                          engine: str | None = None, capture_deployment: str | None = None,
                          score_deployment: str | None = None,
                          stall_seconds: float = STALL_SECONDS) -> dict:
    """Capture, score and publish one checkpoint (a model folder path, or a checkpoint dict
    from a scan) for one calibration set.

    ``capture_deployment`` / ``score_deployment`` (e.g. ``capture/gpu``) run that stage as a
    deployment on its work pool (GPU capture, CPU scoring; the workspace must then be on
    storage every worker sees), with a deadline and a stall limit (``stall_seconds``);
    by default the stages run here as subflows. ``device`` / ``dtype`` go to the capture
    only when given (else the capture deployment's own parameters, or the defaults, apply).
    A failure raises :class:`pipelines.workspace.StageError` naming the checkpoint and the
    stage; bad input ends the run in the ``BadInput`` failed state.
    """
    stop_with_worker()
    cap_client_retries()
    try:
        return _score_checkpoint(workspace, checkpoint, calibration_set, publish_to,
                                 tracking_uri, device, dtype, engine, capture_deployment,
                                 score_deployment, stall_seconds)
    except Exception as err:  # noqa: BLE001 - judged by the taxonomy
        return _verdict(err)


def _score_checkpoint(workspace, checkpoint, calibration_set, publish_to, tracking_uri, device,
                      dtype, engine, capture_deployment, score_deployment, stall_seconds) -> dict:
    name = checkpoint.get("name", "?") if isinstance(checkpoint, dict) else Path(checkpoint).name
    try:
        check_tracking_uri(tracking_uri)
        ckpt = _resolve(workspace, checkpoint)
        calset = ws.load_calibration_set(calibration_set).to_dict()
    except Exception as err:
        raise ws.StageError(name, "check", err) from err
    summary: dict = {"checkpoint": ckpt["name"], "calibration_set": calset["name"]}
    common = dict(workspace=workspace, checkpoint=ckpt, calibration_set=calset)
    capture_run = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
    score_run = {"engine": engine} if engine is not None else {}
    stages = (
        ("capture", capture_deployment, lambda: capture_flow(**common, **capture_run),
         dict(common, **capture_run)),
        ("score", score_deployment, lambda: score_flow(**common, **score_run),
         dict(common, **score_run)),
        ("publish", None, lambda: publish_flow(workspace, ckpt, calset, publish_to, tracking_uri),
         None),
    )
    for stage, deployment, local, parameters in stages:
        log(f"{ckpt['name']} [{calset['name']}]: {stage} ...")
        try:
            finished = ws.finished_stage(ws.Workspace(workspace), ws.Checkpoint(**ckpt),
                                         ws.load_calibration_set(calset), stage) \
                if deployment else None
            if finished is not None:  # done before: no flow run on the other pool
                summary[stage] = {"reused": True, "deployment": deployment}
            elif deployment:
                summary[stage] = remote_stage_task(workspace, ckpt, calset, stage, deployment,
                                                   parameters, stall_seconds)
            else:
                summary[stage] = local()
        except ws.StageError:
            raise
        except Exception as err:
            raise ws.StageError(ckpt["name"], stage, err) from err
    row = summary["publish"]["row"]
    summary.update(nex=row["nex"], log_gap=row["log_gap"], checkpoint_key=row["checkpoint_key"])
    return summary


# --------------------------------------------------------------------------- the watcher
SUMMARY_KEYS = ("scored", "failed", "pending", "done_before", "claimed_elsewhere",
                "failed_before", "sources_failed")


@flow(name="watch-checkpoints", log_prints=True)
def watch_checkpoints_flow(workspace: str, calibration_set: str | dict = "gsm8k",
                           directories: list[str] | None = None,
                           mlflow_models: list[str] | None = None,
                           tracking_uri: str | None = None,
                           publish_to: list[str] | None = None,
                           settle_seconds: float = ws.SETTLE_SECONDS,
                           claim_stale_seconds: float = ws.CLAIM_STALE_SECONDS,
                           device: str | None = None, dtype: str | None = None,
                           engine: str | None = None,
                           capture_deployment: str | None = None,
                           score_deployment: str | None = None,
                           retry_failed: bool = False,
                           stall_seconds: float = STALL_SECONDS) -> dict:
    """Scan each source on its own and run :func:`score_checkpoint_flow` for every
    checkpoint that has no score for the calibration set yet, exactly once even when scans
    overlap (an exclusive claim per (checkpoint hash, calibration set), then the
    completion marker). A folder still being written is left for a later scan; a source
    that cannot be read is named and the others go on; bad input fails its own flow run
    and is recorded (once per content; ``retry_failed`` tries recorded failures again); a
    transient failure is left for the next scan.

    Returns ``{"scored", "failed", "pending", "done_before", "claimed_elsewhere",
    "failed_before", "sources_failed"}`` lists, also logged as a one-screen summary. When
    any checkpoint failed or a source could not be read, the run ends ``Failed`` with
    :class:`WatchFailed` (its ``summary`` holds the same lists).
    """
    stop_with_worker()
    cap_client_retries()
    check_tracking_uri(tracking_uri)
    root = ws.Workspace(workspace)
    calset = ws.load_calibration_set(calibration_set)
    if retry_failed:
        root.clear_failures()
    summary: dict = {k: [] for k in SUMMARY_KEYS}
    items = []
    for source in ws.sources(directories, mlflow_models, tracking_uri):
        try:
            items += scan_task(workspace, source, settle_seconds)
        except Exception as err:  # noqa: BLE001 - one source failing does not stop the others
            summary["sources_failed"].append({"source": ws.source_name(source),
                                              "error": describe(err),
                                              "transient": failure_kind(err) == TRANSIENT})
    owner = owner_label()
    for item in items:
        verdict = ws.triage(item, ws.gather_facts(root, item, calset, claim_stale_seconds))
        name = item["name"]
        if verdict.action == "pending":
            summary["pending"].append({"name": name, "why": item["why"]})
        elif verdict.action == "unavailable":
            summary["failed"].append({"name": name, "error": item["why"], "transient": True,
                                      "recorded": False})
        elif verdict.action == "done":
            summary["done_before"].append({"name": name, **verdict.detail})
        elif verdict.action == "failed_before":
            summary["failed_before"].append({"name": name, **verdict.detail})
        elif verdict.action == "claimed":
            summary["claimed_elsewhere"].append({"name": name, **verdict.detail})
        else:
            _score_one(root, calset, item, verdict, summary, owner, claim_stale_seconds,
                       dict(publish_to=publish_to, tracking_uri=tracking_uri, device=device,
                            dtype=dtype, engine=engine, capture_deployment=capture_deployment,
                            score_deployment=score_deployment, stall_seconds=stall_seconds))
    text = format_summary(calset.name, summary)
    log(text)
    if summary["failed"] or summary["sources_failed"]:
        return Failed(message=text, data=WatchFailed(summary, text))
    return summary


def _score_one(root, calset, item, verdict, summary, owner, claim_stale_seconds, options) -> None:
    name = item["name"]
    claim = root.claim(verdict.key, calset, owner, claim_stale_seconds)
    if claim is None:
        holder = root.claim_holder(verdict.key, calset, claim_stale_seconds)
        if root.is_done(verdict.key, calset):
            summary["done_before"].append({"name": name, "nex": None, "log_gap": None})
        else:
            summary["claimed_elsewhere"].append(
                {"name": name, "holder": holder.describe() if holder else "another scan"})
        return
    try:
        state = score_checkpoint_flow(str(root.root), verdict.target, calset.to_dict(),
                                      return_state=True, **options)
    finally:
        claim.release()
    if state.is_completed():
        result = state.result()
        row = result["publish"]["row"]
        summary["scored"].append({"name": name, "nex": result["nex"], "log_gap": result["log_gap"],
                                  "responses_with_credit": row["responses_with_credit"],
                                  "credited_cycles": row["credited_cycles"],
                                  "published": result["publish"]["changes"]})
        return
    cause = state.result(raise_on_failure=False)
    failure = cause if isinstance(cause, BaseException) else state
    error = str(cause) if isinstance(cause, BaseException) else describe(state)
    record = ws.after_failure(failure) == "record"
    if record:  # bad input: not tried again until it changes
        root.record_failure(verdict.key, calset, name, error)
    summary["failed"].append({"name": name, "error": error, "transient": not record,
                              "recorded": record})


def format_summary(calibration_set: str, summary: dict) -> str:
    """The watcher's one-screen summary."""
    failed = summary.get("failed", [])
    retried = sum(1 for f in failed if f.get("transient"))
    lines = [f"watch [{calibration_set}]: {len(summary['scored'])} scored, "
             f"{len(failed)} failed ({retried} to retry), "
             f"{len(summary['pending'])} still being written, "
             f"{len(summary['done_before'])} done before, "
             f"{len(summary['claimed_elsewhere'])} claimed by another scan, "
             f"{len(summary['failed_before'])} failed before, "
             f"{len(summary.get('sources_failed', []))} sources unreadable"]
    for item in summary["scored"]:
        lines.append(f"  scored   {item['name']}: NEX {item['nex']:.5f} "
                     f"(log-gap {item['log_gap']:.4f})")
    for item in failed:
        what = "retried by the next scan" if item.get("transient") else "recorded, not retried"
        lines.append(f"  FAILED   {item['name']} ({what}): {item['error']}")
    for item in summary["failed_before"]:
        lines.append(f"  failed   {item['name']} (before; --retry-failed tries again): "
                     f"{item['error']}")
    for item in summary.get("sources_failed", []):
        lines.append(f"  SOURCE   {item['source']} could not be read: {item['error']}")
    for item in summary["claimed_elsewhere"]:
        lines.append(f"  claimed  {item['name']}: held by {item['holder']}")
    for item in summary["pending"]:
        lines.append(f"  pending  {item['name']}: {item['why']}")
    return "\n".join(lines)


def watch_summary(state) -> dict:
    """The summary of a finished watcher run's state (completed or failed)."""
    result = state.result(raise_on_failure=False)
    if isinstance(result, WatchFailed):
        return result.summary
    if isinstance(result, dict):
        return result
    raise result if isinstance(result, BaseException) else RuntimeError(describe(state))


__all__ = ["STALL_SECONDS", "WatchFailed", "capture_flow", "format_summary", "publish_flow",
           "remote_stage", "score_checkpoint_flow", "score_flow", "watch_checkpoints_flow",
           "watch_summary"]
