"""Regime diagnostics: late novelty and pool coverage (nex_transforms.diagnostics)."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from nex_transforms import RowCorpus, analyse
from nex_transforms.diagnostics import (distinct_neurons, late_novelty, median_over,
                                        pool_coverage)
from pipelines.rows_cache import read_rows_cache

from .test_core_properties import small_corpus


def corpus_of(traces):
    """A corpus from ``traces``: a list of responses, each a list of rows (lists of keys),
    every entry of mass 1 and every row 4 tokens."""
    trace_ptr, row_ptr, keys = [0], [0], []
    for rows in traces:
        for row in rows:
            keys.extend(row)
            row_ptr.append(len(keys))
        trace_ptr.append(trace_ptr[-1] + len(rows))
    n_rows = len(row_ptr) - 1
    return RowCorpus(np.array(trace_ptr), np.array(row_ptr), np.full(n_rows, 4, np.int64),
                     np.array(keys, np.uint32), np.ones(len(keys), np.float32))


def late(corpus):
    analysis = analyse(corpus)
    return late_novelty(analysis.rows, analysis.novelty)


def test_late_rows_that_repeat_earlier_neurons_give_zero():
    rows = [[1, 2, 3], [4, 5], [6, 7], [1, 4], [2, 6, 7]]  # R = 5: the last row is late
    assert late(corpus_of([rows])).tolist() == [0.0]


def test_all_new_rows_give_one():
    rows = [[10 * r + i for i in range(4)] for r in range(12)]  # R = 12: 3 late rows
    assert late(corpus_of([rows])).tolist() == [1.0]


def test_partly_new_late_rows_and_the_late_window():
    # R = 6 -> ceil(6/5) = 2 late rows: [1, 9] (9 new) and [2, 3, 8, 7] (8, 7 new) -> 3/6
    rows = [[1, 2], [3], [4], [5], [1, 9], [2, 3, 7, 8]]
    assert late(corpus_of([rows])).tolist() == [0.5]


def test_too_few_rows_give_nan_and_traces_stay_apart():
    short = [[1], [2]]
    repeat = [[1], [2], [1, 2]]
    fresh = [[1], [2], [3]]
    out = late(corpus_of([short, repeat, fresh, []]))
    assert math.isnan(out[0]) and out[1] == 0.0 and out[2] == 1.0 and math.isnan(out[3])


def test_the_published_reference_example(reference_dir):
    corpus = read_rows_cache(reference_dir / "example_cache")
    assert round(float(late(corpus)[0]), 5) == 0.05542
    distinct = distinct_neurons(corpus.aggregate())
    assert distinct.tolist() == [3514]
    coverage = pool_coverage(distinct, 36 * 9728)
    assert round(float(coverage[0]), 4) == 0.0100


def test_distinct_neurons_leave_out_padding_keys():
    padding = (255 << 16) | 7
    corpus = corpus_of([[[1, 2], [2, padding]], [[3]]])
    assert distinct_neurons(corpus.aggregate()).tolist() == [2, 1]


def test_pool_coverage_unknown_pool_is_nan():
    assert np.isnan(pool_coverage(np.array([3, 4]), None)).all()
    assert np.isnan(pool_coverage(np.array([3]), 0)).all()
    assert pool_coverage(np.array([3, 4]), 8).tolist() == [0.375, 0.5]


def test_median_over_ignores_nan():
    assert median_over([np.nan, 1.0, 3.0, 2.0]) == 2.0
    assert math.isnan(median_over([np.nan]))
    assert math.isnan(median_over([]))


def late_by_sets(corpus):
    """Oracle: late novelty by plain sets over the sanitised rows, trace by trace."""
    analysis = analyse(corpus)
    rows = analysis.rows
    out = []
    for t in range(corpus.n_traces):
        a, b = int(rows.trace_ptr[t]), int(rows.trace_ptr[t + 1])
        n = b - a
        if n < 3:
            out.append(math.nan)
            continue
        first_late = n - math.ceil(n / 5)
        seen, new, total = set(), 0, 0
        for i, r in enumerate(range(a, b)):
            keys = set(rows.keys[rows.entry_ptr[r]:rows.entry_ptr[r + 1]].tolist())
            if i >= first_late:
                new += len(keys - seen)
                total += len(keys)
            seen |= keys
        out.append(new / total)
    return out


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31 - 1), st.booleans())
def test_late_novelty_matches_plain_sets(seed, bad):
    corpus = small_corpus(seed, n_traces=5, max_rows=14, key_pool=12, dupes=True, bad=bad)
    np.testing.assert_array_equal(late(corpus), np.array(late_by_sets(corpus), float))


def test_pool_coverage_per_trace_pools():
    out = pool_coverage(np.array([2, 3, 4]), np.array([8, 0, 16]))
    assert out[0] == 0.25 and np.isnan(out[1]) and out[2] == 0.25
