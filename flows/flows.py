"""Prefect flows: capture, score and publish one checkpoint for one calibration set, and
watch checkpoint sources so that every new checkpoint is scored exactly once.

    capture_flow           checkpoint + calibration set -> the workspace store (GPU pool)
    score_flow             store -> tables (CPU pool; local, Dask or Beam engine)
    publish_flow           tables -> workspace catalog + folder / MLflow / Hugging Face
    score_checkpoint_flow  the three for one checkpoint; failures name checkpoint and stage
    watch_checkpoints_flow scan directories of model folders and MLflow registered models,
                           run score_checkpoint_flow for each checkpoint without a score

All work is in ``pipelines.workspace``; these functions only sequence it.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from prefect import flow, get_run_logger

from pipelines import workspace as ws

from flows.tasks import capture_task, publish_task, scan_task, score_task


def _log(message: str) -> None:
    try:
        get_run_logger().info(message)
    except Exception:  # noqa: BLE001 - outside a run
        print(message)


@flow(name="capture", log_prints=True)
def capture_flow(workspace: str, checkpoint: dict, calibration_set: str | dict = "gsm8k",
                 device: str = "cpu") -> dict:
    """Capture one checkpoint's responses to the calibration set into its workspace store."""
    return capture_task(workspace, checkpoint, calibration_set, device)


@flow(name="score", log_prints=True)
def score_flow(workspace: str, checkpoint: dict, calibration_set: str | dict = "gsm8k",
               engine: str | None = None) -> dict:
    """Score one checkpoint's store into its tables (engine: the calibration set's, or
    ``local`` / ``dask`` / ``beam``)."""
    return score_task(workspace, checkpoint, calibration_set, engine)


@flow(name="publish", log_prints=True)
def publish_flow(workspace: str, checkpoint: dict, calibration_set: str | dict = "gsm8k",
                 targets: list[str] | None = None, tracking_uri: str | None = None) -> dict:
    """Record the checkpoint in the workspace catalog and publish it to ``targets``."""
    return publish_task(workspace, checkpoint, calibration_set, targets, tracking_uri)


def _resolve(workspace: str, checkpoint: str | dict) -> dict:
    if isinstance(checkpoint, dict):
        return checkpoint
    path = Path(checkpoint).absolute()
    state, why = ws.checkpoint_state(path, settle_seconds=0.0)
    if state != "ready":
        raise ws.CheckpointError(f"{path}: {why}")
    return asdict(ws.Checkpoint(path.name, str(path),
                                ws.cached_content_hash(ws.Workspace(workspace), path),
                                {"kind": "directory"}))


def _run_deployment(name: str, parameters: dict, stage: str, checkpoint: str) -> dict:
    from prefect.deployments import run_deployment

    run = run_deployment(name, parameters=parameters, timeout=None)
    if not run.state or not run.state.is_completed():
        raise ws.StageError(checkpoint, stage, f"deployment {name} run {run.name} ended "
                            f"{run.state.name if run.state else 'without a state'}: "
                            f"{run.state.message if run.state else ''}")
    return {"deployment": name, "flow_run": str(run.id)}


@flow(name="score-checkpoint", log_prints=True)
def score_checkpoint_flow(workspace: str, checkpoint: str | dict,
                          calibration_set: str | dict = "gsm8k",
                          publish_to: list[str] | None = None, tracking_uri: str | None = None,
                          device: str = "cpu", engine: str | None = None,
                          capture_deployment: str | None = None,
                          score_deployment: str | None = None) -> dict:
    """Capture, score and publish one checkpoint (a model folder path, or a checkpoint dict
    from a scan) for one calibration set.

    ``capture_deployment`` / ``score_deployment`` (e.g. ``capture/gpu``) run that stage as a
    deployment on its work pool (GPU capture, CPU scoring; the workspace must then be on
    storage every worker sees); by default the stages run here as subflows. A failure
    raises :class:`pipelines.workspace.StageError` naming the checkpoint and the stage.
    """
    name = checkpoint.get("name", "?") if isinstance(checkpoint, dict) else Path(checkpoint).name
    try:
        ckpt = _resolve(workspace, checkpoint)
    except Exception as err:
        raise ws.StageError(name, "check", err) from err
    calset = ws.load_calibration_set(calibration_set).to_dict()
    summary: dict = {"checkpoint": ckpt["name"], "calibration_set": calset["name"]}
    stages = (
        ("capture", capture_deployment, lambda: capture_flow(workspace, ckpt, calset, device),
         dict(workspace=workspace, checkpoint=ckpt, calibration_set=calset, device=device)),
        ("score", score_deployment, lambda: score_flow(workspace, ckpt, calset, engine),
         dict(workspace=workspace, checkpoint=ckpt, calibration_set=calset, engine=engine)),
        ("publish", None, lambda: publish_flow(workspace, ckpt, calset, publish_to, tracking_uri),
         None),
    )
    for stage, deployment, local, parameters in stages:
        _log(f"{ckpt['name']} [{calset['name']}]: {stage} ...")
        try:
            summary[stage] = _run_deployment(deployment, parameters, stage, ckpt["name"]) \
                if deployment else local()
        except ws.StageError:
            raise
        except Exception as err:
            raise ws.StageError(ckpt["name"], stage, err) from err
    row = summary["publish"]["row"]
    summary.update(nex=row["nex"], log_gap=row["log_gap"], checkpoint_key=row["checkpoint_key"])
    return summary


@flow(name="watch-checkpoints", log_prints=True)
def watch_checkpoints_flow(workspace: str, calibration_set: str | dict = "gsm8k",
                           directories: list[str] | None = None,
                           mlflow_models: list[str] | None = None,
                           tracking_uri: str | None = None,
                           publish_to: list[str] | None = None,
                           settle_seconds: float = ws.SETTLE_SECONDS,
                           claim_stale_seconds: float = ws.CLAIM_STALE_SECONDS,
                           device: str = "cpu", engine: str | None = None,
                           capture_deployment: str | None = None,
                           score_deployment: str | None = None,
                           retry_failed: bool = False) -> dict:
    """Scan the sources and run :func:`score_checkpoint_flow` for every checkpoint that has
    no score for the calibration set yet, exactly once even when scans overlap (an
    exclusive claim per (checkpoint hash, calibration set) in the workspace, then the
    completion marker). A folder still being written is left for a later scan; a broken
    checkpoint fails its own flow run (once per content; ``retry_failed`` tries recorded
    failures again) and the others go on.

    Returns ``{"scored", "failed", "pending", "done_before", "claimed_elsewhere",
    "failed_before"}`` lists, also printed as a one-screen summary.
    """
    root = ws.Workspace(workspace)
    calset = ws.load_calibration_set(calibration_set)
    if retry_failed:
        root.clear_failures()
    items = scan_task(workspace, list(directories or []), list(mlflow_models or []),
                      tracking_uri, settle_seconds)
    summary: dict = {k: [] for k in ("scored", "failed", "pending", "done_before",
                                     "claimed_elsewhere", "failed_before")}
    for item in items:
        if item["state"] == "pending":
            summary["pending"].append({"name": item["name"], "why": item["why"]})
            continue
        if item["state"] == "broken":
            key = ws.failure_key(item["path"])
            target: str | dict = item["path"]
        else:
            ckpt = ws.Checkpoint(**item["checkpoint"])
            if root.is_done(ckpt, calset):
                summary["done_before"].append({"name": ckpt.name, **_result(root.entry(ckpt, calset))})
                continue
            key, target = ckpt.key, item["checkpoint"]
        previous = root.failure(key, calset)
        if previous is not None:
            summary["failed_before"].append({"name": item["name"], "error": previous["error"]})
            continue
        if not root.claim(key, calset, stale_seconds=claim_stale_seconds):
            summary["claimed_elsewhere"].append({"name": item["name"]})
            continue
        try:
            state = score_checkpoint_flow(
                workspace, target, calset.to_dict(), publish_to, tracking_uri, device, engine,
                capture_deployment, score_deployment, return_state=True)
        finally:
            root.release(key, calset)
        if state.is_completed():
            result = state.result()
            summary["scored"].append({"name": item["name"], "nex": result["nex"],
                                      "log_gap": result["log_gap"]})
        else:
            transient = False
            try:
                state.result(raise_on_failure=True)
                error = state.message or state.name
            except Exception as err:  # noqa: BLE001 - the subflow's exception
                error, transient = str(err), bool(getattr(err, "transient", False))
            if not transient:  # bad input: not tried again until it changes
                root.record_failure(key, calset, item["name"], error)
            summary["failed"].append({"name": item["name"], "error": error})
    _log(format_summary(calset.name, summary))
    return summary


def _result(row: dict | None) -> dict:
    return {"nex": row["nex"], "log_gap": row["log_gap"]} if row else {}


def format_summary(calibration_set: str, summary: dict) -> str:
    """The watcher's one-screen summary."""
    lines = [f"watch [{calibration_set}]: {len(summary['scored'])} scored, "
             f"{len(summary['failed'])} failed, {len(summary['pending'])} still being written, "
             f"{len(summary['done_before'])} done before, "
             f"{len(summary['claimed_elsewhere'])} claimed by another scan, "
             f"{len(summary['failed_before'])} failed before"]
    for item in summary["scored"]:
        lines.append(f"  scored   {item['name']}: NEX {item['nex']:.5f} (log-gap {item['log_gap']:.4f})")
    for item in summary["failed"] + summary["failed_before"]:
        lines.append(f"  FAILED   {item['name']}: {item['error']}")
    for item in summary["pending"]:
        lines.append(f"  pending  {item['name']}: {item['why']}")
    return "\n".join(lines)


__all__ = ["capture_flow", "format_summary", "publish_flow", "score_checkpoint_flow",
           "score_flow", "watch_checkpoints_flow"]
