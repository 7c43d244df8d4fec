"""Conformance with the published reference example (METHOD.md section 6)."""

from __future__ import annotations

import numpy as np
import pytest

from nex_transforms import analyse, learn_weights, log_gap, score_corpus
from pipelines.rows_cache import read_rows_cache

LABELS = "EEEEEEEExxxxxxxxEEEEEEEEEEEExxxxxxxxEEExxxxxxxxxxxxxEExxxxxxxxxxxxxxxxxxxEEEEEEEEEE"


@pytest.fixture(scope="module")
def corpus(reference_dir):
    return read_rows_cache(reference_dir / "example_cache")


@pytest.fixture(scope="module")
def published_weights(reference_dir):
    with np.load(reference_dir / "example_weights.npz") as data:
        return data["weights"]


def test_shape_of_the_example(corpus):
    assert corpus.n_traces == 1
    assert corpus.n_rows == 83
    assert int(corpus.row_tokens.sum()) == 2646


def test_published_weights_give_published_gmf_and_log_gap(corpus, published_weights):
    result = score_corpus(corpus, published_weights)
    assert round(result.nex, 5) == 0.99831
    assert round(result.log_gap, 4) == 2.7724
    assert result.n_scored == 1


def test_labels_and_cycles(corpus):
    analysis = analyse(corpus)
    assert analysis.labels(0) == LABELS
    assert len(analysis.labels(0)) == 83
    assert int(analysis.credit.trace_cycles[0]) == 4


def test_self_calibration(corpus):
    weights = learn_weights(corpus)
    result = score_corpus(corpus, weights)
    assert round(result.nex, 5) == 0.98684
    assert int(np.count_nonzero(weights)) == 2480
    assert int((weights > 0).sum()) == 2103
    assert int((weights < 0).sum()) == 377
    assert weights.dtype == np.float32 and weights.shape == (1 << 22,)


def test_log_gap_formula():
    assert log_gap(0.99831) == pytest.approx(-np.log10(1 - 0.99831))
    assert log_gap(1.0) == pytest.approx(12.0)
    assert log_gap(-0.5) == pytest.approx(0.0)
    assert np.isnan(log_gap(float("nan")))
