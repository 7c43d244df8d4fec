"""Prefect tasks: each wraps one ``pipelines.workspace`` stage (no maths, no store logic).

Retries: a task is retried (twice, after a short delay) only for transient failures, i.e.
exceptions outside the ``NexError`` family (an OSError, a lost connection, a killed worker);
bad input (a broken checkpoint, a bad calibration set) fails at once.

Reuse: the workspace is the cache, keyed on the checkpoint's content hash and the
calibration set's parameters (never on run ids): a finished capture or score is found and
returned, a half-finished capture resumes from its complete parts. Prefect's own result
cache is therefore off (``NO_CACHE``): it would outlive a deleted workspace.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from nex_transforms import NexError
from pipelines import workspace as ws

RETRIES = 2
RETRY_DELAY_SECONDS = 2


def transient_only(task_obj, task_run, state) -> bool:
    """Retry condition: retry unless the failure is bad input (a NexError)."""
    try:
        state.result(raise_on_failure=True)
    except NexError:
        return False
    except BaseException:  # noqa: BLE001 - anything else may be transient
        return True
    return False


def _checkpoint(value) -> ws.Checkpoint:
    return value if isinstance(value, ws.Checkpoint) else ws.Checkpoint(**value)


def _log(message: str) -> None:
    try:
        get_run_logger().info(message)
    except Exception:  # noqa: BLE001 - called directly, outside a run
        print(message)


def capture(workspace: str, checkpoint: dict, calibration_set: dict | str,
            device: str = "cpu") -> dict:
    """Capture stage of one checkpoint (see :func:`pipelines.workspace.capture_stage`)."""
    ckpt, calset = _checkpoint(checkpoint), ws.load_calibration_set(calibration_set)
    _log(f"{ckpt.name} [{calset.name}]: capture -> {ws.Workspace(workspace).store_path(ckpt, calset)}")
    summary = ws.capture_stage(ws.Workspace(workspace), ckpt, calset, device=device)
    _log(f"{ckpt.name} [{calset.name}]: capture "
         + ("reused (finished before)" if summary["reused"] else
            f"done: {summary['traces_written']} traces, {summary['tokens_written']} tokens, "
            f"{summary['parts_skipped']} parts resumed"))
    return summary


def score(workspace: str, checkpoint: dict, calibration_set: dict | str,
          engine: str | None = None) -> dict:
    """Score stage of one checkpoint (see :func:`pipelines.workspace.score_stage`)."""
    ckpt, calset = _checkpoint(checkpoint), ws.load_calibration_set(calibration_set)
    summary = ws.score_stage(ws.Workspace(workspace), ckpt, calset, engine=engine)
    _log(f"{ckpt.name} [{calset.name}]: score "
         + ("reused (same store)" if summary["reused"] else
            f"done with {summary['engine']}: {summary['n_traces']} traces"))
    return {k: summary[k] for k in ("engine", "n_traces", "store_fingerprint", "reused")}


def publish(workspace: str, checkpoint: dict, calibration_set: dict | str,
            targets: list[str] | None = None, tracking_uri: str | None = None) -> dict:
    """Publish stage of one checkpoint (see :func:`pipelines.workspace.publish_stage`)."""
    ckpt, calset = _checkpoint(checkpoint), ws.load_calibration_set(calibration_set)
    out = ws.publish_stage(ws.Workspace(workspace), ckpt, calset,
                           targets if targets is not None else ["folder", "source"], tracking_uri)
    row = out["row"]
    _log(f"{ckpt.name} [{calset.name}]: NEX {row['nex']:.5f} (log-gap {row['log_gap']:.4f}); "
         f"published: {out['changes']}")
    return out


def scan(workspace: str, directories: list[str], mlflow_models: list[str],
         tracking_uri: str | None, settle_seconds: float) -> list[dict]:
    """Every checkpoint candidate of the sources (ready, pending or broken)."""
    root = ws.Workspace(workspace)
    found = []
    for directory in directories:
        found += [dict(item, source=f"directory {directory}")
                  for item in ws.scan_directory(root, directory, settle_seconds)]
    for name in mlflow_models:
        found += [dict(item, source=f"mlflow {name}") for item in ws.scan_mlflow(root, name, tracking_uri)]
    return found


capture_task = task(capture, name="capture", retries=RETRIES, retry_delay_seconds=RETRY_DELAY_SECONDS,
                    retry_condition_fn=transient_only, cache_policy=NO_CACHE)
score_task = task(score, name="score", retries=RETRIES, retry_delay_seconds=RETRY_DELAY_SECONDS,
                  retry_condition_fn=transient_only, cache_policy=NO_CACHE)
publish_task = task(publish, name="publish", retries=RETRIES, retry_delay_seconds=RETRY_DELAY_SECONDS,
                    retry_condition_fn=transient_only, cache_policy=NO_CACHE)
scan_task = task(scan, name="scan", retries=RETRIES, retry_delay_seconds=RETRY_DELAY_SECONDS,
                 retry_condition_fn=transient_only, cache_policy=NO_CACHE)

__all__ = ["capture", "capture_task", "publish", "publish_task", "scan", "scan_task", "score",
           "score_task", "transient_only"]
