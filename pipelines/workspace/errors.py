"""The workspace's exceptions (the project's NexError family)."""

from __future__ import annotations

from nex_transforms import NexError

from ..failures import TRANSIENT, describe, failure_kind


class WorkspaceError(NexError):
    """A problem with a workspace, a checkpoint folder or a calibration set."""


class CheckpointError(WorkspaceError):
    """A checkpoint that cannot be scored (missing weights, incomplete shards, ...)."""


class StageError(WorkspaceError):
    """A stage of one checkpoint's scoring failed: names the checkpoint and the stage.

    ``error`` is the cause: an exception, the final state of the stage's flow run, or a
    message (then ``transient`` must say which kind it is). ``transient`` is the
    taxonomy's verdict (:func:`pipelines.failures.failure_kind`): True for a cause worth
    trying again (a lost connection, a crashed run), False for bad input.
    """

    def __init__(self, checkpoint: str, stage: str, error, transient: bool | None = None) -> None:
        self.checkpoint, self.stage = checkpoint, stage
        if transient is None:
            transient = not isinstance(error, str) and failure_kind(error) == TRANSIENT
        self.transient = bool(transient)
        detail = error if isinstance(error, str) else describe(error)
        super().__init__(f"checkpoint {checkpoint}, stage {stage}: {detail}")


class StageBusy(RuntimeError):
    """Another live process is already running this stage of this checkpoint (a transient
    condition: the scan that meets it tries again later)."""


__all__ = ["CheckpointError", "StageBusy", "StageError", "WorkspaceError"]
