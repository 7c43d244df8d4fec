"""Regime diagnostics: is a capture in the regime the method assumes?

NEX reads exploration from neurons a response activates for the first time. That needs
responses whose later rows still bring neurons the response has not used yet, drawn from
a neuron pool far larger than what one response uses. Two numbers per response say
whether a capture offers that:

* **late novelty**: over the last ``ceil(R / 5)`` kept rows of a response with ``R >= 3``
  kept rows, the (row, neuron) entries whose neuron appears in no earlier kept row of the
  response, divided by all (row, neuron) entries of those rows. Near 0 means late rows only
  repeat neurons already used, so the novelty series the HMM segments is mostly noise.
* **pool coverage**: distinct neurons of a response divided by the neurons the capture
  hooked (layers x MLP width). Near 1 means a response uses up the pool, so nothing can be
  new for long.

Both are computed from the same sanitised rows the method analyses (:func:`~.kept_rows`)
and are reduced per model by the median over responses (:func:`median_over`).
"""

from __future__ import annotations

import numpy as np

from .corpus import Aggregates, KeptRows, live_entries
from .novelty import Novelty

#: Responses with fewer kept rows have no late novelty (NaN).
LATE_MIN_ROWS = 3
#: The late rows are the last ``ceil(R / LATE_FRACTION)`` kept rows of a response.
LATE_FRACTION = 5


def late_novelty(rows: KeptRows, nov: Novelty) -> np.ndarray:
    """Late novelty of every trace (float64, NaN for a trace with fewer than 3 kept rows).

    Args:
        rows: the kept rows of a batch of traces (``TraceAnalysis.rows``).
        nov: their novelty (``TraceAnalysis.novelty``); ``nov.new_counts[r]`` is the
            number of entries of kept row ``r`` whose key no earlier kept row of the
            trace holds (keys are unique within a kept row).
    """
    trace_ptr = np.asarray(rows.trace_ptr, np.int64)
    n_traces = trace_ptr.size - 1
    kept = np.diff(trace_ptr)
    late = -(-kept // LATE_FRACTION)  # ceil(R / 5)
    row_trace = np.repeat(np.arange(n_traces), kept)
    position = np.arange(rows.n_rows) - trace_ptr[:-1][row_trace]
    in_late = position >= (kept - late)[row_trace]
    entries = np.diff(rows.entry_ptr)
    new = np.bincount(row_trace[in_late], weights=nov.new_counts[in_late],
                      minlength=n_traces)
    total = np.bincount(row_trace[in_late], weights=entries[in_late], minlength=n_traces)
    out = np.full(n_traces, np.nan)
    ok = (kept >= LATE_MIN_ROWS) & (total > 0)
    out[ok] = new[ok] / total[ok]
    return out


def distinct_neurons(aggregates: Aggregates) -> np.ndarray:
    """Distinct neurons of every trace (int64): the keys of its whole-response aggregate,
    layer-255 (padding) keys left out. The aggregate holds every key of the response's
    rows once, so this is the size of the union of its rows' keys."""
    counts = np.diff(np.asarray(aggregates.row_ptr, np.int64))
    live = live_entries(aggregates.keys)
    if live is None:
        return counts
    trace = np.repeat(np.arange(counts.size), counts)
    return np.bincount(trace[live], minlength=counts.size).astype(np.int64)


def pool_coverage(distinct, hooked_neurons) -> np.ndarray:
    """Distinct neurons of each trace over the neurons hooked: ``hooked_neurons`` is one
    count for every trace or one per trace; NaN where it is unknown (None, or not positive).
    """
    distinct = np.asarray(distinct, np.float64)
    if hooked_neurons is None:
        return np.full(distinct.shape, np.nan)
    hooked = np.broadcast_to(np.asarray(hooked_neurons, np.float64), distinct.shape)
    out = np.full(distinct.shape, np.nan)
    known = hooked > 0
    out[known] = distinct[known] / hooked[known]
    return out


def median_over(values) -> float:
    """Median of the finite values (NaN when none): the model-level reduction."""
    values = np.asarray(values, np.float64)
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else float("nan")
