"""Score tables: Parquet schemas, atomic output folders, ``run.json`` and readers.

``nex score`` writes a folder ``TABLES/`` (schemas in ``docs/TABLES.md``)::

    responses.parquet   one row per response (a file, or a folder of part files)
    models.parquet      one row per model id
    neurons.parquet     one row per credited neuron and calibration key
    phases.parquet      one row per kept row (only with --phases)
    run.json            parameters, engine, versions, input fingerprint, timings

Every table is Parquet with zstd compression. The folder is built under a temporary
sibling and renamed into place when complete (:func:`staged_output`), so a reader never
sees a half-written table and a failed run leaves the previous output untouched.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np

from nex_transforms import NexError, log_gap
from nex_transforms.baselines import BASELINES
from nex_transforms.params import KEY_SPACE, UNIT_BITS

#: Version of the table layout below (recorded in run.json and Parquet metadata).
TABLES_SCHEMA_VERSION = 1
RUN_JSON = "run.json"
TABLE_NAMES = ("responses", "models", "neurons", "phases")
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
        ]),
    }


def schema(name: str):
    """The pyarrow schema of a table (``responses``, ``models``, ``neurons``, ``phases``),
    with the layout version in its metadata."""
    if name not in TABLE_NAMES:
        raise TablesError(f"table: expected one of {TABLE_NAMES}, got {name!r}")
    return _schemas()[name].with_metadata({b"nex_tables_schema_version":
                                           str(TABLES_SCHEMA_VERSION).encode()})


def to_table(name: str, columns: dict):
    """A pyarrow Table of ``name`` from a dict of columns (lists or numpy arrays); columns
    not in the schema are ignored, an empty dict gives an empty table."""
    import pyarrow as pa

    target = schema(name)
    if not columns:
        return target.empty_table()
    arrays = [pa.array(columns[f.name], type=f.type) for f in target]
    return pa.Table.from_arrays(arrays, schema=target)


def write_table(path: str | os.PathLike, table) -> Path:
    """Write one table as a single Parquet file (zstd)."""
    import pyarrow.parquet as pq

    path = Path(path)
    pq.write_table(table, path, compression=PARQUET_COMPRESSION)
    return path


def table_path(tables: str | os.PathLike, name: str) -> Path:
    return Path(tables) / f"{name}.parquet"


def read_table(tables: str | os.PathLike, name: str, sort: bool = True):
    """A table of a tables folder (a file or a folder of part files) with its schema.

    With ``sort``, rows come in a canonical order (responses: trace_id; models: model_id;
    neurons: model_id, key; phases: trace_id, row), whatever engine wrote them.
    """
    import pyarrow.parquet as pq

    path = table_path(tables, name)
    if not path.exists():
        raise TablesError(f"table {name}: expected {path}, got none")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.parquet") if p.is_file())
        import pyarrow as pa

        table = pa.concat_tables([pq.read_table(f, schema=schema(name)) for f in files]) \
            if files else schema(name).empty_table()
    else:
        table = pq.read_table(path, schema=schema(name))
    if sort:
        keys = {"responses": ["trace_id"], "models": ["model_id"],
                "neurons": ["model_id", "key"], "phases": ["trace_id", "row"]}[name]
        table = table.sort_by([(k, "ascending") for k in keys])
    return table


def read_run(tables: str | os.PathLike) -> dict:
    """The ``run.json`` of a tables folder."""
    path = Path(tables) / RUN_JSON
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise TablesError(f"run.json: expected a readable {path}, got {err}") from None


def weights_from_neurons(tables: str | os.PathLike, calibration_key: str) -> np.ndarray:
    """The dense float32 weight vector (2^22) of one calibration key (a model id, or
    ``*`` for global calibration / given weights), rebuilt from the neurons table; it
    equals the vector the run scored with and can be saved for ``--weights``."""
    import pyarrow.compute as pc

    table = read_table(tables, "neurons", sort=False)
    table = table.filter(pc.equal(table["model_id"], calibration_key))
    if table.num_rows == 0 and calibration_key not in read_run(tables).get("calibration_keys", []):
        raise TablesError(f"calibration key: expected one of "
                          f"{read_run(tables).get('calibration_keys')}, got {calibration_key!r}")
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
        *BASELINES, "n_nonzero_weights", "n_positive_weights", "n_negative_weights")}
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
    order: trace_id, model_id, row, novelty_slope, z, label (``E``/``X``).

    ``parts`` holds ``(trace, row, slope, z, explore)`` arrays (trace positions in
    ``trace_ids``), one tuple per calibration key analysed."""
    if parts:
        trace = np.concatenate([p[0] for p in parts])
        row = np.concatenate([p[1] for p in parts])
        order = np.lexsort((row, trace))
        trace, row = trace[order], row[order]
        slope = np.concatenate([p[2] for p in parts])[order]
        z = np.concatenate([p[3] for p in parts])[order]
        explore = np.concatenate([p[4] for p in parts])[order]
    else:
        trace = row = np.zeros(0, np.int64)
        slope = z = np.zeros(0)
        explore = np.zeros(0, bool)
    ids = np.asarray(trace_ids, dtype=object)
    models = np.asarray(model_ids, dtype=object)
    return {"trace_id": ids[trace].tolist(), "model_id": models[trace].tolist(),
            "row": row.astype(np.int64), "novelty_slope": slope.astype(np.float64),
            "z": z.astype(np.float64),
            "label": np.where(explore, "E", "X").tolist()}


# --------------------------------------------------------------------------- atomic output
def _is_previous_output(path: Path) -> bool:
    return (path / RUN_JSON).is_file()


@contextmanager
def staged_output(out: str | os.PathLike):
    """Yield a fresh staging folder beside ``out``; on success replace ``out`` with it.

    ``out`` must be absent, empty, or an earlier tables folder (it has a ``run.json``);
    anything else is refused so no unrelated folder is replaced. On error the staging
    folder is removed and ``out`` is left as it was.
    """
    out = Path(out).absolute()
    if out.exists():
        if not out.is_dir():
            raise TablesError(f"--out: expected a folder, got a file {out}")
        if any(out.iterdir()) and not _is_previous_output(out):
            raise TablesError(f"--out {out}: expected a new, empty or earlier tables folder "
                              f"(with {RUN_JSON}), got a folder holding other files")
    out.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:12]
    staging = out.parent / f".{out.name}.staging-{token}"
    staging.mkdir()
    try:
        yield staging
        _publish(staging, out, token)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _publish(staging: Path, out: Path, token: str) -> None:
    """Rename the staging folder into place (the previous output moved aside first)."""
    trash = out.parent / f".{out.name}.old-{token}"
    if out.exists():
        out.rename(trash)
    try:
        staging.rename(out)
    except BaseException:
        if trash.exists() and not out.exists():
            trash.rename(out)
        raise
    shutil.rmtree(trash, ignore_errors=True)


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


__all__ = ["BASELINES", "RUN_JSON", "TABLES_SCHEMA_VERSION", "TABLE_NAMES", "TablesError",
           "concat_columns", "model_columns", "neuron_columns", "phase_columns", "read_run",
           "read_table", "schema", "staged_output", "table_path", "to_table",
           "weights_from_neurons", "write_run_json", "write_table"]
