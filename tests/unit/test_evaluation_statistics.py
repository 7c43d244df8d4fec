"""Best-of-N, votes, AUROC, bootstrap, rank correlations and bins against independent
computations: enumeration of subsets, scikit-learn, scipy, plain loops."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs
from scipy import stats
from sklearn.metrics import roc_auc_score

from pipelines.evaluation import statistics as st


def brute_best_of_n(scores, correct, n):
    """Mean over every n-subset of the correctness of its best response, ties split
    evenly (every tie-break order enumerated)."""
    values = []
    for subset in itertools.combinations(range(len(scores)), n):
        keyed = [(-np.inf if not np.isfinite(scores[i]) else scores[i]) for i in subset]
        best = max(keyed)
        tied = [subset[k] for k, v in enumerate(keyed) if v == best]
        values.append(np.mean([correct[i] for i in tied]))
    return float(np.mean(values))


@settings(max_examples=60, deadline=None)
@given(hs.lists(hs.tuples(hs.sampled_from([0.1, 0.2, 0.3, 0.5, np.nan, 0.9]),
                          hs.sampled_from([0.0, 1.0])), min_size=1, max_size=8),
       hs.data())
def test_best_of_n_equals_enumeration(pairs, data):
    scores = [p[0] for p in pairs]
    correct = [p[1] for p in pairs]
    n = data.draw(hs.integers(1, len(pairs)))
    assert st.best_of_n_expected(scores, correct, n) == pytest.approx(
        brute_best_of_n(scores, correct, n), abs=1e-12)


def test_best_of_n_hand_example():
    # 4 responses, best (0.9) wrong, second (0.8) right
    scores, correct = [0.9, 0.8, 0.1, 0.2], [0, 1, 0, 1]
    assert st.best_of_n_expected(scores, correct, 1) == 0.5
    # N = 4: always the 0.9 one, wrong
    assert st.best_of_n_expected(scores, correct, 4) == 0.0
    # N = 2: subsets {0.8,0.1},{0.8,0.2},{0.1,0.2} pick right; 3 of 6
    assert st.best_of_n_expected(scores, correct, 2) == 0.5
    with pytest.raises(ValueError):
        st.best_of_n_expected(scores, correct, 5)


def test_pass_at_n_against_enumeration():
    correct = [0, 1, 0, 0, 1]
    for n in range(1, 6):
        subsets = list(itertools.combinations(correct, n))
        assert st.pass_at_n(correct, n) == pytest.approx(np.mean([max(s) for s in subsets]))


def test_vote_against_hand_counts():
    answers = ["4", "4", "5", None, "5", "5"]
    correct = [1, 1, 0, 0, 0, 0]
    assert st.vote_pick_correctness(answers, correct) == 0.0  # "5" has 3 votes
    assert st.vote_pick_correctness(answers[:3], correct[:3]) == 1.0
    assert st.vote_pick_correctness(["4", "5"], [1, 0]) == 0.5  # tie
    assert st.vote_pick_correctness([None, None], [0, 0]) == 0.0
    # weighted: GMF weights make "4" win
    assert st.vote_pick_correctness(answers, correct, [0.9, 0.9, 0.1, 0.5, 0.1, np.nan]) == 1.0
    # expectation over subsets, by a plain loop
    n = 3
    manual = np.mean([st.vote_pick_correctness([answers[i] for i in s], [correct[i] for i in s])
                      for s in itertools.combinations(range(6), n)])
    assert st.vote_expected(answers, correct, n) == pytest.approx(manual)
    # sampled when too many subsets: close to the exact value
    assert st.vote_expected(answers, correct, n, max_subsets=3, seed=1) != pytest.approx(-1)
    assert st.vote_expected(answers, correct, n, max_subsets=10) == pytest.approx(manual, abs=0.3)


@settings(max_examples=60, deadline=None)
@given(hs.lists(hs.tuples(hs.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0]), hs.booleans()),
                min_size=2, max_size=30))
def test_auroc_equals_sklearn(pairs):
    scores = np.array([p[0] for p in pairs])
    labels = np.array([p[1] for p in pairs])
    if labels.all() or not labels.any():
        assert np.isnan(st.auroc(scores, labels))
    else:
        assert st.auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auroc_ignores_nan_scores():
    scores = [0.1, np.nan, 0.9, 0.4]
    labels = [False, True, True, False]
    assert st.auroc(scores, labels) == pytest.approx(roc_auc_score([0, 1, 0], [0.1, 0.9, 0.4]))


@settings(max_examples=60, deadline=None)
@given(hs.lists(hs.tuples(hs.integers(0, 4), hs.integers(0, 4)), min_size=3, max_size=15))
def test_rank_correlations_equal_scipy(pairs):
    x = np.array([p[0] for p in pairs], float)
    y = np.array([p[1] for p in pairs], float)
    expected_s = stats.spearmanr(x, y).statistic
    expected_k = stats.kendalltau(x, y).statistic
    for mine, theirs in ((st.spearman(x, y), expected_s), (st.kendall_tau_b(x, y), expected_k)):
        if np.isnan(theirs):
            assert np.isnan(mine)
        else:
            assert mine == pytest.approx(theirs, abs=1e-12)


def test_bootstrap_against_a_plain_loop():
    values = [0.0, 1.0, 1.0, 0.5, 0.25, 1.0, 0.0]
    rng = np.random.default_rng(7)
    means = [np.mean([values[i] for i in rng.integers(0, len(values), size=len(values))])
             for _ in range(500)]
    expected = tuple(np.quantile(means, [0.025, 0.975]))
    assert st.bootstrap_mean_ci(values, n_boot=500, seed=7) == pytest.approx(expected)
    assert st.bootstrap_ci(values, np.mean, n_boot=500, seed=7) == pytest.approx(expected)
    low, high = st.bootstrap_mean_ci(values, n_boot=500, seed=7)
    assert low <= np.mean(values) <= high
    assert np.isnan(st.bootstrap_mean_ci([], seed=0)[0])


def test_binned_accuracy_by_hand():
    proxy = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, np.nan, 0.9]
    correct = [0, 1, 1, 1, 1, 1, 1, 0, 1, 0]
    bins = st.binned_accuracy(proxy, correct, n_bins=3)
    finite = [(p, c) for p, c in zip(proxy, correct) if np.isfinite(p)]
    assert sum(b["count"] for b in bins) == len(finite)
    edges = np.quantile([p for p, _ in finite], [0, 1 / 3, 2 / 3, 1])
    for number, b in enumerate(bins):
        low, high = edges[number], edges[number + 1]
        inside = [(p, c) for p, c in finite
                  if low <= p and (p < high or (number == len(bins) - 1 and p <= high))]
        assert b["count"] == len(inside)
        assert b["accuracy"] == pytest.approx(np.mean([c for _, c in inside]))
    assert st.binned_accuracy([np.nan], [1]) == []


def test_average_ranks_matches_scipy():
    rng = random.Random(3)
    values = [rng.choice([1, 2, 2, 3, 5]) for _ in range(40)]
    assert st.average_ranks(values) == pytest.approx(stats.rankdata(values))
