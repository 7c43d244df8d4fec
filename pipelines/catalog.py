"""The catalog row of a scored (checkpoint, calibration set): its schema, its builder from a
tables folder, the tables' fingerprint, and what the publishers publish of it.

One row per (checkpoint, calibration set) in a workspace's ``catalog/models.parquet`` and
in a published folder's ``catalog.parquet``; the MLflow publisher turns the columns named
in :data:`PUBLISHED` into version tags and run metrics. The workspace and the publishers
both build on this module (neither imports the other).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from nex_transforms.baselines import BASELINES

from .tables import TABLE_NAMES, read_run, read_table, table_path

#: Bumped when columns change (kept in the Parquet schema metadata).
CATALOG_SCHEMA_VERSION = "3"


@dataclass(frozen=True)
class Published:
    """A catalog column the registries get: as the run metric ``<metric>.<set>`` and, when
    ``tag`` is set, as the version tags ``<tag>`` and ``<tag>.<set>``. ``source`` says where
    the value comes from: ``models`` (the models table's column of that name) or
    ``coverage`` (counted from the responses table, see :func:`coverage_counts`)."""

    column: str
    metric: str | None = None
    tag: str | None = None
    source: str = "models"
    integer: bool = False


#: What is published of a row, in order. Adding a models-table column here adds it to the
#: catalog schema, the rows, the metrics and (with ``tag``) the version tags.
PUBLISHED = (
    Published("nex", metric="nex", tag="nex"),
    Published("log_gap", metric="log_gap", tag="nex_log_gap"),
    *(Published(name, metric=name) for name in BASELINES),
    Published("responses_with_credit", metric="nex_responses_with_credit",
              tag="nex_responses_with_credit", source="coverage", integer=True),
    Published("credited_cycles", metric="nex_credited_cycles", tag="nex_credited_cycles",
              source="coverage", integer=True),
    # whether the capture is in the method's regime (nex_transforms.diagnostics)
    Published("late_novelty", metric="nex_late_novelty", tag="nex_late_novelty"),
    Published("pool_coverage", metric="nex_pool_coverage", tag="nex_pool_coverage"),
)
IDENTITY = ("checkpoint", "checkpoint_key", "checkpoint_hash", "checkpoint_path", "source",
            "calibration_set", "calibration_key", "model_id")
COUNTS = ("n_responses", "n_scored", "n_cycles")
PROVENANCE = ("store", "tables", "tables_fingerprint", "store_fingerprint", "scored_at")


def slug(text: str) -> str:
    """A name safe in paths and keys: runs of other characters become ``-``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "checkpoint"


def catalog_schema():
    """Schema of ``catalog/models.parquet`` (and a published folder's ``catalog.parquet``)."""
    import pyarrow as pa

    fields = [pa.field(n, pa.string()) for n in IDENTITY]
    fields += [pa.field(p.column, pa.int64() if p.integer else pa.float64()) for p in PUBLISHED]
    fields += [pa.field(n, pa.int64()) for n in COUNTS]
    fields += [pa.field(n, pa.string()) for n in PROVENANCE]
    return pa.schema(fields, metadata={"nex_catalog_schema_version": CATALOG_SCHEMA_VERSION})


def tables_fingerprint(tables: str | os.PathLike) -> str:
    """SHA-256 over the tables' contents (rows of every table, canonical order) and the
    store fingerprint of run.json: equal for the same scores, whatever the run or time."""
    tables = Path(tables)
    digest = hashlib.sha256(str(read_run(tables).get("store_fingerprint")).encode())
    for name in TABLE_NAMES:
        if table_path(tables, name).exists():
            table = read_table(tables, name)
            digest.update(name.encode())
            digest.update(json.dumps(table.to_pydict(), sort_keys=True, default=repr).encode())
    return digest.hexdigest()


def coverage_counts(tables: str | os.PathLike) -> dict[str, dict[str, int]]:
    """Per model id: ``responses_with_credit`` (responses with at least one credited E->X
    cycle, effective or redundant) and ``credited_cycles`` (their sum). A model with 0
    credited cycles has a NEX that rests on nothing."""
    columns = read_table(tables, "responses").select(
        ["model_id", "n_effective_cycles", "n_redundant_cycles"]).to_pydict()
    out: dict[str, dict[str, int]] = {}
    for model, eff, red in zip(columns["model_id"], columns["n_effective_cycles"],
                               columns["n_redundant_cycles"]):
        credited = int(eff or 0) + int(red or 0)
        entry = out.setdefault(model, {"responses_with_credit": 0, "credited_cycles": 0})
        entry["responses_with_credit"] += int(credited > 0)
        entry["credited_cycles"] += credited
    return out


def _number(value, integer: bool):
    if integer:
        return 0 if value is None else int(value)
    return float("nan") if value is None else float(value)


def catalog_rows(tables: str | os.PathLike, identity: dict | None = None,
                 model_id: str | None = None, paths: dict | None = None,
                 scored_at: str | None = None) -> list[dict]:
    """The catalog rows of a tables folder, one per model (only ``model_id`` when given).

    ``identity`` fills the checkpoint and calibration columns (defaults: the model id as
    checkpoint, ``default`` as calibration set); ``paths`` the ``store`` / ``tables``
    columns (defaults: the run's store path and the tables folder); ``scored_at`` defaults
    to the run's creation time.
    """
    tables = Path(tables)
    run = read_run(tables)
    models = read_table(tables, "models").to_pylist()
    if model_id is not None:
        models = [m for m in models if m["model_id"] == model_id]
    coverage = coverage_counts(tables)
    fingerprint = tables_fingerprint(tables)
    rows = []
    for model in models:
        row = {"checkpoint": model["model_id"], "checkpoint_key": slug(model["model_id"]),
               "checkpoint_hash": "", "checkpoint_path": "", "source": "{}",
               "calibration_set": "default", "calibration_key": "default",
               "model_id": model["model_id"]}
        row.update(identity or {})
        counts = coverage.get(model["model_id"], {})
        for p in PUBLISHED:
            value = model.get(p.column) if p.source == "models" else counts.get(p.column)
            row[p.column] = _number(value, p.integer)
        row.update({name: int(model[name]) for name in COUNTS})
        row.update({"store": str((run.get("store") or {}).get("path", "")), "tables": str(tables)})
        row.update(paths or {})
        row.update(tables_fingerprint=fingerprint, store_fingerprint=run.get("store_fingerprint"),
                   scored_at=scored_at or run.get("created_at", ""))
        rows.append({f.name: row.get(f.name) for f in catalog_schema()})
    return rows


def published_tags(row: dict) -> dict[str, str]:
    """Version tags of a row: each tagged column as ``<tag>`` and ``<tag>.<set>``, the
    calibration set's name and the tables' fingerprint."""
    calset = row["calibration_set"]
    tags = {"nex_calibration_set": calset, f"nex_tables_fingerprint.{calset}":
            row["tables_fingerprint"]}
    for p in PUBLISHED:
        if p.tag:
            text = _text(row.get(p.column))
            tags[p.tag] = text
            tags[f"{p.tag}.{calset}"] = text
    return tags


def published_metrics(row: dict) -> dict[str, float]:
    """Run metrics of a row: ``<metric>.<set>`` for each published column with a finite value."""
    calset = row["calibration_set"]
    out = {}
    for p in PUBLISHED:
        value = row.get(p.column)
        if p.metric and value is not None and math.isfinite(float(value)):
            out[f"{p.metric}.{calset}"] = float(value)
    return out


def _text(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    return str(int(value)) if isinstance(value, int) else repr(float(value))


__all__ = ["BASELINES", "CATALOG_SCHEMA_VERSION", "PUBLISHED", "Published", "catalog_rows",
           "catalog_schema", "coverage_counts", "published_metrics", "published_tags", "slug",
           "tables_fingerprint"]
