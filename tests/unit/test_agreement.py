"""The batched core against the straightforward per-trace implementation.

The straightforward version (tests/reference/straightforward.py) uses scikit-learn's
GaussianMixture and hmmlearn's GaussianHMM one trace at a time, as METHOD.md describes.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from nex_transforms import analyse, learn_weights, score_corpus
from pipelines.testing.corpora import SyntheticSpec, synthetic_corpus
from tests.reference import straightforward


@pytest.fixture(scope="module", params=[0, 1, 2])
def compared(request):
    corpus = synthetic_corpus(SyntheticSpec(n_traces=200, keys_per_row=120, seed=request.param))
    weights = learn_weights(corpus)
    scores = score_corpus(corpus, weights)
    plain_weights, plain_labels = straightforward.learn(corpus)
    plain_gmf = straightforward.score(corpus, plain_weights)
    return corpus, weights, scores, plain_weights, plain_labels, plain_gmf


def test_row_labels_agree(compared):
    corpus, _, _, _, plain_labels, _ = compared
    analysis = analyse(corpus)
    same = total = 0
    for t, labels in enumerate(plain_labels):
        a, b = analysis.rows.trace_ptr[t], analysis.rows.trace_ptr[t + 1]
        if labels is None:
            assert a == b
            continue
        same += int((np.asarray(labels) == analysis.segmentation.explore[a:b]).sum())
        total += len(labels)
    assert total > 10_000
    assert same == total  # README: the labels agree exactly


def test_weight_signs_agree(compared):
    _, weights, _, plain_weights, _, _ = compared
    credited = (weights != 0) | (plain_weights != 0)
    assert credited.sum() > 1000
    agree = np.sign(weights[credited]) == np.sign(plain_weights[credited])
    assert agree.all()  # README: the weight signs agree exactly


def test_gmf_and_nex_agree(compared):
    _, _, scores, _, _, plain_gmf = compared
    diff = np.abs(scores.gmf - plain_gmf)
    assert np.nanmax(diff) <= 1e-12  # equal up to float summation order (measured 3e-15)
    assert np.array_equal(np.isnan(scores.gmf), np.isnan(plain_gmf))
    assert spearmanr(scores.gmf, plain_gmf).statistic >= 0.999
    assert abs(scores.nex - np.nanmean(plain_gmf)) <= 1e-3


def test_synthetic_corpora_have_structure(compared):
    """Guard against a degenerate generator making agreement trivial."""
    _, weights, scores, _, plain_labels, _ = compared
    assert (weights > 0).sum() > 100 and (weights < 0).sum() > 100
    assert np.nanstd(scores.gmf) > 0.01
    explore_fraction = np.mean([np.mean(l) for l in plain_labels if l])
    assert 0.1 < explore_fraction < 0.9
