"""The Dask engine: work units as tasks on a distributed cluster.

By default a :class:`distributed.LocalCluster` of worker processes (one thread each) is
started for the run; ``scheduler`` connects to an existing cluster instead (a
``dask scheduler`` with ``dask worker`` processes, a Kubernetes cluster, ...). Each unit
is one task; per-key credit is merged by a tree reduction on the cluster, the weights
are computed there from the merged credit, and every unit is then scored by a task that
depends on them. Everything is a graph of tasks with lineage, so a worker lost mid-run
only costs the recomputation of what it held. Tables are written with pyarrow on the
client as results arrive, in unit order, each result released once written (the client
never holds every unit's rows; units keep no aggregates: scoring tasks read them again).
"""

from __future__ import annotations

import logging
import os
import uuid
from contextlib import contextmanager
from pathlib import Path

import dask
from distributed import Client, LocalCluster, wait

from .. import tables
from .analysis import analyse_unit, merge_credit, score_unit, write_tables
from .contexts import ContextsJob, TopContexts, contexts_table, unit_contexts
from .plan import GLOBAL_KEY, EngineError, RunPlan, ScoreConfig, calibration_keys, open_store
from .weights import weights_for_keys

#: Inputs merged by one task of the credit tree reduction.
FAN_IN = 8


def _analyse(config: ScoreConfig, unit):
    return analyse_unit(open_store(config.store), unit, config)


def _credit(result) -> dict:
    """The credit of a unit result (runs where the result is; only this moves on)."""
    return result.credit


def _merge(*parts: dict) -> dict:
    """Merge ``{key: CreditAccumulator}`` dicts into one."""
    return merge_credit(parts)


def _weights(credit: dict, params, keys: list[str]) -> dict:
    return weights_for_keys(credit, params, keys)


def _score(config: ScoreConfig, result, weights: dict) -> dict:
    return score_unit(open_store(config.store), result, weights, config)


def _phases(result):
    return result.phases


def _raise_first_error(futures) -> None:
    """Wait for every future; raise the exception of the first erred one in plan order."""
    wait(futures)
    for future in futures:
        if future.status == "error":
            raise future.exception()
        if future.status == "cancelled":
            raise EngineError(f"dask task {future.key}: expected a result, got cancelled "
                              "(the cluster went away?)")


def _in_order(futures: list):
    """Results of ``futures`` in order, each released (on the cluster and here) once
    handed over, so only one is held on the client at a time."""
    for i, future in enumerate(futures):
        futures[i] = None
        _raise_first_error([future])
        result = future.result()
        future.release()
        yield result


def compute(client: Client, plan: RunPlan, staging: Path) -> dict:
    """Run the plan on ``client`` and write its tables into ``staging`` as results arrive
    (phases, then responses, in unit order); returns the table counts."""
    config = plan.config
    run = uuid.uuid4().hex[:8]
    analysed = [client.submit(_analyse, config, unit, key=f"nex-analyse-{run}-{unit.index}",
                              pure=False) for unit in plan.units]
    if plan.fixed_weights is not None:
        [weights_future] = client.scatter([{GLOBAL_KEY: plan.fixed_weights}],
                                          broadcast=True, hash=False)
    else:
        level = [client.submit(_credit, f, key=f"nex-credit-{run}-{i}", pure=False)
                 for i, f in enumerate(analysed)]
        depth = 0
        while len(level) > 1 or depth == 0:
            level = [client.submit(_merge, *level[i:i + FAN_IN],
                                   key=f"nex-merge-{run}-{depth}-{i // FAN_IN}", pure=False)
                     for i in range(0, len(level), FAN_IN)]
            depth += 1
        root = level[0]
        weights_future = client.submit(_weights, root, config.params, calibration_keys(plan),
                                       key=f"nex-weights-{run}", pure=False)
    scored = [client.submit(_score, config, f, weights_future,
                            key=f"nex-score-{run}-{i}", pure=False)
              for i, f in enumerate(analysed)]
    phase_futures = ([client.submit(_phases, f, key=f"nex-phases-{run}-{i}", pure=False)
                      for i, f in enumerate(analysed)] if config.phases else [])
    _raise_first_error(analysed)
    del analysed  # the scoring and phases tasks hold what they still need
    credit = root.result() if plan.fixed_weights is None else None
    weights = weights_future.result()
    if config.phases:
        with tables.TableWriter(staging, "phases") as phases:
            for columns in _in_order(phase_futures):
                phases.write(columns)
    return write_tables(staging, plan, _in_order(scored), credit, weights)


@contextmanager
def _client(options: dict):
    """A client of a local cluster (``workers`` processes) or of the cluster at
    ``scheduler``: yields ``(client, info)`` and closes what it started."""
    scheduler = options.pop("scheduler", None)
    workers = options.pop("workers", None)
    if options:
        raise EngineError(f"dask engine options: expected scheduler and workers, "
                          f"got {sorted(options)}")
    if scheduler is not None and workers is not None:
        raise EngineError(f"--workers: expected it only for a local cluster (the cluster at "
                          f"{scheduler} has its own workers), got {workers}")
    cluster = None
    quiet = logging.getLogger("distributed")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the scheduler of a local cluster logs in this process
    # Dask sets MALLOC_TRIM_THRESHOLD_=65536 in workers by default; with the core's large
    # temporary arrays that makes every allocation fault its pages in again (about 1.6x
    # slower tasks here), so local workers keep the C library's default.
    # Each local worker is one process with one thread on one core, so zarr decodes its
    # chunks on that thread too (its default pool would oversubscribe the cores).
    environ = {k: v for k, v in dask.config.get("distributed.nanny.pre-spawn-environ").items()
               if k != "MALLOC_TRIM_THRESHOLD_"}
    environ.setdefault("ZARR_THREADING__MAX_WORKERS", "1")
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        if scheduler is None:
            workers = int(workers or os.cpu_count() or 1)
            try:
                cluster = LocalCluster(n_workers=workers, threads_per_worker=1,
                                       processes=True, dashboard_address=":0",
                                       silence_logs=logging.CRITICAL)
            except (RuntimeError, OSError, TimeoutError) as err:
                quiet.setLevel(level)
                raise EngineError(f"dask local cluster: expected {workers} worker processes "
                                  f"started, got {type(err).__name__}: {err}") from None
        try:
            try:
                client = Client(cluster if cluster is not None else scheduler,
                                timeout="30s")
            except (OSError, TimeoutError) as err:
                raise EngineError(f"dask scheduler: expected one reachable at {scheduler}, "
                                  f"got {type(err).__name__}: {err}") from None
            with client:
                n_workers = len(client.scheduler_info().get("workers", {}))
                yield client, {"runner": "dask.distributed",
                               "scheduler": scheduler or "LocalCluster", "workers": n_workers}
        finally:
            if cluster is not None:
                cluster.close()
            quiet.setLevel(level)


def run(plan: RunPlan, staging: Path, options: dict) -> dict:
    """Run on a local cluster (``workers`` processes) or at ``scheduler``; write tables."""
    with _client(options) as (client, info):
        counts = compute(client, plan, staging)
    return {**info, **counts}


# --------------------------------------------------------------------------- contexts
def _unit_contexts(job: ContextsJob, unit):
    return unit_contexts(open_store(job.store), unit, job)


def _merge_contexts(*parts: TopContexts) -> TopContexts:
    return TopContexts.merge_all(parts)


def contexts(plan: RunPlan, job: ContextsJob, folder: Path, options: dict) -> dict:
    """The neuron-contexts job on the cluster: one task per unit, values merged by a tree
    reduction there (each merge holds at most ``FAN_IN`` values of neurons x contexts
    rows); the merged value comes back and ``neuron_contexts.parquet`` is written into
    ``folder`` here."""
    with _client(options) as (client, info):
        run_id = uuid.uuid4().hex[:8]
        level = [client.submit(_unit_contexts, job, unit, key=f"nex-contexts-{run_id}-{unit.index}",
                               pure=False) for unit in plan.units]
        depth = 0
        while len(level) > 1 or depth == 0:
            level = [client.submit(_merge_contexts, *level[i:i + FAN_IN],
                                   key=f"nex-contexts-merge-{run_id}-{depth}-{i // FAN_IN}",
                                   pure=False)
                     for i in range(0, len(level), FAN_IN)]
            depth += 1
        _raise_first_error(level)
        merged = level[0].result()
    tables.write_table(tables.table_path(folder, "neuron_contexts"), contexts_table(merged, job))
    return {**info, "rows": len(merged)}
