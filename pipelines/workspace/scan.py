"""Scanning checkpoint sources, and the triage that decides what a scan does with each
candidate.

A source is a directory of model folders or an MLflow registered model; each is scanned
on its own (:func:`scan_source`), so one that cannot be read does not hold back the others.
A scan yields candidates ``{"name", "path", "state", "why", "checkpoint", "source"}`` with
``state`` one of ``ready`` (``checkpoint`` is a :class:`Checkpoint` dict), ``pending``
(still being written), ``broken`` (bad input: fails its own flow run) or ``unavailable``
(a transient problem, e.g. a download cut off: tried again by the next scan).

:func:`triage` is pure: given a candidate and what the workspace knows of it
(:class:`Facts`, gathered by :func:`gather_facts`), it says what to do.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from nex_transforms.errors import expected

from ..catalog import slug
from ..crashsafe import Holder
from ..failures import BAD_INPUT, describe, failure_kind
from ..publish.mlflow import download_version, registered_versions
from .calibration import CalibrationSet
from .checkpoints import (SETTLE_SECONDS, Checkpoint, cached_content_hash, checkpoint_state,
                          failure_key)
from .errors import WorkspaceError
from .layout import CLAIM_STALE_SECONDS, Workspace


def source_name(source: dict) -> str:
    """``directory PATH`` or ``mlflow NAME``: how summaries name a source."""
    return f"{source['kind']} {source.get('path') or source.get('name')}"


def scan_directory(workspace: Workspace, directory: str, settle_seconds: float = SETTLE_SECONDS
                   ) -> list[dict]:
    """The model folders directly under ``directory`` (see the module docstring)."""
    directory = Path(directory).absolute()
    if not directory.is_dir():
        raise WorkspaceError(expected("checkpoint directory", "an existing folder", str(directory)))
    found = []
    for folder in sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith(".")):
        state, why = checkpoint_state(folder, settle_seconds)
        item = {"name": folder.name, "path": str(folder), "state": state, "why": why,
                "checkpoint": None, "source": f"directory {directory}"}
        if state == "ready":
            item["checkpoint"] = asdict(Checkpoint(folder.name, str(folder),
                                                   cached_content_hash(workspace.root, folder),
                                                   {"kind": "directory"}))
        found.append(item)
    return found


def scan_mlflow(workspace: Workspace, model_name: str, tracking_uri: str | None = None
                ) -> list[dict]:
    """The versions of an MLflow registered model, each downloaded once into
    ``WORKSPACE/downloads/<model>/<version>``. A version whose download fails is
    ``unavailable`` (transient) or ``broken`` (bad input), as the failure taxonomy says."""
    found = []
    for mv in registered_versions(model_name, tracking_uri):
        name = f"{model_name}-v{mv.version}"
        dest = workspace.root / "downloads" / slug(model_name) / str(mv.version)
        item = {"name": name, "path": str(dest), "state": "ready", "why": "registered",
                "checkpoint": None, "source": f"mlflow {model_name}"}
        try:
            download_version(model_name, str(mv.version), dest, tracking_uri)
        except Exception as err:  # noqa: BLE001 - one version failing does not stop the scan
            bad = failure_kind(err) == BAD_INPUT
            item.update(state="broken" if bad else "unavailable", why=f"download: {describe(err)}")
            found.append(item)
            continue
        state, why = checkpoint_state(dest, settle_seconds=0.0)
        item.update(state=state, why=why)
        if state == "ready":
            item["checkpoint"] = asdict(Checkpoint(
                name, str(dest), cached_content_hash(workspace.root, dest),
                {"kind": "mlflow", "name": model_name, "version": str(mv.version),
                 "tracking_uri": tracking_uri}))
        found.append(item)
    return found


def scan_source(workspace: Workspace, source: dict, settle_seconds: float = SETTLE_SECONDS
                ) -> list[dict]:
    """One source: ``{"kind": "directory", "path"}`` or ``{"kind": "mlflow", "name",
    "tracking_uri"}``."""
    if source.get("kind") == "directory":
        return scan_directory(workspace, source["path"], settle_seconds)
    if source.get("kind") == "mlflow":
        return scan_mlflow(workspace, source["name"], source.get("tracking_uri"))
    raise WorkspaceError(expected("checkpoint source", "{'kind': 'directory' | 'mlflow', ...}",
                                  repr(source)))


def sources(directories: list[str] | None = None, mlflow_models: list[str] | None = None,
            tracking_uri: str | None = None) -> list[dict]:
    """The source dicts of a watcher's arguments, directories first."""
    return ([{"kind": "directory", "path": str(d)} for d in directories or []]
            + [{"kind": "mlflow", "name": n, "tracking_uri": tracking_uri}
               for n in mlflow_models or []])


# --------------------------------------------------------------------------- triage
@dataclass(frozen=True)
class Facts:
    """What the workspace knows of a candidate: its key (the checkpoint key, or the
    failure key of a broken folder), its catalog row when done, its recorded failure,
    and the holder of its claim."""

    key: str
    done: dict | None = None
    failure: dict | None = None
    holder: Holder | None = None


@dataclass(frozen=True)
class Verdict:
    """What a scan does with a candidate. ``action``: ``pending`` (wait for a later scan),
    ``unavailable`` (a transient problem: counts as a failure of this scan, not recorded),
    ``done`` (scored before), ``failed_before`` (bad input recorded before), ``claimed``
    (a live claim of another scan), or ``score`` (claim it and run its flow: ``target`` is
    the checkpoint dict, or the folder path of a broken candidate, which then fails its own
    flow run)."""

    action: str
    key: str
    target: str | dict | None = None
    detail: dict | None = None


def gather_facts(workspace: Workspace, item: dict, calset: CalibrationSet,
                 stale_seconds: float = CLAIM_STALE_SECONDS) -> Facts:
    """The :class:`Facts` of a candidate, read from the workspace."""
    if item["state"] == "ready":
        key = Checkpoint(**item["checkpoint"]).key
    elif item["state"] == "broken":
        key = failure_key(item["path"])
    else:
        return Facts(key="")
    return Facts(key=key, done=workspace.entry(key, calset),
                 failure=workspace.failure(key, calset),
                 holder=workspace.claim_holder(key, calset, stale_seconds))


def triage(item: dict, facts: Facts) -> Verdict:
    """The scan's decision for one candidate (pure)."""
    if item["state"] == "pending":
        return Verdict("pending", "", detail={"why": item["why"]})
    if item["state"] == "unavailable":
        return Verdict("unavailable", "", detail={"error": item["why"]})
    if facts.done is not None:
        return Verdict("done", facts.key, detail={"nex": facts.done.get("nex"),
                                                  "log_gap": facts.done.get("log_gap")})
    if facts.failure is not None:
        return Verdict("failed_before", facts.key, detail={"error": facts.failure.get("error")})
    if facts.holder is not None and facts.holder.live:
        return Verdict("claimed", facts.key, detail={"holder": facts.holder.describe()})
    target = item["checkpoint"] if item["state"] == "ready" else item["path"]
    return Verdict("score", facts.key, target)


def after_failure(failure) -> str:
    """``record`` (bad input: remembered, not tried again until the checkpoint changes)
    or ``retry`` (transient: the next scan tries again) for a checkpoint's failure (an
    exception or its flow run's final state)."""
    return "record" if failure_kind(failure) == BAD_INPUT else "retry"


__all__ = ["Facts", "Verdict", "after_failure", "gather_facts", "scan_directory", "scan_mlflow",
           "scan_source", "source_name", "sources", "triage"]
