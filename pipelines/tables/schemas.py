"""Score tables: the layout constants, the error, the Parquet schemas and
:func:`to_table` (columns to a pyarrow Table, undefined values written as nulls)."""

from __future__ import annotations

import numpy as np

from nex_transforms import NexError
from nex_transforms.baselines import BASELINES

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



__all__ = ["DERIVED_TABLE_NAMES", "NULL_WHEN_UNDEFINED", "PARQUET_COMPRESSION", "POINTER",
           "RUN_JSON", "TABLES_SCHEMA_VERSION", "TABLE_NAMES", "TablesError", "schema",
           "to_table"]
