"""Score tables: the columns of the models, neurons and phases tables, computed from a
run's tallies, weights, credit and core analyses."""

from __future__ import annotations

import math

import numpy as np

from nex_transforms import log_gap
from nex_transforms.baselines import BASELINES
from nex_transforms.params import UNIT_BITS

from .schemas import TablesError


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



__all__ = ["concat_columns", "model_columns", "neuron_columns", "phase_columns", "phase_part"]
