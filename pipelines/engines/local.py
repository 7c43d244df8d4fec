"""The local engine: every work unit in a loop in this process (the reference engine)."""

from __future__ import annotations

from pathlib import Path

from .analysis import analyse_unit, merge_credit, plan_weights, score_unit, write_results
from .plan import EngineError, RunPlan, open_store


def compute(plan: RunPlan):
    """Analyse, merge, learn and score every unit in order.

    Returns ``(credit, weights, response_parts, phase_parts)`` (parts in unit order).
    """
    config = plan.config
    store = open_store(config.store)
    results = [analyse_unit(store, unit, config) for unit in plan.units]
    credit = merge_credit(r.credit for r in results) if plan.fixed_weights is None else None
    weights = plan_weights(plan, credit)
    responses = [score_unit(store, r, weights, config) for r in results]
    phases = [r.phases for r in results] if config.phases else None
    return credit, weights, responses, phases


def run(plan: RunPlan, staging: Path, options: dict) -> dict:
    """Score the plan in-process and write the tables into ``staging``."""
    if options:
        raise EngineError(f"local engine options: expected none, got {sorted(options)}")
    credit, weights, responses, phases = compute(plan)
    counts = write_results(staging, plan, responses, credit, weights, phases)
    return {"runner": "in-process loop", "workers": 1, **counts}
