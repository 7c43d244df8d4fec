"""Score tables: Parquet schemas, atomic output folders, ``run.json`` and readers.

``nex score`` writes a folder ``TABLES/`` (schemas in ``docs/TABLES.md``)::

    responses.parquet   one row per response (a file, or a folder of part files)
    models.parquet      one row per model id
    neurons.parquet     one row per credited neuron and calibration key
    phases.parquet      one row per kept row (only with --phases)
    run.json            parameters, engine, versions, input fingerprint, timings

Every table is Parquet with zstd compression. The tables are built in a hidden version
folder beside ``TABLES`` and published with one atomic step: ``TABLES`` is a symbolic
link swapped onto the new version by a single ``rename(2)`` (:func:`staged_output`), so a
reader never sees a half-written table, a failed or killed run leaves the previous output
untouched, and leftovers of a crashed publish are removed by the next one.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np

from nex_transforms import NexError, log_gap
from nex_transforms.baselines import BASELINES
from nex_transforms.params import KEY_SPACE, UNIT_BITS

from .store.fs import is_url

#: Version of the table layout below (recorded in run.json and Parquet metadata).
#: 2: the phases table gained ``cycle`` and ``credited``; 3: the regime diagnostics
#: (responses: ``late_novelty``, ``distinct_neurons``, ``pool_coverage``; models:
#: ``late_novelty``, ``pool_coverage``, ``hooked_neurons``).
TABLES_SCHEMA_VERSION = 3
RUN_JSON = "run.json"
#: On object storage: the small object, written last, that names the current version.
POINTER = "_NEX_TABLES.json"
TABLE_NAMES = ("responses", "models", "neurons", "phases")
#: Tables other jobs derive from a tables folder (not written by ``nex score``):
#: ``neuron_contexts`` (``nex explore``: the top rows of weighted neurons).
DERIVED_TABLE_NAMES = ("neuron_contexts",)
PARQUET_COMPRESSION = "zstd"


class TablesError(NexError):
    """An output folder cannot be written or a tables folder cannot be read."""


def _schemas() -> dict:
    import pyarrow as pa

    baselines = [pa.field(n, pa.float64()) for n in BASELINES]
    return {
        "responses": pa.schema([
            pa.field("trace_id", pa.string(), nullable=False),
            pa.field("prompt_id", pa.string()),
            pa.field("sample_index", pa.int64()),
            pa.field("model_id", pa.string()),
            pa.field("gmf", pa.float64()),
            pa.field("n_rows", pa.int64()),
            pa.field("n_kept_rows", pa.int64()),
            pa.field("n_explore_rows", pa.int64()),
            pa.field("n_cycles", pa.int64()),
            pa.field("n_effective_cycles", pa.int64()),
            pa.field("n_redundant_cycles", pa.int64()),
            pa.field("response_tokens", pa.int64()),
            pa.field("late_novelty", pa.float64()),
            pa.field("distinct_neurons", pa.int64()),
            pa.field("pool_coverage", pa.float64()),
            *baselines,
        ]),
        "models": pa.schema([
            pa.field("model_id", pa.string(), nullable=False),
            pa.field("calibration", pa.string()),
            pa.field("calibration_key", pa.string()),
            pa.field("nex", pa.float64()),
            pa.field("log_gap", pa.float64()),
            pa.field("n_responses", pa.int64()),
            pa.field("n_scored", pa.int64()),
            pa.field("n_skipped", pa.int64()),
            pa.field("n_cycles", pa.int64()),
            pa.field("n_effective_cycles", pa.int64()),
            pa.field("n_redundant_cycles", pa.int64()),
            *baselines,
            pa.field("n_nonzero_weights", pa.int64()),
            pa.field("n_positive_weights", pa.int64()),
            pa.field("n_negative_weights", pa.int64()),
            pa.field("late_novelty", pa.float64()),
            pa.field("pool_coverage", pa.float64()),
            pa.field("hooked_neurons", pa.int64()),
        ]),
        "neurons": pa.schema([
            pa.field("model_id", pa.string(), nullable=False),
            pa.field("key", pa.uint32()),
            pa.field("layer", pa.int32()),
            pa.field("unit", pa.int32()),
            pa.field("eff", pa.float64()),
            pa.field("red", pa.float64()),
            pa.field("weight", pa.float32()),
        ]),
        "phases": pa.schema([
            pa.field("trace_id", pa.string(), nullable=False),
            pa.field("model_id", pa.string()),
            pa.field("row", pa.int64()),
            pa.field("novelty_slope", pa.float64()),
            pa.field("z", pa.float64()),
            pa.field("label", pa.string()),
            pa.field("cycle", pa.int64()),
            pa.field("credited", pa.bool_()),
        ]),
        "neuron_contexts": pa.schema([
            pa.field("model_id", pa.string(), nullable=False),
            pa.field("key", pa.uint32()),
            pa.field("layer", pa.int32()),
            pa.field("unit", pa.int32()),
            pa.field("rank", pa.int64()),
            pa.field("trace_id", pa.string()),
            pa.field("row", pa.int64()),
            pa.field("mass", pa.float64()),
            pa.field("token_start", pa.int64()),
            pa.field("token_stop", pa.int64()),
        ]),
    }


def schema(name: str):
    """The pyarrow schema of a table (``responses``, ``models``, ``neurons``, ``phases``),
    with the layout version in its metadata."""
    if name not in TABLE_NAMES + DERIVED_TABLE_NAMES:
        raise TablesError(f"table: expected one of {TABLE_NAMES + DERIVED_TABLE_NAMES}, "
                          f"got {name!r}")
    return _schemas()[name].with_metadata({b"nex_tables_schema_version":
                                           str(TABLES_SCHEMA_VERSION).encode()})


#: Columns whose undefined values (NaN, or 0 hooked neurons) are written as nulls: a
#: response with too few rows has no late novelty, a store that does not record the
#: neurons it hooked (an imported row cache) has no pool coverage.
NULL_WHEN_UNDEFINED = ("late_novelty", "pool_coverage", "hooked_neurons")


def _with_nulls(values) -> list:
    values = np.asarray(values)
    undefined = ~np.isfinite(values) if values.dtype.kind == "f" else values <= 0
    return [None if bad else value for value, bad in zip(values.tolist(), undefined.tolist())]


def to_table(name: str, columns: dict):
    """A pyarrow Table of ``name`` from a dict of columns (lists or numpy arrays); columns
    not in the schema are ignored, an empty dict gives an empty table."""
    import pyarrow as pa

    target = schema(name)
    if not columns:
        return target.empty_table()
    arrays = [pa.array(_with_nulls(columns[f.name]) if f.name in NULL_WHEN_UNDEFINED
                       else columns[f.name], type=f.type) for f in target]
    return pa.Table.from_arrays(arrays, schema=target)


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
    from .store.fs import storage_options_from_env

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


# --------------------------------------------------------------------------- columns
def model_columns(tallies: dict, weights: dict, config) -> dict:
    """Columns of the models table (one row per model id, sorted).

    ``tallies``: model id -> :class:`~pipelines.engines.tally.ModelTally`; ``weights``:
    calibration key -> :class:`~pipelines.engines.weights.SparseWeights`; ``config``: the
    run's :class:`~pipelines.engines.plan.ScoreConfig`."""
    names = sorted(tallies)
    cols: dict[str, list] = {k: [] for k in (
        "model_id", "calibration", "calibration_key", "nex", "log_gap", "n_responses",
        "n_scored", "n_skipped", "n_cycles", "n_effective_cycles", "n_redundant_cycles",
        *BASELINES, "n_nonzero_weights", "n_positive_weights", "n_negative_weights",
        "late_novelty", "pool_coverage", "hooked_neurons")}
    for model in names:
        tally = tallies[model]
        key = config.key_of(model)
        w = weights[key]
        nex = tally.nex
        cols["model_id"].append(model)
        cols["calibration"].append(config.calibration)
        cols["calibration_key"].append(key)
        cols["nex"].append(nex)
        cols["log_gap"].append(log_gap(nex) if math.isfinite(nex) else float("nan"))
        for name in ("n_responses", "n_scored", "n_skipped", "n_cycles",
                     "n_effective_cycles", "n_redundant_cycles"):
            cols[name].append(getattr(tally, name))
        for name, value in tally.baseline_means().items():
            cols[name].append(value)
        cols["n_nonzero_weights"].append(w.n_nonzero)
        cols["n_positive_weights"].append(w.n_positive)
        cols["n_negative_weights"].append(w.n_negative)
        for name, value in tally.medians().items():
            cols[name].append(value)
        cols["hooked_neurons"].append(tally.hooked_neurons)
    return cols


def neuron_columns(key: str, weights, credit) -> dict:
    """Columns of the neurons table for one calibration key: every credited key (or,
    for given weights, every non-zero weight, with NaN credit)."""
    if credit is not None:
        keys, eff, red = credit.keys, credit.effective, credit.redundant
        values = weights.values
    else:
        keys, values = weights.keys, weights.values
        eff = red = np.full(keys.size, np.nan)
    keys = np.asarray(keys, np.uint32)
    return {"model_id": [key] * keys.size, "key": keys,
            "layer": (keys >> UNIT_BITS).astype(np.int32),
            "unit": (keys & ((1 << UNIT_BITS) - 1)).astype(np.int32),
            "eff": np.asarray(eff, np.float64), "red": np.asarray(red, np.float64),
            "weight": np.asarray(values, np.float32)}


def concat_columns(parts: list[dict]) -> dict:
    """Concatenate column dicts with the same names (lists and arrays)."""
    if not parts:
        return {}
    out = {}
    for name in parts[0]:
        values = [p[name] for p in parts]
        if isinstance(values[0], np.ndarray):
            out[name] = np.concatenate(values)
        else:
            out[name] = [v for chunk in values for v in chunk]
    return out


def phase_columns(trace_ids, model_ids, parts: list) -> dict:
    """Columns of the phases table for a batch of traces, one row per kept row in trace
    order: trace_id, model_id, row, novelty_slope, z, label (``E``/``X``), cycle (index
    of the row's E->X cycle within its response, -1 for a row in no cycle) and credited
    (whether that cycle earned credit).

    ``parts`` holds ``(trace, row, slope, z, explore, cycle, credited)`` arrays (trace
    positions in ``trace_ids``), one tuple per calibration key analysed: see
    :func:`phase_part`."""
    if parts:
        trace = np.concatenate([p[0] for p in parts])
        row = np.concatenate([p[1] for p in parts])
        order = np.lexsort((row, trace))
        trace, row = trace[order], row[order]
        slope, z, explore, cycle, credited = (np.concatenate([p[k] for p in parts])[order]
                                              for k in range(2, 7))
    else:
        trace = row = cycle = np.zeros(0, np.int64)
        slope = z = np.zeros(0)
        explore = credited = np.zeros(0, bool)
    ids = np.asarray(trace_ids, dtype=object)
    models = np.asarray(model_ids, dtype=object)
    return {"trace_id": ids[trace].tolist(), "model_id": models[trace].tolist(),
            "row": row.astype(np.int64), "novelty_slope": slope.astype(np.float64),
            "z": z.astype(np.float64),
            "label": np.where(explore, "E", "X").tolist(),
            "cycle": cycle.astype(np.int64), "credited": credited.astype(bool)}


def phase_part(positions: np.ndarray, trace_row_ptr: np.ndarray, analysis) -> tuple:
    """One ``parts`` entry of :func:`phase_columns` from a core
    :class:`~nex_transforms.TraceAnalysis` of the traces at ``positions`` (whose rows start
    at ``trace_row_ptr``): per kept row its trace position, row index in its response,
    novelty slope, z, E label, cycle index within the response and the core's verdict on
    whether that cycle was credited (``CycleCredit.cycle_credited``, not recomputed)."""
    rows = analysis.rows
    credit = analysis.credit
    row_trace = rows.row_trace()
    row_cycle = np.asarray(credit.row_cycle, np.int64)
    if row_cycle.size != row_trace.size:
        raise TablesError(f"phases: expected a cycle per kept row ({row_trace.size}), "
                          f"got {row_cycle.size}")
    first = np.concatenate([[0], np.cumsum(credit.trace_cycles)])[:-1]
    in_cycle = row_cycle >= 0
    cycle = np.where(in_cycle, row_cycle - first[row_trace], -1)
    credited = np.zeros(row_cycle.size, bool)
    credited[in_cycle] = np.asarray(credit.cycle_credited, bool)[row_cycle[in_cycle]]
    return (positions[row_trace], rows.row_index - trace_row_ptr[row_trace],
            analysis.novelty.slopes, analysis.segmentation.z, analysis.segmentation.explore,
            cycle, credited)


# --------------------------------------------------------------------------- atomic output
#: Test hook: ``NEX_TABLES_FAULT=<stage>`` SIGKILLs the scoring process when publishing
#: reaches that stage: ``written`` (every table and run.json complete, nothing published),
#: ``linked`` (the new link made beside ``--out``, not yet swapped in), ``swapped`` (the
#: new tables published, the previous version not yet removed).
FAULT_ENV = "NEX_TABLES_FAULT"
#: Leftovers of a publish by a process on another host count as abandoned after this long.
STALE_SECONDS = 24 * 3600


def _fault_point(stage: str) -> None:
    if os.environ.get(FAULT_ENV) == stage:
        os.kill(os.getpid(), signal.SIGKILL)


def _is_previous_output(path: Path) -> bool:
    return (path / RUN_JSON).is_file()


def _version_prefix(out: Path) -> str:
    return f".{out.name}.v-"


def _owner_path(version: Path) -> Path:
    return version.parent / f"{version.name}.owner"


def _writer_alive(info: dict, modified) -> bool:
    """Whether the writer an owner record ``info`` names may still be running: on this
    host, a live pid; on another host, an owner file modified (``modified()``, seconds
    since the epoch, None when unknown) within STALE_SECONDS."""
    if info.get("host") != socket.gethostname():
        stamp = modified()
        return stamp is None or time.time() - stamp < STALE_SECONDS
    try:
        os.kill(int(info.get("pid", -1)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True
    return True


def _owner_alive(owner: Path) -> bool:
    """Whether the process that wrote ``owner`` (a staging folder's owner file) may still
    be running: same host and a live pid, or another host and a recent file."""
    try:
        info = json.loads(owner.read_text())
    except (OSError, ValueError):
        return False

    def modified():
        try:
            return owner.stat().st_mtime
        except OSError:
            return 0.0  # gone: not alive
    return _writer_alive(info, modified)


def _current_version(out: Path) -> str | None:
    """Name of the version folder ``out`` links to (None when ``out`` is not a link)."""
    try:
        return os.readlink(out) if out.is_symlink() else None
    except OSError:
        return None


def clean_leftovers(out: str | os.PathLike) -> list[str]:
    """Remove what crashed publishes of ``out`` left beside it: version folders that
    ``out`` does not link to and whose writer is gone, temporary links, and folders of
    the earlier two-rename layout. Returns the names removed."""
    out = Path(out).absolute()
    if not out.parent.is_dir():
        return []
    current = _current_version(out)
    prefix = _version_prefix(out)
    removed = []
    for entry in sorted(out.parent.iterdir()):
        name = entry.name
        if not name.startswith(f".{out.name}."):
            continue
        if name.startswith(prefix) and not name.endswith(".owner"):
            if name == current or _owner_alive(_owner_path(entry)):
                continue
            shutil.rmtree(entry, ignore_errors=True)
            _owner_path(entry).unlink(missing_ok=True)
        elif name.startswith(prefix) and name.endswith(".owner"):
            if (out.parent / name[:-len(".owner")]).exists():
                continue
            entry.unlink(missing_ok=True)
        elif name.startswith(f".{out.name}.link-") and entry.is_symlink():
            if _owner_alive(out.parent / f"{prefix}{name.rsplit('-', 1)[-1]}.owner"):
                continue
            entry.unlink(missing_ok=True)
        elif name.startswith((f".{out.name}.staging-", f".{out.name}.old-")) and \
                entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)  # the two-rename layout (no owner)
        else:
            continue
        removed.append(name)
    return removed


@contextmanager
def staged_output(out: str | os.PathLike, storage_options: dict | None = None):
    """Yield a fresh version folder beside ``out``; on success publish it as ``out``.

    ``out`` becomes a symbolic link to a hidden sibling version folder
    (``.OUT.v-TOKEN``); publishing is one ``rename(2)`` of a new link over ``out``, so at
    every instant ``out`` holds either the previous tables or the new ones, complete
    (readers open files through the link). ``out`` must be absent, empty, or an earlier
    tables folder or link (it has a ``run.json``); anything else is refused so no
    unrelated folder is replaced. On error the version folder is removed and ``out`` is
    left as it was. Leftovers of crashed publishes are removed after a publish.

    ``out`` may be an object-storage URL (``s3://bucket/prefix``, any fsspec URL): the
    tables are staged in a local temporary folder, uploaded under ``prefix/v-TOKEN/``, and
    published by writing the small pointer object :data:`POINTER` last (one PUT), which
    readers follow (:func:`read_table`, :func:`read_run`).
    """
    if is_url(out):
        with _remote_staged_output(str(out), storage_options) as staging:
            yield staging
        return
    out = Path(out).absolute()
    if out.is_symlink() and not out.exists():
        pass  # a dangling link: replaced
    elif out.exists():
        if not out.is_dir():
            raise TablesError(f"--out: expected a folder, got a file {out}")
        if any(out.iterdir()) and not _is_previous_output(out):
            raise TablesError(f"--out {out}: expected a new, empty or earlier tables folder "
                              f"(with {RUN_JSON}), got a folder holding other files")
    out.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:12]
    staging = out.parent / f"{_version_prefix(out)}{token}"
    owner = _owner_path(staging)
    owner.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    try:
        staging.mkdir()
        yield staging
        _publish(staging, out, token)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        owner.unlink(missing_ok=True)
        raise
    owner.unlink(missing_ok=True)
    clean_leftovers(out)


@contextmanager
def _remote_staged_output(url: str, storage_options: dict | None):
    fs, root = _remote(url, storage_options)
    fs.invalidate_cache()
    try:
        exists = fs.exists(root)
        entries = fs.ls(root, detail=False) if exists and fs.isdir(root) else []
        has_pointer = fs.exists(f"{root}/{POINTER}")
    except (OSError, ValueError) as err:
        raise TablesError(f"--out {url}: expected reachable object storage, got "
                          f"{type(err).__name__}: {err}") from None
    if entries and not has_pointer:
        raise TablesError(f"--out {url}: expected a new, empty or earlier tables prefix "
                          f"(with {POINTER}), got a prefix holding other objects")
    local = Path(tempfile.mkdtemp(prefix="nex-tables-"))
    try:
        yield local
        _remote_publish(fs, root, url, local)
    finally:
        shutil.rmtree(local, ignore_errors=True)


def _remote_publish(fs, root: str, url: str, local: Path) -> None:
    """Upload ``local`` as a new version under ``root``, then point :data:`POINTER` at it
    (the single atomic step) and remove the previous version and stale leftovers."""
    token = uuid.uuid4().hex[:12]
    version = f"v-{token}"
    owner = f"{root}/{version}.owner"
    try:
        fs.pipe_file(owner, json.dumps({"host": socket.gethostname(),
                                        "pid": os.getpid()}).encode())
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            fs.put_file(str(path), f"{root}/{version}/{path.relative_to(local).as_posix()}")
        _fault_point("written")
        previous = None
        if fs.exists(f"{root}/{POINTER}"):
            previous = _remote_version(fs, root, url).rsplit("/", 1)[-1]
        fs.pipe_file(f"{root}/{POINTER}", json.dumps(
            {"version": version, "created_at": datetime.now(timezone.utc).isoformat()},
            sort_keys=True).encode())
    except TablesError:
        raise
    except (OSError, ValueError) as err:
        raise TablesError(f"--out {url}: expected the tables uploaded, got "
                          f"{type(err).__name__}: {err}") from None
    _fault_point("swapped")
    fs.rm_file(owner)
    fs.invalidate_cache()
    for entry in fs.ls(root, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if not name.startswith("v-") or name.endswith(".owner") or name == version:
            continue
        if name != previous and fs.exists(f"{root}/{name}.owner") and \
                _remote_owner_alive(fs, f"{root}/{name}.owner"):
            continue
        fs.rm(f"{root}/{name}", recursive=True)
        if fs.exists(f"{root}/{name}.owner"):
            fs.rm_file(f"{root}/{name}.owner")


def _remote_owner_alive(fs, owner: str) -> bool:
    """Whether an upload to object storage may still be running (see
    :func:`_owner_alive`)."""
    try:
        info = json.loads(fs.cat_file(owner))
    except (OSError, ValueError):
        return False

    def modified():
        try:
            return fs.modified(owner).timestamp()
        except (OSError, NotImplementedError, AttributeError, ValueError):
            return None  # unknown: assume alive
    return _writer_alive(info, modified)


def _publish(staging: Path, out: Path, token: str) -> None:
    """Swap ``out`` to the new version folder with one rename of a link, then remove the
    version it linked to before (only a version folder of ours)."""
    _fault_point("written")
    previous = _current_version(out)
    link = out.parent / f".{out.name}.link-{token}"
    os.symlink(staging.name, link)
    try:
        _fault_point("linked")
        if out.is_dir() and not out.is_symlink():
            # A plain folder (tables written before links were used, or empty): moved aside as an old
            # version first; a crash in between leaves the tables in that hidden folder.
            aside = out.parent / f"{_version_prefix(out)}{token}-previous"
            out.rename(aside)
            previous = aside.name
        os.replace(link, out)
    except BaseException:
        link.unlink(missing_ok=True)
        raise
    _fault_point("swapped")
    if previous and previous.startswith(_version_prefix(out)) and "/" not in previous:
        shutil.rmtree(out.parent / previous, ignore_errors=True)


def package_versions() -> dict:
    """Versions of the packages that shape the scores and the tables."""
    out = {"python": sys.version.split()[0]}
    for name in ("nex-pipeline", "numpy", "pyarrow", "zarr", "apache-beam", "dask",
                 "distributed"):
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            out[name] = None
    return out


def write_run_json(staging: Path, plan, engine: str, engine_info: dict, timings: dict) -> dict:
    """Write ``run.json`` (parameters, engine, versions, store fingerprint, timings)."""
    config = plan.config
    keys = sorted({config.key_of(m) for m in plan.models})
    tables = [n for n in TABLE_NAMES if table_path(staging, n).exists()]
    summary = {
        "tables_schema_version": TABLES_SCHEMA_VERSION,
        "created_at": datetime.now(timezone.utc).isoformat(),
        "engine": engine,
        "engine_info": engine_info,
        "params": config.params.to_dict(),
        "calibration": config.calibration,
        "calibration_keys": keys,
        "weights_file": config.weights_file,
        "phases": config.phases,
        "batch_entries": config.batch_entries,
        "n_units": len(plan.units),
        "n_traces": plan.n_traces,
        "models": list(plan.models),
        "store": plan.store_summary,
        "store_fingerprint": plan.fingerprint,
        "versions": package_versions(),
        "timings": {k: round(float(v), 4) for k, v in timings.items()},
        "tables": tables,
    }
    text = json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n"
    (staging / RUN_JSON).write_text(text)
    return summary


__all__ = ["BASELINES", "RUN_JSON", "TABLES_SCHEMA_VERSION", "TABLE_NAMES", "TableWriter",
           "TablesError", "POINTER", "concat_columns", "is_url", "model_columns", "neuron_columns", "phase_columns", "phase_part", "read_run",
           "read_table", "schema", "staged_output", "clean_leftovers", "table_path", "to_table",
           "weights_from_neurons", "write_run_json", "write_table"]
