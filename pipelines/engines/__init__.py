"""Engines that run NEX scoring over an activation store: local, Beam and Dask.

All engines share one engine-independent core (planning in :mod:`.plan`, the per-unit
steps in :mod:`.analysis`, weights in :mod:`.weights`, model sums in :mod:`.tally`, the
checked reader in :mod:`pipelines.store.reader`, columns in :mod:`pipelines.tables`): a store
is split into *work units* (batches of consecutive traces of one part); each unit is
analysed into per-calibration-key :class:`~nex_transforms.CreditAccumulator` values and
per-trace statistics, accumulators are merged into weights, and each unit is then scored
with those weights. Engines differ only in how units are distributed and accumulators
merged. Adapters are siblings that never import each other; the heavy engine libraries
(``apache_beam``, ``dask``) are imported by their adapter module only.

Typical use (what ``nex score`` does)::

    from pipelines.engines import run_engine
    from pipelines.engines.plan import ScoreConfig
    summary = run_engine("local", ScoreConfig(store="acts.zarr"), out="tables")
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path

from .. import tables
from .plan import EngineError, ScoreConfig, plan_run

#: Engine names and the adapter module implementing each.
ENGINES = {
    "local": "pipelines.engines.local",
    "beam": "pipelines.engines.beam",
    "dask": "pipelines.engines.dask",
}

#: Optional extra to install for each engine (named in the error when missing).
ENGINE_EXTRAS = {"local": "store", "beam": "beam", "dask": "dask"}


def load_adapter(engine: str):
    """The adapter module of an engine (imported lazily); EngineError when unknown or when
    its library is not installed."""
    if engine not in ENGINES:
        raise EngineError(f"engine: expected one of {sorted(ENGINES)}, got {engine!r}")
    try:
        return importlib.import_module(ENGINES[engine])
    except ImportError as err:
        raise EngineError(f"engine {engine}: expected its libraries installed "
                          f"(pip install 'nex-pipeline[{ENGINE_EXTRAS[engine]}]'), "
                          f"got {err}") from None


def run_engine(engine: str, config: ScoreConfig, out: str | Path,
               engine_options: dict | None = None,
               storage_options: dict | None = None) -> dict:
    """Score ``config.store`` with ``engine`` and write the tables to ``out`` atomically.

    ``engine_options`` go to the adapter untouched (Beam: ``{"pipeline_args": [...]}``;
    Dask: ``{"scheduler": ADDRESS, "workers": N}``). ``out`` may be an object-storage URL
    (``s3://bucket/prefix``; ``storage_options`` go to fsspec, e.g. ``endpoint_url``,
    ``key``, ``secret``). Returns the run summary written to ``out/run.json``. Nothing is visible at ``out`` until every table is complete; on any
    error ``out`` is left as it was.
    """
    adapter = load_adapter(engine)
    runner = [a for a in (engine_options or {}).get("pipeline_args") or []
              if a.startswith("--runner")]
    if engine == "beam" and runner and tables.is_url(out):
        raise EngineError(f"--out {out}: expected a path every Beam worker can write with "
                          f"{runner[0]} (tables on object storage are staged on this "
                          "machine: local, dask or Beam's embedded runner), got a URL")
    started = time.perf_counter()
    plan = plan_run(config)
    planned = time.perf_counter()
    with tables.staged_output(out, storage_options) as staging:
        engine_info = adapter.run(plan, staging, dict(engine_options or {}))
        finished = time.perf_counter()
        summary = tables.write_run_json(staging, plan, engine, engine_info, timings={
            "plan_s": planned - started,
            "engine_s": finished - planned,
            "total_s": time.perf_counter() - started,
        })
    return summary


__all__ = ["ENGINES", "EngineError", "ScoreConfig", "load_adapter", "run_engine"]
