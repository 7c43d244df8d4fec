"""The workspace: where each (checkpoint, calibration set) keeps its store, tables and
completion marker, the claims and recorded failures of the scans, and the catalog.

Layout under the workspace root::

    checkpoints/<checkpoint key>/<calibration key>/store/          activation store (resumable)
    checkpoints/<checkpoint key>/<calibration key>/tables/         score tables (nex score)
    checkpoints/<checkpoint key>/<calibration key>/capture.json    the finished capture's summary
    checkpoints/<checkpoint key>/<calibration key>/<stage>.heartbeat  a stage process at work
    checkpoints/<checkpoint key>/<calibration key>/<stage>.run.json   the stage's flow run
    checkpoints/<checkpoint key>/<calibration key>/done.json       completion marker (the catalog row)
    claims/<checkpoint key>--<calibration key>.claim               a scan scoring it now
    failures/<key>--<calibration key>.json                         bad input, not retried
    catalog/models.parquet                                         one row per (checkpoint, set)

A checkpoint key is ``<slug of its name>-<first 12 hex digits of its content hash>``, a
calibration key ``<set name>-<first 8 hex digits of its parameters' hash>``: work is keyed
on what is scored, never on run ids, so a rerun with the same inputs finds the finished
store and tables. Nothing here imports Prefect.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from nex_transforms.errors import expected

from ..catalog import catalog_rows, catalog_schema
from ..crashsafe import Claim, Holder, atomic_write, atomic_write_json, read_holder, read_json
from .calibration import CalibrationSet
from .checkpoints import Checkpoint
from .errors import WorkspaceError
from .ranking import rank_rows

CATALOG = Path("catalog") / "models.parquet"
#: A claim whose heartbeat is this old (seconds) is taken over; its holder beats every
#: quarter of it. A claim whose holder died on this host is taken over at once.
#: (A file in the workspace rather than a Prefect concurrency slot: every scan shares the
#: workspace, but two ``nex flows watch`` runs in ephemeral mode each have a private
#: Prefect server; a slot's limit must exist on the server before use, its lease is at
#: least 60 s and is revoked by a server loop, and it cannot say which pid holds it.)
CLAIM_STALE_SECONDS = 300.0


def _key(checkpoint: Checkpoint | str) -> str:
    return checkpoint if isinstance(checkpoint, str) else checkpoint.key


class Workspace:
    """Stores, tables, markers, claims, failures and the catalog under one root."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).absolute()
        if self.root.exists() and not self.root.is_dir():
            raise WorkspaceError(expected("workspace", "a folder", f"a file {self.root}"))

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    # ----------------------------------------------------------------- paths, markers
    def entry_dir(self, checkpoint: Checkpoint | str, calset: CalibrationSet) -> Path:
        return self.root / "checkpoints" / _key(checkpoint) / calset.key

    def store_path(self, checkpoint: Checkpoint | str, calset: CalibrationSet) -> Path:
        return self.entry_dir(checkpoint, calset) / "store"

    def tables_path(self, checkpoint: Checkpoint | str, calset: CalibrationSet) -> Path:
        return self.entry_dir(checkpoint, calset) / "tables"

    def marker_path(self, checkpoint: Checkpoint | str, calset: CalibrationSet) -> Path:
        return self.entry_dir(checkpoint, calset) / "done.json"

    def heartbeat_path(self, checkpoint: Checkpoint | str, calset: CalibrationSet,
                       stage: str) -> Path:
        """The file a stage process keeps fresh while it works (see stages)."""
        return self.entry_dir(checkpoint, calset) / f"{stage}.heartbeat"

    def run_record_path(self, checkpoint: Checkpoint | str, calset: CalibrationSet,
                        stage: str) -> Path:
        """Where a flow records the flow run of a stage it sent to a deployment."""
        return self.entry_dir(checkpoint, calset) / f"{stage}.run.json"

    def is_done(self, checkpoint: Checkpoint | str, calset: CalibrationSet) -> bool:
        return self.marker_path(checkpoint, calset).is_file()

    def entry(self, checkpoint: Checkpoint | str, calset: CalibrationSet) -> dict | None:
        """The catalog row of a finished (checkpoint, calibration set), else None."""
        return read_json(self.marker_path(checkpoint, calset))

    # ----------------------------------------------------------------- claims
    def claim_path(self, checkpoint: Checkpoint | str, calset: CalibrationSet) -> Path:
        return self.root / "claims" / f"{_key(checkpoint)}--{calset.key}.claim"

    def claim(self, checkpoint: Checkpoint | str, calset: CalibrationSet, owner: str = "",
              stale_seconds: float = CLAIM_STALE_SECONDS) -> Claim | None:
        """Claim the scoring of (checkpoint, calibration set) exclusively: the
        :class:`~pipelines.crashsafe.Claim` (release it when done), or None when another
        live holder has it or it is already done. A claim whose holder died on this host,
        or whose heartbeat is older than the period it recorded, is taken over."""
        if self.is_done(checkpoint, calset):
            return None
        claim = Claim.acquire(self.claim_path(checkpoint, calset), stale_seconds, owner)
        if claim is not None and self.is_done(checkpoint, calset):  # finished meanwhile
            claim.release()
            return None
        return claim

    def claim_holder(self, checkpoint: Checkpoint | str, calset: CalibrationSet,
                     stale_seconds: float = CLAIM_STALE_SECONDS) -> Holder | None:
        """Who holds the claim (live or not), or None."""
        return read_holder(self.claim_path(checkpoint, calset), stale_seconds)

    def claims(self, stale_seconds: float = CLAIM_STALE_SECONDS) -> list[dict]:
        """Every claim file: ``{"claim": file stem, "holder": record, "age", "live"}``."""
        out = []
        for path in sorted((self.root / "claims").glob("*.claim")):
            holder = read_holder(path, stale_seconds)
            if holder is not None:
                out.append({"claim": path.stem, "holder": holder.record, "age": holder.age,
                            "live": holder.live})
        return out

    # ----------------------------------------------------------------- failures
    def _failure_path(self, key: str, calset: CalibrationSet) -> Path:
        return self.root / "failures" / f"{key}--{calset.key}.json"

    def record_failure(self, key: str, calset: CalibrationSet, name: str, error: str) -> None:
        """Remember that ``key`` (a checkpoint key or a failure key) is bad input."""
        atomic_write_json(self._failure_path(key, calset), {
            "name": name, "error": error, "failed_at": datetime.now(timezone.utc).isoformat()})

    def failure(self, key: str, calset: CalibrationSet) -> dict | None:
        return read_json(self._failure_path(key, calset))

    def failures(self) -> list[dict]:
        return [f for f in (read_json(p) for p in sorted((self.root / "failures").glob("*.json")))
                if f is not None]

    def clear_failures(self) -> int:
        """Forget recorded failures (the next scan tries those checkpoints again)."""
        files = list((self.root / "failures").glob("*.json"))
        for path in files:
            path.unlink(missing_ok=True)
        return len(files)

    # ----------------------------------------------------------------- completion, catalog
    def result_row(self, checkpoint: Checkpoint, calset: CalibrationSet) -> dict:
        """The catalog row of a scored (checkpoint, calibration set), from its tables."""
        tables = self.tables_path(checkpoint, calset)
        identity = {"checkpoint": checkpoint.name, "checkpoint_key": checkpoint.key,
                    "checkpoint_hash": checkpoint.content_hash,
                    "checkpoint_path": checkpoint.path,
                    "source": json.dumps(checkpoint.source, sort_keys=True),
                    "calibration_set": calset.name, "calibration_key": calset.key}
        paths = {"store": str(self.store_path(checkpoint, calset).relative_to(self.root)),
                 "tables": str(tables.relative_to(self.root))}
        rows = catalog_rows(tables, identity, paths=paths,
                            scored_at=datetime.now(timezone.utc).isoformat())
        if len(rows) != 1:
            raise WorkspaceError(expected(f"tables {tables}", "one model row", f"{len(rows)} rows"))
        row = rows[0]
        previous = self.entry(checkpoint, calset)
        if previous is not None and previous.get("tables_fingerprint") == row["tables_fingerprint"]:
            row["scored_at"] = previous["scored_at"]  # same tables: the same row
        return row

    def complete(self, checkpoint: Checkpoint, calset: CalibrationSet,
                 row: dict | None = None) -> dict:
        """Record a finished (checkpoint, calibration set): its catalog row as the completion
        marker (unchanged when the tables are), then rewrite the catalog. Returns the row."""
        row = row or self.result_row(checkpoint, calset)
        if self.entry(checkpoint, calset) != json.loads(json.dumps(row)):
            atomic_write_json(self.marker_path(checkpoint, calset), row)
        self.write_catalog()
        return row

    def entries(self) -> list[dict]:
        """Every completion marker's row, sorted by checkpoint key and calibration key."""
        rows = (read_json(m) for m in sorted((self.root / "checkpoints").glob("*/*/done.json")))
        return [r for r in rows if r is not None]

    def catalog(self):
        """The catalog as a pyarrow table (built from the completion markers)."""
        import pyarrow as pa

        schema = catalog_schema()
        return pa.Table.from_pylist([{f.name: r.get(f.name) for f in schema}
                                     for r in self.entries()], schema=schema)

    def write_catalog(self) -> Path:
        """Write ``catalog/models.parquet`` atomically from the completion markers."""
        import pyarrow.parquet as pq

        table = self.catalog()
        return atomic_write(self.root / CATALOG, lambda p: pq.write_table(table, p))

    def ranked(self, calibration_set: str | None = None) -> list[dict]:
        """The catalog rows ranked by NEX (see :func:`~.ranking.rank_rows`)."""
        return rank_rows(self.entries(), calibration_set)


__all__ = ["CATALOG", "CLAIM_STALE_SECONDS", "Workspace"]
