"""A workspace of scored checkpoints, split by job:

* :mod:`.calibration`: calibration sets (the shipped ones are package data);
* :mod:`.checkpoints`: model folders, whether they are completely written, content hashes;
* :mod:`.layout`: the :class:`Workspace` (paths, completion markers, claims, failures, catalog);
* :mod:`.stages`: capture, score and publish of one checkpoint, and the stage heartbeats;
* :mod:`.scan`: scanning sources and the scan triage (a pure function);
* :mod:`.ranking`: checkpoints ranked by NEX.

Flows (``flows/``) sequence these functions; nothing here imports Prefect.
"""

from __future__ import annotations

from ..catalog import slug
from .calibration import (CALIBRATION_SET_DIR, CalibrationSet, load_calibration_set,
                          shipped_calibration_sets)
from .checkpoints import (SETTLE_SECONDS, Checkpoint, cached_content_hash, checkpoint_state,
                          content_hash, directory_checkpoint, failure_key)
from .errors import CheckpointError, StageBusy, StageError, WorkspaceError
from .layout import CLAIM_STALE_SECONDS, Workspace
from .ranking import format_ranking, rank_rows
from .scan import (Facts, Verdict, after_failure, gather_facts, scan_directory, scan_mlflow,
                   scan_source, source_name, sources, triage)
from .stages import (HEARTBEAT_SECONDS, STALL_SECONDS, capture_stage, clear_stale_heartbeat,
                     finished_stage, publish_stage, score_stage, stage_progress, stall_reason)

__all__ = ["CALIBRATION_SET_DIR", "CLAIM_STALE_SECONDS", "CalibrationSet", "Checkpoint",
           "CheckpointError", "Facts", "HEARTBEAT_SECONDS", "SETTLE_SECONDS", "STALL_SECONDS",
           "StageBusy", "StageError", "Verdict", "Workspace", "WorkspaceError", "after_failure",
           "cached_content_hash", "capture_stage", "checkpoint_state", "clear_stale_heartbeat",
           "content_hash", "directory_checkpoint", "failure_key", "finished_stage",
           "format_ranking", "gather_facts", "load_calibration_set", "publish_stage",
           "rank_rows", "scan_directory", "scan_mlflow", "scan_source", "score_stage",
           "shipped_calibration_sets", "slug", "source_name", "sources", "stage_progress",
           "stall_reason", "triage"]
