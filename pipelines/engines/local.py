"""The local engine: every work unit in a loop in this process (the reference engine).

Memory stays bounded whatever the number of traces: credit is merged as units are
analysed (:class:`~pipelines.engines.analysis.CreditMerger`), phases are appended to their
table as they are produced, each unit's per-trace statistics are spilled to a temporary
file until the weights are known, and scoring then reads each unit's aggregates again and
appends its response rows to the responses table.
"""

from __future__ import annotations

import contextlib
import pickle
import tempfile
from pathlib import Path

from .. import tables
from .analysis import CreditMerger, UnitResult, analyse_unit, plan_weights, score_unit, write_tables
from .contexts import ContextsJob, TopContexts, contexts_table, unit_contexts
from .plan import EngineError, RunPlan, open_store


def compute(plan: RunPlan, spill: Path, phases: tables.TableWriter | None = None):
    """Analyse every unit (credit merged as it goes, statistics spilled under ``spill``,
    phases appended to ``phases``), then learn the weights.

    Returns ``(credit, weights, rows)``: ``rows`` yields each unit's response rows in
    unit order, scoring the unit as it is consumed (``spill`` must outlive it).
    """
    config = plan.config
    store = open_store(config.store)
    merger = CreditMerger() if plan.fixed_weights is None else None
    spill = Path(spill)
    for unit in plan.units:
        result = analyse_unit(store, unit, config)
        if merger is not None:
            merger.add(result.credit)
        if phases is not None:
            phases.write(result.phases)
        with open(spill / f"unit-{unit.index:08d}.pkl", "wb") as handle:
            pickle.dump(result.stats, handle, protocol=pickle.HIGHEST_PROTOCOL)
    credit = merger.result() if merger is not None else None
    weights = plan_weights(plan, credit)

    def rows():
        for unit in plan.units:
            path = spill / f"unit-{unit.index:08d}.pkl"
            with open(path, "rb") as handle:
                stats = pickle.load(handle)
            path.unlink()
            yield score_unit(store, UnitResult(unit, {}, stats, None), weights, config)

    return credit, weights, rows()


def run(plan: RunPlan, staging: Path, options: dict) -> dict:
    """Score the plan in-process and write the tables into ``staging``."""
    if options:
        raise EngineError(f"local engine options: expected none, got {sorted(options)}")
    with contextlib.ExitStack() as stack:
        spill = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="nex-spill-")))
        phases = (stack.enter_context(tables.TableWriter(staging, "phases"))
                  if plan.config.phases else None)
        credit, weights, rows = compute(plan, spill, phases)
        counts = write_tables(staging, plan, rows, credit, weights)
    return {"runner": "in-process loop", "workers": 1, **counts}


def contexts(plan: RunPlan, job: ContextsJob, folder: Path, options: dict) -> dict:
    """The neuron-contexts job in-process: each unit's top rows merged into one running
    value as the units are read; writes ``neuron_contexts.parquet`` into ``folder``."""
    if options:
        raise EngineError(f"local engine options: expected none, got {sorted(options)}")
    store = open_store(plan.config.store)
    merged = TopContexts.empty(job.per_neuron)
    for unit in plan.units:
        merged = merged.merge(unit_contexts(store, unit, job))
    tables.write_table(tables.table_path(folder, "neuron_contexts"), contexts_table(merged, job))
    return {"runner": "in-process loop", "workers": 1, "rows": len(merged)}
