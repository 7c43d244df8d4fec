"""The engine-independent steps of ``nex score``: pure functions over work units.

Every engine runs the same two steps per unit and the same merges:

1. :func:`analyse_unit`: read the unit (checked: :func:`pipelines.store.reader.read_unit`),
   run the NEX analysis per calibration key (the model id for per-model calibration,
   :data:`~pipelines.engines.plan.GLOBAL_KEY` otherwise) and return a :class:`UnitResult`:
   one :class:`~nex_transforms.CreditAccumulator` per key, per-trace statistics (kept
   rows, cycles, baselines from the per-token statistics) and, optionally, per-row phases.
2. :func:`merge_credit` over all units (any order, any tree), then weights
   (:mod:`pipelines.engines.weights`), then :func:`score_unit` per unit with the
   broadcast weights: the unit's response rows.

Model rows come from :class:`~pipelines.engines.tally.ModelTally` values and the neuron
rows from the merged credit. Nothing here imports an engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nex_transforms import Aggregates, CreditAccumulator, analyse, good_mass_fraction
from nex_transforms.baselines import response_baselines
from nex_transforms.diagnostics import distinct_neurons, late_novelty, pool_coverage

from .. import tables
from ..store.reader import WorkUnit, read_unit
from .plan import GLOBAL_KEY, EngineError, RunPlan, ScoreConfig, calibration_keys
from .tally import merge_tallies, tally_responses
from .weights import dense_weights, weights_for_keys


@dataclass(frozen=True)
class UnitResult:
    """What :func:`analyse_unit` returns for one unit.

    Attributes:
        unit: the work unit.
        credit: calibration key -> credit of the unit's traces of that key.
        stats: per-trace columns (unit order): identity, counts, cycles, baselines.
        phases: per kept row columns, or None when phases were not asked for.
        aggregates: the unit's whole-response aggregates, or None (what
            :func:`analyse_unit` returns): :func:`score_unit` reads them again, so no
            engine holds every unit's aggregates until scoring.
    """

    unit: WorkUnit
    credit: dict
    stats: dict
    phases: dict | None
    aggregates: Aggregates | None = None


def _key_groups(config: ScoreConfig, model_ids: list) -> dict:
    """Calibration key -> trace positions (ascending), keys in first-seen order."""
    groups: dict[str, list[int]] = {}
    for position, model in enumerate(model_ids):
        groups.setdefault(config.key_of(model), []).append(position)
    return {key: np.asarray(idx, np.int64) for key, idx in groups.items()}


def analyse_unit(store, unit: WorkUnit, config: ScoreConfig) -> UnitResult:
    """Read and analyse one unit: credit per calibration key, per-trace statistics and
    (optionally) phases. Pure apart from reading the store."""
    corpus, token_stats = read_unit(store, unit)
    n = unit.n_traces
    counts = {name: np.zeros(n, np.int64) for name in
              ("n_kept_rows", "n_explore_rows", "n_cycles", "n_effective_cycles",
               "n_redundant_cycles")}
    late = np.full(n, np.nan)
    credit = {}
    phase_parts = []
    for key, positions in _key_groups(config, unit.meta["model_id"]).items():
        sub = corpus if positions.size == n else corpus.select(positions)
        analysis = analyse(sub, config.params)
        c = analysis.credit
        counts["n_kept_rows"][positions] = analysis.kept_row_counts
        counts["n_explore_rows"][positions] = c.trace_explore_rows
        counts["n_cycles"][positions] = c.trace_cycles
        counts["n_effective_cycles"][positions] = c.trace_effective
        counts["n_redundant_cycles"][positions] = c.trace_redundant
        late[positions] = late_novelty(analysis.rows, analysis.novelty)
        if config.calibration != "weights":
            credit[key] = CreditAccumulator.empty().add_analysis(analysis)
        if config.phases:
            phase_parts.append(tables.phase_part(positions, sub.trace_row_ptr, analysis))
    stats = {name: unit.meta[name] for name in ("trace_id", "prompt_id", "model_id")}
    stats["sample_index"] = np.asarray(unit.meta["sample_index"], np.int64)
    stats["n_rows"] = np.asarray(unit.meta["n_rows"], np.int64)
    stats["response_tokens"] = np.asarray(unit.meta["response_tokens"], np.int64)
    stats.update(counts)
    stats["late_novelty"] = late
    stats.update(response_baselines(token_stats))
    phases = None
    if config.phases:
        phases = tables.phase_columns(unit.meta["trace_id"], unit.meta["model_id"],
                                      phase_parts)
    return UnitResult(unit, credit, stats, phases)  # aggregates are read again to score


def merge_credit(parts) -> dict:
    """Merge per-key credit dicts (from units or earlier merges) into one dict."""
    grouped: dict[str, list[CreditAccumulator]] = {}
    for part in parts:
        for key, acc in part.items():
            grouped.setdefault(key, []).append(acc)
    return {key: CreditAccumulator.merge_all(accs) for key, accs in sorted(grouped.items())}


def plan_weights(plan: RunPlan, credit: dict | None) -> dict:
    """The weights every unit is scored with: learned per key, or the given ones.

    A model whose traces gave no credit at all gets all-zero weights (its GMFs are 0)."""
    if plan.fixed_weights is not None:
        return {GLOBAL_KEY: plan.fixed_weights}
    return weights_for_keys(credit or {}, plan.config.params, calibration_keys(plan))


def score_unit(store, result: UnitResult, weights: dict, config: ScoreConfig) -> dict:
    """Response rows of one analysed unit: its statistics plus the GMF of every trace,
    scored with the weights of the trace's calibration key (``{key: SparseWeights}``)."""
    unit = result.unit
    aggregates = result.aggregates
    if aggregates is None:
        aggregates, _ = read_unit(store, unit, aggregates_only=True)
    gmf = np.full(unit.n_traces, np.nan)
    for key, positions in _key_groups(config, unit.meta["model_id"]).items():
        if key not in weights:
            raise EngineError(f"weights: expected a vector for calibration key {key!r}, "
                              f"got keys {sorted(weights)[:5]}")
        sub = aggregates if positions.size == unit.n_traces else aggregates.select(positions)
        gmf[positions] = good_mass_fraction(sub, dense_weights(weights[key]))
    rows = dict(result.stats)
    rows["gmf"] = gmf
    distinct = distinct_neurons(aggregates)
    hooked = np.asarray(unit.meta["hooked_neurons"], np.int64)
    rows["distinct_neurons"] = distinct
    rows["hooked_neurons"] = hooked
    rows["pool_coverage"] = pool_coverage(distinct, hooked)
    return rows


class CreditMerger:
    """Credit merged as unit results arrive: at most ``block`` per-unit dicts are held
    before they are merged into one (memory bounded by the credited keys, not by the
    number of units)."""

    def __init__(self, block: int = 16) -> None:
        self.block = block
        self._pending: list[dict] = []

    def add(self, credit: dict) -> None:
        self._pending.append(credit)
        if len(self._pending) >= self.block:
            self._pending = [merge_credit(self._pending)]

    def result(self) -> dict:
        return merge_credit(self._pending)


def write_tables(staging: Path, plan: RunPlan, response_rows, credit: dict | None,
                 weights: dict) -> dict:
    """Write the responses, models and neurons tables of a run into ``staging``.

    ``response_rows`` is an iterable of per-unit response row dicts (unit order): each is
    appended to ``responses.parquet`` and tallied as it arrives, so only one unit's rows
    are in memory at a time. Returns counts for the run summary.
    """
    config = plan.config
    unit_tallies: list = []
    n_responses = 0
    with tables.TableWriter(staging, "responses") as responses:
        for rows in response_rows:
            responses.write(rows)
            unit_tallies.append(tally_responses(rows, config.params.min_rows))
            n_responses += len(rows["trace_id"])
    tallies = merge_tallies(unit_tallies)
    tables.write_table(tables.table_path(staging, "models"),
                       tables.to_table("models", tables.model_columns(tallies, weights, config)))
    n_neurons = 0
    with tables.TableWriter(staging, "neurons") as neurons:
        for key in sorted(weights):
            columns = tables.neuron_columns(key, weights[key], (credit or {}).get(key))
            neurons.write(columns)
            n_neurons += len(columns["key"])
    return {"responses": n_responses, "neurons": n_neurons}


__all__ = ["CreditMerger", "UnitResult", "analyse_unit", "merge_credit", "plan_weights",
           "score_unit", "write_tables"]
