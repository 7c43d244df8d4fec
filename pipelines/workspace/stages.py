"""The three stages of one checkpoint's scoring (capture, score, publish), each reusing
what a previous run finished, and the heartbeat a stage process keeps while it works.

A stage process holds ``<entry>/<stage>.heartbeat`` (a :class:`~pipelines.crashsafe.Claim`
naming its host and pid, touched every quarter of :data:`HEARTBEAT_SECONDS`): a flow
waiting on a stage it sent elsewhere reads it, with the store's completed parts, to tell
a working stage from one whose process died (:func:`stage_progress`, :func:`stall_reason`).
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

from nex_transforms.errors import expected

from ..capture import run_capture, summary_dict
from ..crashsafe import Claim, Holder, atomic_write_json, holder_dead_here, read_holder
from ..engines import run_engine
from ..engines.plan import ScoreConfig, plan_run
from ..evaluation.coverage import tables_coverage
from ..publish import parse_target
from ..publish.folder import publish_folder
from ..publish.huggingface import publish_huggingface
from ..publish.mlflow import publish_mlflow
from ..tables import read_run
from .calibration import CalibrationSet
from .checkpoints import Checkpoint, checkpoint_state
from .errors import CheckpointError, StageBusy, WorkspaceError
from .layout import Workspace

#: A stage's heartbeat lapses after this many seconds without a beat (it beats every
#: quarter of it); a stage process that died on the same host is recognised at once.
HEARTBEAT_SECONDS = 60.0
#: A stage run elsewhere with no new store part and no live heartbeat for this many seconds
#: is given up (marked crashed, a transient failure) by the flow waiting on it.
STALL_SECONDS = 600.0


@contextmanager
def stage_heartbeat(workspace: Workspace, checkpoint: Checkpoint, calset: CalibrationSet,
                    stage: str, owner: str = ""):
    """Hold the stage's heartbeat while the body runs; :class:`StageBusy` when another live
    process holds it (the same stage of the same checkpoint already running)."""
    path = workspace.heartbeat_path(checkpoint, calset, stage)
    path.parent.mkdir(parents=True, exist_ok=True)
    claim = Claim.acquire(path, HEARTBEAT_SECONDS, owner)
    if claim is None:
        holder = read_holder(path, HEARTBEAT_SECONDS)
        raise StageBusy(f"checkpoint {checkpoint.name}, stage {stage}: already running in "
                        f"{holder.describe() if holder else 'another process'}")
    try:
        yield claim
    finally:
        claim.release()


def capture_stage(workspace: Workspace, checkpoint: Checkpoint, calset: CalibrationSet,
                  run: dict | None = None, progress: bool = False, owner: str = "") -> dict:
    """Capture the calibration set's prompts with the checkpoint into its workspace store.

    ``run`` holds the capture parameters of this run that the set leaves open (``device``,
    ``dtype``: the deployment's or the command's). Reuse: a finished capture (marker
    ``capture.json``, written after the store is finalized) returns its summary without
    loading the model; a half-finished one resumes (complete parts are kept). Returns the
    capture summary (``reused`` True when reused).
    """
    finished = finished_stage(workspace, checkpoint, calset, "capture")
    if finished is not None:
        return finished
    marker = workspace.entry_dir(checkpoint, calset) / "capture.json"
    state, why = checkpoint_state(checkpoint.path, settle_seconds=0.0)
    if state != "ready":
        raise CheckpointError(f"checkpoint {checkpoint.name} ({checkpoint.path}): {why}")
    config = calset.capture_config(checkpoint.path, str(workspace.store_path(checkpoint, calset)),
                                   checkpoint.key, run, progress)
    with stage_heartbeat(workspace, checkpoint, calset, "capture", owner):
        summary = summary_dict(run_capture(config))
    if not summary["finalized"]:
        raise WorkspaceError(expected(f"capture of {checkpoint.name}", "a finalized store",
                                      "parts still missing"))
    atomic_write_json(marker, json.loads(json.dumps(summary, default=str)))
    return dict(summary, reused=False)


def score_stage(workspace: Workspace, checkpoint: Checkpoint, calset: CalibrationSet,
                engine: str | None = None, engine_options: dict | None = None,
                owner: str = "") -> dict:
    """Score the checkpoint's store into its tables folder (``nex score``'s engines).

    Reuse: tables whose ``run.json`` has the store's current fingerprint are kept.
    Returns the run summary (``reused`` True when the tables were kept)."""
    finished = finished_stage(workspace, checkpoint, calset, "score")
    if finished is not None:
        return finished
    tables = workspace.tables_path(checkpoint, calset)
    config = ScoreConfig(store=str(workspace.store_path(checkpoint, calset)),
                         calibration=calset.calibration)
    with stage_heartbeat(workspace, checkpoint, calset, "score", owner):
        summary = run_engine(engine or calset.engine, config, tables, engine_options)
    return dict(summary, reused=False)


def finished_stage(workspace: Workspace, checkpoint: Checkpoint, calset: CalibrationSet,
                   stage: str) -> dict | None:
    """The summary of a stage already complete in the workspace (``reused`` True), else
    None: a capture whose marker ``capture.json`` was written (after its store was
    finalized), tables whose ``run.json`` has the store's current fingerprint. A flow
    checks this before sending a stage to another pool, so a retried publish does not
    start capture and score runs only to find them done."""
    if stage == "capture":
        marker = workspace.entry_dir(checkpoint, calset) / "capture.json"
        try:
            return dict(json.loads(marker.read_text()), reused=True)
        except (OSError, ValueError):
            return None
    if stage == "score":
        tables = workspace.tables_path(checkpoint, calset)
        store = workspace.store_path(checkpoint, calset)
        if not (tables / "run.json").is_file() or not store.is_dir():
            return None
        run = read_run(tables)
        config = ScoreConfig(store=str(store), calibration=calset.calibration)
        if run.get("store_fingerprint") == plan_run(config).fingerprint:
            return dict(run, reused=True)
        return None
    raise WorkspaceError(expected("stage", "capture or score", repr(stage)))


def resolve_target(workspace: Workspace, checkpoint: Checkpoint, target: str,
                   tracking_uri: str | None = None) -> tuple[str, str, str | None] | None:
    """``(kind, where, tracking uri)`` of a flows publish target: ``folder``
    (``WORKSPACE/published``), ``folder:PATH``, ``hf`` (the checkpoint's own model folder),
    ``hf:PATH``, ``source`` (the MLflow version the checkpoint came from; None for other
    checkpoints), ``mlflow:models:/NAME/VERSION``."""
    uri = tracking_uri
    if target == "folder":
        target = f"folder:{workspace.root / 'published'}"
    elif target == "hf":
        target = f"hf:{checkpoint.path}"
    elif target == "source":
        if checkpoint.source.get("kind") != "mlflow":
            return None
        target = f"mlflow:models:/{checkpoint.source['name']}/{checkpoint.source['version']}"
        uri = checkpoint.source.get("tracking_uri") or tracking_uri
    kind, where = parse_target(target)
    return kind, where, uri


def publish_stage(workspace: Workspace, checkpoint: Checkpoint, calset: CalibrationSet,
                  targets: list[str] | tuple[str, ...] = ("folder",),
                  tracking_uri: str | None = None) -> dict:
    """Publish the result to each target (see :func:`resolve_target`), then record it in
    the workspace catalog (the completion marker comes last: a failed publish leaves the
    checkpoint to be retried, and publishers write only what is missing).

    Returns ``{"row": catalog row, "changes": {target: changes}, "warnings": [...]}``;
    the warnings are those ``nex score`` prints (a NEX that rests on too few responses
    with credit, a regime that says little).
    """
    row = workspace.result_row(checkpoint, calset)
    tables = workspace.tables_path(checkpoint, calset)
    changes: dict = {}
    for target in targets:
        resolved = resolve_target(workspace, checkpoint, target, tracking_uri)
        if resolved is None:
            continue
        kind, where, uri = resolved
        name = f"{kind}:{where}" if kind != "huggingface" else f"hf:{where}"
        if kind == "mlflow":
            changes[name] = publish_mlflow(row, tables, where, uri)
        elif kind == "huggingface":
            changes[name] = publish_huggingface(row, where)
        else:
            changes[name] = publish_folder([row], tables, where)
    warnings = [warning for entry in
                tables_coverage(tables, workspace.store_path(checkpoint, calset))
                for warning in (entry["warning"], entry.get("regime_warning")) if warning]
    workspace.complete(checkpoint, calset, row)
    return {"row": row, "changes": changes, "warnings": warnings}


# --------------------------------------------------------------------------- progress
def stage_progress(workspace: Workspace, checkpoint: Checkpoint, calset: CalibrationSet,
                   stage: str) -> tuple[int, Holder | None]:
    """What a waiting flow watches of a stage running elsewhere: the number of completed
    store parts (capture) and the stage's heartbeat holder (None when no process holds it)."""
    parts = 0
    if stage == "capture":
        manifests = workspace.store_path(checkpoint, calset) / "manifests"
        parts = sum(1 for p in manifests.glob("*.parquet") if not p.name.startswith(".")) \
            if manifests.is_dir() else 0
    return parts, read_holder(workspace.heartbeat_path(checkpoint, calset, stage),
                              HEARTBEAT_SECONDS)


def stall_reason(holder: Holder | None, seconds_without_progress: float,
                 stall_seconds: float) -> str | None:
    """Why a stage run counts as stalled, or None while it may still be working.

    A live heartbeat means working. A heartbeat whose process died on this host means
    stalled at once; no heartbeat (or a lapsed one) means stalled once no new part came
    for ``stall_seconds`` (a run no worker picked up, a process that died elsewhere)."""
    if holder is not None and holder.live:
        return None
    if holder is not None and holder_dead_here(holder.record):
        return f"its process died ({holder.describe()})"
    if seconds_without_progress >= stall_seconds:
        return (f"no new store part and no heartbeat for {seconds_without_progress:.0f} s "
                f"(limit {stall_seconds:g} s)")
    return None


def clear_stale_heartbeat(workspace: Workspace, checkpoint: Checkpoint, calset: CalibrationSet,
                          stage: str) -> None:
    """Remove a heartbeat left by a dead stage process (before a new run of the stage, so
    that a stale file is not read as the new run's)."""
    path = workspace.heartbeat_path(checkpoint, calset, stage)
    holder = read_holder(path, HEARTBEAT_SECONDS)
    if holder is not None and not holder.live:
        Path(path).unlink(missing_ok=True)


__all__ = ["HEARTBEAT_SECONDS", "STALL_SECONDS", "capture_stage", "clear_stale_heartbeat",
           "finished_stage", "publish_stage",
           "resolve_target", "score_stage", "stage_heartbeat", "stage_progress", "stall_reason"]
