"""Publish to a plain folder: each result's tables under ``<checkpoint>/<calibration>/``
plus ``catalog.parquet`` over everything published there (one row per (checkpoint,
calibration set), the workspace catalog's schema)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ..catalog import catalog_schema
from ..crashsafe import atomic_write, replace_folder


def publish_folder(results: list[dict], tables: str | os.PathLike | dict,
                   target: str | os.PathLike) -> dict:
    """Copy the tables of each result and merge its row into ``TARGET/catalog.parquet``.

    ``tables`` is one tables folder for all results, or ``{checkpoint_key: folder}``.
    Tables already published with the same ``tables_fingerprint`` are not copied again;
    a result's folder is replaced whole (:func:`~pipelines.crashsafe.replace_folder`);
    the catalog is rewritten only when a row changed. Returns ``{"tables": copied,
    "catalog_rows": changed}``.
    """
    target = Path(target).absolute()
    target.mkdir(parents=True, exist_ok=True)
    schema = catalog_schema()
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
            def build(staging: Path, source=source, fingerprint=result["tables_fingerprint"]):
                shutil.copytree(source, staging / "tables")
                (staging / "tables_fingerprint").write_text(fingerprint + "\n")

            replace_folder(dest, build)
            copied += 1
        row = dict(result, tables=str(Path(result["checkpoint_key"]) / result["calibration_key"]
                                      / "tables"))
        row = {f.name: row.get(f.name) for f in schema}
        key = (row["checkpoint_key"], row["calibration_key"])
        before = rows.get(key)
        if before is None or _comparable(before) != _comparable(row):
            rows[key] = row
            changed += 1
    if changed or not catalog_path.exists():
        table = pa.Table.from_pylist([{f.name: rows[k].get(f.name) for f in schema}
                                      for k in sorted(rows)], schema=schema)
        atomic_write(catalog_path, lambda p: pq.write_table(table, p))
    return {"tables": copied, "catalog_rows": changed}


def _comparable(row: dict) -> str:
    return json.dumps({k: v for k, v in row.items() if k != "scored_at"}, sort_keys=True,
                      default=repr)


__all__ = ["publish_folder"]
