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

By job, bottom first: :mod:`.schemas` (constants, error, schemas, :func:`to_table`),
:mod:`.columns` (the columns a run computes), :mod:`.io` (writers and readers, local or
object storage), :mod:`.publish` (atomic output, liveness of writers, ``run.json``). This
package re-exports the public names; a test that patches a private helper (e.g. the
fault hook) must patch it in the module that defines it.
"""

from __future__ import annotations

from nex_transforms.baselines import BASELINES

from ..store.fs import is_url
from .columns import concat_columns, model_columns, neuron_columns, phase_columns, phase_part
from .io import TableWriter, read_run, read_table, table_path, weights_from_neurons, write_table
from .publish import clean_leftovers, staged_output, write_run_json
from .schemas import (POINTER, RUN_JSON, TABLE_NAMES, TABLES_SCHEMA_VERSION, TablesError,
                      schema, to_table)

__all__ = ["BASELINES", "RUN_JSON", "TABLES_SCHEMA_VERSION", "TABLE_NAMES", "TableWriter",
           "TablesError", "POINTER", "concat_columns", "is_url", "model_columns",
           "neuron_columns", "phase_columns", "phase_part", "read_run", "read_table", "schema",
           "staged_output", "clean_leftovers", "table_path", "to_table",
           "weights_from_neurons", "write_run_json", "write_table"]
