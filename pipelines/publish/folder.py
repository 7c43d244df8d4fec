"""Publish to a plain folder: each result's tables under ``<checkpoint>/<calibration>/``
plus ``catalog.parquet`` over everything published there (one row per (checkpoint,
calibration set), the workspace catalog's schema)."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from ..crashsafe import atomic_write


def publish_folder(results: list[dict], tables: str | os.PathLike | dict,
                   target: str | os.PathLike) -> dict:
    """Copy the tables of each result and merge its row into ``TARGET/catalog.parquet``.

    ``tables`` is one tables folder for all results, or ``{checkpoint_key: folder}``.
    Tables already published with the same ``tables_fingerprint`` are not copied again;
    the catalog is rewritten only when a row changed. Returns ``{"tables": copied,
    "catalog_rows": changed}``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..workspace import catalog_schema

    target = Path(target).absolute()
    target.mkdir(parents=True, exist_ok=True)
    copied = 0
    catalog_path = target / "catalog.parquet"
    rows = {(r["checkpoint_key"], r["calibration_key"]): r
            for r in (pq.read_table(catalog_path).to_pylist() if catalog_path.exists() else [])}
    changed = 0
    for result in results:
        source = Path(tables[result["checkpoint_key"]] if isinstance(tables, dict) else tables)
        dest = target / result["checkpoint_key"] / result["calibration_key"]
        stamp = dest / "tables_fingerprint"
        if not (stamp.is_file() and stamp.read_text().strip() == result["tables_fingerprint"]):
            staging = dest.parent / f".{dest.name}.staging-{uuid.uuid4().hex[:8]}"
            shutil.copytree(source, staging / "tables")
            (staging / "tables_fingerprint").write_text(result["tables_fingerprint"] + "\n")
            old = dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:8]}"
            if dest.exists():
                dest.rename(old)
            staging.rename(dest)
            shutil.rmtree(old, ignore_errors=True)
            copied += 1
        row = dict(result, tables=str(Path(result["checkpoint_key"]) / result["calibration_key"]
                                      / "tables"))
        row = {f.name: row.get(f.name) for f in catalog_schema()}
        key = (row["checkpoint_key"], row["calibration_key"])
        before = rows.get(key)
        if before is None or _comparable(before) != _comparable(row):
            rows[key] = row
            changed += 1
    if changed or not catalog_path.exists():
        table = pa.Table.from_pylist([rows[k] for k in sorted(rows)], schema=catalog_schema())
        atomic_write(catalog_path, lambda p: pq.write_table(table, p))
    return {"tables": copied, "catalog_rows": changed}


def _comparable(row: dict) -> str:
    return json.dumps({k: v for k, v in row.items() if k != "scored_at"}, sort_keys=True,
                      default=repr)


__all__ = ["publish_folder"]
