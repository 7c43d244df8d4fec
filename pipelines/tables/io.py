"""Score tables: write tables (a single file or batch by batch) and read them back, from a
local tables folder or from object storage (following the pointer object)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from nex_transforms.params import KEY_SPACE

from ..store.fs import is_url, storage_options_from_env
from .schemas import PARQUET_COMPRESSION, POINTER, RUN_JSON, TablesError, schema, to_table


def write_table(path: str | os.PathLike, table) -> Path:
    """Write one table as a single Parquet file (zstd)."""
    import pyarrow.parquet as pq

    path = Path(path)
    pq.write_table(table, path, compression=PARQUET_COMPRESSION)
    return path


class TableWriter:
    """Append batches of rows to one table's Parquet file (zstd, one row group per
    batch), so a run never holds a whole table in memory. An unwritten table is written
    empty on close. Use as a context manager."""

    def __init__(self, folder: str | os.PathLike, name: str) -> None:
        self.name = name
        self.path = table_path(folder, name)
        self.schema = schema(name)
        self.rows = 0
        self._writer = None

    def write(self, columns) -> None:
        """Append a dict of columns (or a pyarrow Table of this table's schema)."""
        import pyarrow.parquet as pq

        table = columns if hasattr(columns, "num_rows") else to_table(self.name, columns)
        if table.num_rows == 0:
            return
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.path, self.schema,
                                            compression=PARQUET_COMPRESSION)
        self._writer.write_table(table)
        self.rows += table.num_rows

    def close(self) -> None:
        if self._writer is None:
            write_table(self.path, self.schema.empty_table())
        else:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "TableWriter":
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            self.close()
        elif self._writer is not None:
            self._writer.close()


def table_path(tables: str | os.PathLike, name: str) -> Path:
    return Path(tables) / f"{name}.parquet"


def _remote(url: str, storage_options: dict | None):
    """``(filesystem, root)`` of an object-storage URL (credentials and endpoint from
    ``storage_options`` or the usual environment variables, e.g. ``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``)."""
    try:
        import fsspec
    except ImportError as err:  # pragma: no cover - fsspec comes with the store extra
        raise TablesError(f"--out {url}: expected fsspec installed, got {err}") from None

    # --storage-options of this command (NEX_STORAGE_OPTIONS) reach every reader of the run
    options = storage_options_from_env(storage_options)
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if url.startswith(("s3://", "s3a://")) and endpoint and "endpoint_url" not in options:
        options["endpoint_url"] = endpoint  # older botocore ignores the variable
    try:
        fs, root = fsspec.core.url_to_fs(url, **options)
    except (ImportError, ValueError, TypeError) as err:
        raise TablesError(f"--out {url}: expected a filesystem URL fsspec can open "
                          f"(pip install s3fs for s3://), got {type(err).__name__}: "
                          f"{err}") from None
    return fs, root.rstrip("/")


def _remote_version(fs, root: str, url: str) -> str:
    """The folder of the tables a remote pointer names (``root/v-TOKEN``)."""
    try:
        pointer = json.loads(fs.cat_file(f"{root}/{POINTER}"))
        version = str(pointer["version"])
    except FileNotFoundError:
        raise TablesError(f"tables {url}: expected a pointer object {POINTER} (written "
                          "last by nex score), got none") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise TablesError(f"tables {url} {POINTER}: expected a readable pointer, got "
                          f"{type(err).__name__}: {err}") from None
    if "/" in version or not version.startswith("v-"):
        raise TablesError(f"tables {url} {POINTER}: expected a version name v-..., "
                          f"got {version!r}")
    return f"{root}/{version}"


def read_table(tables: str | os.PathLike, name: str, sort: bool = True,
               storage_options: dict | None = None):
    """A table of a tables folder (a file or a folder of part files) with its schema.

    ``tables`` is a local folder (or the link ``nex score`` publishes) or an object-storage
    URL (the pointer object is followed to the current version). With ``sort``, rows come
    in a canonical order (responses: trace_id; models: model_id; neurons: model_id, key;
    phases: trace_id, row), whatever engine wrote them.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if is_url(tables):
        fs, root = _remote(str(tables), storage_options)
        fs.invalidate_cache()
        path = f"{_remote_version(fs, root, str(tables))}/{name}.parquet"
        if fs.isdir(path):
            files = sorted(f for f in fs.find(path) if f.endswith(".parquet"))
            table = pa.concat_tables([pq.read_table(f, schema=schema(name), filesystem=fs)
                                      for f in files]) if files else schema(name).empty_table()
        elif fs.isfile(path):
            table = pq.read_table(path, schema=schema(name), filesystem=fs)
        else:
            raise TablesError(f"table {name}: expected {tables}/{name}.parquet, got none")
    else:
        path = table_path(tables, name)
        if not path.exists():
            raise TablesError(f"table {name}: expected {path}, got none")
        if path.is_dir():
            files = sorted(p for p in path.rglob("*.parquet") if p.is_file())
            table = pa.concat_tables([pq.read_table(f, schema=schema(name)) for f in files]) \
                if files else schema(name).empty_table()
        else:
            table = pq.read_table(path, schema=schema(name))
    if sort:
        keys = {"responses": ["trace_id"], "models": ["model_id"],
                "neurons": ["model_id", "key"], "phases": ["trace_id", "row"],
                "neuron_contexts": ["model_id", "key", "rank"]}[name]
        table = table.sort_by([(k, "ascending") for k in keys])
    return table


def read_run(tables: str | os.PathLike, storage_options: dict | None = None) -> dict:
    """The ``run.json`` of a tables folder (or of the current version at a URL)."""
    if is_url(tables):
        fs, root = _remote(str(tables), storage_options)
        path = f"{_remote_version(fs, root, str(tables))}/{RUN_JSON}"
        try:
            return json.loads(fs.cat_file(path))
        except (OSError, ValueError) as err:
            raise TablesError(f"run.json: expected a readable {tables}/{RUN_JSON}, got "
                              f"{type(err).__name__}: {err}") from None
    path = Path(tables) / RUN_JSON
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise TablesError(f"run.json: expected a readable {path}, got {err}") from None


def weights_from_neurons(tables: str | os.PathLike, calibration_key: str,
                         storage_options: dict | None = None) -> np.ndarray:
    """The dense float32 weight vector (2^22) of one calibration key (a model id, or
    ``*`` for global calibration / given weights), rebuilt from the neurons table; it
    equals the vector the run scored with and can be saved for ``--weights``."""
    import pyarrow.compute as pc

    table = read_table(tables, "neurons", sort=False, storage_options=storage_options)
    table = table.filter(pc.equal(table["model_id"], calibration_key))
    keys = read_run(tables, storage_options).get("calibration_keys", [])
    if table.num_rows == 0 and calibration_key not in keys:
        raise TablesError(f"calibration key: expected one of {keys}, got {calibration_key!r}")
    weights = np.zeros(KEY_SPACE, np.float32)
    weights[table["key"].to_numpy()] = table["weight"].to_numpy()
    return weights


__all__ = ["TableWriter", "read_run", "read_table", "table_path", "weights_from_neurons",
           "write_table"]
