"""Novelty: keys a row shows for the first time in its response (METHOD.md section 2)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .corpus import KeptRows
from .params import KEY_SPACE


@dataclass(frozen=True)
class Novelty:
    """Per-row and per-entry novelty of a set of kept rows.

    Attributes:
        new_counts: ``|N_r|`` per kept row (distinct keys first seen in that row).
        slopes: novelty slope ``s_r = |N_r| / tokens(r)`` per kept row.
        first_row: per entry, the kept-row index where its key first appeared in the trace.
        is_new: per entry, whether this entry is in its key's first row (``key in N_r``).
    """

    new_counts: np.ndarray
    slopes: np.ndarray
    first_row: np.ndarray
    is_new: np.ndarray


def novelty(rows: KeptRows) -> Novelty:
    """Compute novelty for every kept row of every trace at once.

    Keys are "seen" per response, with no window: every key present in an earlier kept row
    of the same trace is not new. Uses one stable sort of ``(trace, key)`` over the
    concatenated entries (entries are in row order, so the first of each group is the
    first occurrence).
    """
    entry_row = rows.entry_row()
    row_trace = rows.row_trace()
    n_rows = rows.n_rows
    if rows.keys.size == 0:
        empty = np.zeros(0, np.int64)
        return Novelty(np.zeros(n_rows, np.int64), np.zeros(n_rows), empty,
                       np.zeros(0, bool))
    combined = row_trace[entry_row].astype(np.int64) * KEY_SPACE + rows.keys.astype(np.int64)
    order = np.argsort(combined, kind="stable")
    sorted_combined = combined[order]
    group_start = np.ones(order.size, dtype=bool)
    group_start[1:] = sorted_combined[1:] != sorted_combined[:-1]
    group = np.cumsum(group_start) - 1
    first_row_of_group = entry_row[order[group_start]]
    first_row = np.empty(order.size, np.int64)
    first_row[order] = first_row_of_group[group]
    is_new = first_row == entry_row
    new_counts = np.bincount(entry_row[order[group_start]], minlength=n_rows)
    slopes = new_counts / rows.row_tokens
    return Novelty(new_counts, slopes, first_row, is_new)
