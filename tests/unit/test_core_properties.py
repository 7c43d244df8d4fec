"""Properties of the core: novelty, sanitising, the credit monoid, GMF, order invariance."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nex_transforms import (Aggregates, CorpusError, CreditAccumulator, NexParams,
                            ParameterError, RowCorpus, WeightsError, accumulate, analyse,
                            concat_corpora, good_mass_fraction, kept_rows, learn_weights,
                            nex_score, novelty, score_corpus)
from nex_transforms.corpus import rows_sorted_unique
from nex_transforms.novelty import (PER_TRACE_ENTRIES, _first_rows_grouped,
                                    _first_rows_per_trace, first_rows)
from pipelines.testing.corpora import SyntheticSpec, synthetic_corpus


def small_corpus(seed, n_traces=4, max_rows=7, key_pool=30, dupes=False, bad=False):
    rng = np.random.default_rng(seed)
    trace_ptr, row_ptr, tokens, keys, masses = [0], [0], [], [], []
    for _ in range(n_traces):
        n_rows = int(rng.integers(0, max_rows + 1))
        for _ in range(n_rows):
            k = int(rng.integers(0, 8))
            row = rng.choice(key_pool, size=k, replace=dupes)
            layer = rng.integers(0, 3, size=k)
            if bad and k:
                layer[0] = 255 if rng.random() < 0.5 else layer[0]
            keys.extend(((layer << 16) | row).tolist())
            m = rng.exponential(1.0, size=k)
            if bad and k:
                m[-1] = rng.choice([np.nan, np.inf, -1.0, 0.0])
            masses.extend(m.tolist())
            row_ptr.append(row_ptr[-1] + k)
            tokens.append(int(rng.integers(0 if bad else 1, 33)))
        trace_ptr.append(trace_ptr[-1] + n_rows)
    return RowCorpus(np.array(trace_ptr), np.array(row_ptr), np.array(tokens, np.int64),
                     np.array(keys, np.uint32), np.array(masses, np.float32))


def novelty_by_sets(corpus, min_rows=3):
    """Per kept row: (trace, corpus row index, |N_r|, slope), by plain sets."""
    out = []
    for t in range(corpus.n_traces):
        rows = []
        for i in range(corpus.trace_row_ptr[t], corpus.trace_row_ptr[t + 1]):
            a, b = corpus.row_entry_ptr[i], corpus.row_entry_ptr[i + 1]
            keys = corpus.keys[a:b]
            m = corpus.masses[a:b].astype(np.float64)
            live = (keys >> 16) != 255
            m = np.maximum(np.where(np.isfinite(m), m, 0.0), 0.0)[live]
            keys = keys[live]
            if keys.size == 0 or m.sum() <= 0 or corpus.row_tokens[i] <= 0:
                continue
            rows.append((i, set(keys.tolist()), int(corpus.row_tokens[i])))
        if len(rows) < min_rows:
            continue
        seen = set()
        for i, ks, tok in rows:
            new = ks - seen
            seen |= ks
            out.append((t, i, len(new), len(new) / tok))
    return out


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 10**6), dupes=st.booleans(), bad=st.booleans())
def test_novelty_matches_sets(seed, dupes, bad):
    corpus = small_corpus(seed, dupes=dupes, bad=bad)
    rows = kept_rows(corpus, 3)
    nov = novelty(rows)
    want = novelty_by_sets(corpus)
    assert rows.row_index.tolist() == [w[1] for w in want]
    assert nov.new_counts.tolist() == [w[2] for w in want]
    np.testing.assert_allclose(nov.slopes, [w[3] for w in want])
    assert rows_sorted_unique(rows.keys, rows.entry_ptr)


def first_rows_by_loop(rows):
    """Per entry, the first kept row of its trace holding its key, by a plain dict."""
    out = []
    for t in range(rows.trace_ptr.size - 1):
        seen = {}
        for r in range(rows.trace_ptr[t], rows.trace_ptr[t + 1]):
            for key in rows.keys[rows.entry_ptr[r]:rows.entry_ptr[r + 1]].tolist():
                out.append(seen.setdefault(key, r))
    return out


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), n_traces=st.integers(1, 9), key_pool=st.integers(2, 40))
def test_both_first_row_paths_match_a_loop(seed, n_traces, key_pool):
    rows = kept_rows(small_corpus(seed, n_traces=n_traces, max_rows=9, key_pool=key_pool,
                                  dupes=True), 1)
    entry_row = rows.entry_row()
    bounds = rows.entry_ptr[rows.trace_ptr]
    want = first_rows_by_loop(rows)
    per_trace = np.empty(rows.keys.size, np.int32)
    _first_rows_per_trace(rows.keys, entry_row, bounds, per_trace)
    grouped = np.empty(rows.keys.size, np.int32)
    _first_rows_grouped(rows.keys, entry_row, bounds, grouped, None)
    assert per_trace.tolist() == want
    assert grouped.tolist() == want
    assert first_rows(rows.keys, entry_row, rows.entry_ptr, rows.trace_ptr).tolist() == want


def test_first_rows_of_long_traces_take_the_per_trace_path(synthetic):
    rows = kept_rows(synthetic, 3)
    assert rows.keys.size >= PER_TRACE_ENTRIES * (rows.trace_ptr.size - 1)
    nov = novelty(rows)
    entry_row = nov.entry_row
    bounds = rows.entry_ptr[rows.trace_ptr]
    grouped = np.empty(rows.keys.size, np.int32)
    _first_rows_grouped(rows.keys, entry_row, bounds, grouped, None)
    np.testing.assert_array_equal(nov.first_row, grouped)


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 10**6))
def test_analysis_never_breaks_on_messy_input(seed):
    corpus = small_corpus(seed, n_traces=6, max_rows=12, dupes=True, bad=True)
    acc = accumulate(corpus)
    weights = acc.finalize()
    # tanh is < 1 in exact arithmetic; large credit ratios round to +-1.0 in float32
    assert np.all(np.abs(weights) <= 1)
    gmf = score_corpus(corpus, weights).gmf
    assert gmf.shape == (corpus.n_traces,)
    finite = gmf[np.isfinite(gmf)]
    assert np.all((finite >= 0) & (finite <= 1))


@pytest.fixture(scope="module")
def synthetic():
    return synthetic_corpus(SyntheticSpec(n_traces=60, keys_per_row=80, seed=7))


@settings(max_examples=15, deadline=None)
@given(cuts=st.lists(st.integers(1, 59), max_size=5, unique=True), seed=st.integers(0, 99))
def test_any_split_and_merge_order_gives_the_same_weights(synthetic, cuts, seed):
    whole = accumulate(synthetic)
    bounds = [0, *sorted(cuts), synthetic.n_traces]
    parts = [CreditAccumulator.empty().add(synthetic.slice_traces(a, b))
             for a, b in zip(bounds[:-1], bounds[1:])]
    rng = np.random.default_rng(seed)
    rng.shuffle(parts)
    merged = CreditAccumulator.empty()
    for part in parts:
        merged = part.merge(merged) if rng.random() < 0.5 else merged.merge(part)
    assert merged.keys.tolist() == whole.keys.tolist()
    np.testing.assert_allclose(merged.effective, whole.effective, rtol=1e-12, atol=0)
    np.testing.assert_allclose(merged.redundant, whole.redundant, rtol=1e-12, atol=0)
    np.testing.assert_allclose(merged.finalize(), whole.finalize(), atol=1e-6)
    assert (merged.n_traces, merged.n_cycles, merged.n_effective) == \
        (whole.n_traces, whole.n_cycles, whole.n_effective)


def test_monoid_laws(synthetic):
    a = CreditAccumulator.empty().add(synthetic.slice_traces(0, 20))
    b = CreditAccumulator.empty().add(synthetic.slice_traces(20, 40))
    c = CreditAccumulator.empty().add(synthetic.slice_traces(40, 60))
    e = CreditAccumulator.empty()
    for x, y in [(a.merge(e), a), (e.merge(a), a), (a.merge(b), b.merge(a)),
                 (a.merge(b).merge(c), a.merge(b.merge(c)))]:
        assert x.keys.tolist() == y.keys.tolist()
        np.testing.assert_allclose(x.effective, y.effective, rtol=1e-12)
        np.testing.assert_allclose(x.redundant, y.redundant, rtol=1e-12)
    arrays = {k: v.copy() for k, v in a.to_arrays().items()}
    restored = CreditAccumulator.from_arrays(arrays)
    assert restored.keys.tolist() == a.keys.tolist()
    assert restored.effective.tolist() == a.effective.tolist()
    assert restored.redundant.tolist() == a.redundant.tolist()
    assert (restored.n_traces, restored.n_analysed, restored.n_cycles, restored.n_effective,
            restored.n_redundant) == (a.n_traces, a.n_analysed, a.n_cycles, a.n_effective,
                                      a.n_redundant)


def test_scores_invariant_to_corpus_order(synthetic):
    rng = np.random.default_rng(3)
    perm = rng.permutation(synthetic.n_traces)
    shuffled = synthetic.select(perm)
    w1, w2 = learn_weights(synthetic), learn_weights(shuffled)
    np.testing.assert_allclose(w1, w2, atol=1e-6)
    g1 = score_corpus(synthetic, w1).gmf
    g2 = score_corpus(shuffled, w2).gmf
    np.testing.assert_allclose(g1[perm], g2, atol=1e-9)


def test_batch_size_does_not_change_weights(synthetic):
    w_small = learn_weights(synthetic, batch_entries=5_000)
    w_big = learn_weights(synthetic, batch_entries=10**9)
    np.testing.assert_allclose(w_small, w_big, atol=1e-6)


def test_concat_and_select_round_trip(synthetic):
    parts = [synthetic.select(np.arange(0, 25)), synthetic.select(np.arange(25, 60))]
    joined = concat_corpora(parts)
    for name in ("trace_row_ptr", "row_entry_ptr", "row_tokens", "keys", "masses"):
        assert np.array_equal(getattr(joined, name), getattr(synthetic, name))
    assert np.array_equal(joined.aggregate().keys, synthetic.aggregate().keys)


def test_gmf_rules():
    weights = np.zeros(1 << 22, np.float32)
    weights[1], weights[2], weights[3] = 0.5, -0.25, 0.0
    agg = Aggregates(np.array([0, 2, 3, 3, 5]),
                     np.array([1, 2, 3, 1, (255 << 16) | 1], np.uint32),
                     np.array([2.0, 4.0, 7.0, np.nan, 1.0], np.float32))
    gmf = good_mass_fraction(agg, weights)
    assert gmf[0] == pytest.approx(1.0 / (1.0 + 1.0))  # 2*.5 / (2*.5 + 4*.25)
    assert gmf[1] == 0.0  # keys with zero weight: denominator 0
    assert np.isnan(gmf[2])  # empty response
    assert gmf[3] == 0.0  # NaN mass -> 0; the layer-255 key is dropped
    assert nex_score(gmf) == pytest.approx(np.nanmean(gmf))
    assert np.isnan(nex_score(np.array([np.nan])))


def test_weight_validation():
    agg = Aggregates(np.array([0, 1]), np.array([1], np.uint32), np.array([1.0]))
    with pytest.raises(WeightsError, match="length 2\\^22"):
        good_mass_fraction(agg, np.zeros(10))
    bad = np.zeros(1 << 22)
    bad[5] = np.nan
    with pytest.raises(WeightsError, match="finite"):
        good_mass_fraction(agg, bad)


@pytest.mark.parametrize("kwargs, match", [
    (dict(trace_row_ptr=[0, 3], row_entry_ptr=[0, 1, 0, 1], row_tokens=[1, 1, 1],
          keys=[1], masses=[1.0]), "non-decreasing"),
    (dict(trace_row_ptr=[0, 1], row_entry_ptr=[0, 5], row_tokens=[1], keys=[1],
          masses=[1.0]), "the length it indexes"),
    (dict(trace_row_ptr=[0, 2], row_entry_ptr=[0, 1], row_tokens=[1], keys=[1],
          masses=[1.0]), "trace_row_ptr"),
    (dict(trace_row_ptr=[0, 1], row_entry_ptr=[0, 1], row_tokens=[1],
          keys=[70 << 16], masses=[1.0]), "2\\^22"),
    (dict(trace_row_ptr=[0, 1], row_entry_ptr=[0, 1], row_tokens=[1, 2], keys=[1],
          masses=[1.0]), "row_tokens"),
    (dict(trace_row_ptr=[1, 1], row_entry_ptr=[0, 1], row_tokens=[1], keys=[1],
          masses=[1.0]), "expected 0"),
])
def test_corpus_validation(kwargs, match):
    with pytest.raises(CorpusError, match=match):
        RowCorpus(**{k: np.asarray(v) for k, v in kwargs.items()})


def test_layer_255_keys_are_allowed_and_dropped():
    corpus = RowCorpus(np.array([0, 3]), np.array([0, 2, 3, 4]), np.array([32, 32, 10]),
                       np.array([(255 << 16) | 9, 5, 6, 7], np.uint32),
                       np.array([1.0, 1.0, 1.0, 1.0], np.float32))
    rows = kept_rows(corpus, 3)
    assert rows.keys.tolist() == [5, 6, 7]


@pytest.mark.parametrize("kwargs", [dict(rho=1.0), dict(rho=0.2), dict(min_run=0),
                                    dict(min_run=1.5), dict(eps=0.0), dict(eps=float("nan")),
                                    dict(fit_hmm="yes"), dict(gmm_max_iter=True)])
def test_params_are_validated(kwargs):
    with pytest.raises(ParameterError):
        NexParams(**kwargs)


def test_params_round_trip():
    params = NexParams(rho=0.9, min_run=3, fit_hmm=True)
    assert NexParams.from_dict(params.to_dict()) == params
    with pytest.raises(ParameterError, match="unknown|subset"):
        NexParams.from_dict({"nope": 1})


def test_fit_hmm_extension_runs_and_changes_little(synthetic):
    base = analyse(synthetic)
    ext = analyse(synthetic, NexParams(fit_hmm=True))
    agree = (base.segmentation.explore == ext.segmentation.explore).mean()
    assert agree > 0.8
    weights = learn_weights(synthetic, NexParams(fit_hmm=True))
    assert np.isfinite(score_corpus(synthetic, weights).nex)
