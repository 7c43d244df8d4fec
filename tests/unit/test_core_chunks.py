"""Chunked per-entry passes: any chunk size gives the same answers, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nex_transforms import (Aggregates, NexParams, accumulate, analyse, good_mass_fraction)
from nex_transforms import segments
from nex_transforms.segments import chunks
from tests.unit.test_core_properties import small_corpus


@given(st.lists(st.integers(0, 9), max_size=30), st.integers(1, 12))
def test_chunks_cover_every_segment_in_order(lengths, size):
    ptr = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    got = chunks(ptr, size)
    if not lengths:
        assert got == []
        return
    assert got[0][0] == 0 and got[-1][1] == len(lengths)
    assert all(a < b for a, b in got)
    assert all(got[i][1] == got[i + 1][0] for i in range(len(got) - 1))
    for a, b in got:  # at most `size` entries unless one long segment (and empty ones)
        assert ptr[b] - ptr[a] <= size or np.count_nonzero(np.diff(ptr[a:b + 1])) == 1


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([1, 3, 17, 1 << 16]))
def test_gmf_is_the_same_for_any_chunk_size(seed, size):
    corpus = small_corpus(seed, n_traces=9, bad=True)
    aggregates = corpus.aggregate()
    # corrupt a few aggregate masses and add layer-255 keys, as a store could hold
    rng = np.random.default_rng(seed)
    masses = aggregates.masses.astype(np.float32)
    if masses.size:
        masses[rng.integers(0, masses.size, 2)] = [np.nan, -2.0]
    keys = aggregates.keys.copy()
    if keys.size:
        keys[rng.integers(0, keys.size)] = (255 << 16) | 5
    aggregates = Aggregates(aggregates.row_ptr, keys, masses)
    weights = np.zeros(1 << 22, np.float32)
    weights[:1 << 19] = rng.uniform(-1, 1, 1 << 19).astype(np.float32)
    whole = good_mass_fraction(aggregates, weights)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(segments, "CHUNK_ENTRIES", size)
        chunked = good_mass_fraction(aggregates, weights)
    np.testing.assert_array_equal(chunked, whole)


@pytest.mark.parametrize("size", [5, 64, 1000])
def test_analysis_and_weights_are_the_same_for_any_chunk_size(size):
    corpus = small_corpus(3, n_traces=40, max_rows=12, bad=True)
    params = NexParams()
    whole = accumulate(corpus, params)
    analysis = analyse(corpus, params)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(segments, "CHUNK_ENTRIES", size)
        chunked = accumulate(corpus, params)
        again = analyse(corpus, params)
    np.testing.assert_array_equal(chunked.keys, whole.keys)
    np.testing.assert_array_equal(chunked.effective, whole.effective)
    np.testing.assert_array_equal(chunked.redundant, whole.redundant)
    for name in ("new_counts", "first_row", "is_new"):
        np.testing.assert_array_equal(getattr(again.novelty, name),
                                      getattr(analysis.novelty, name))
    np.testing.assert_array_equal(again.rows.row_mass, analysis.rows.row_mass)
    np.testing.assert_array_equal(again.rows.masses, analysis.rows.masses)
