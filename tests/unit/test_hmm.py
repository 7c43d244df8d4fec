"""Viterbi against brute force, min-run smoothing against the literal pass, EM extension."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from nex_transforms.hmm import (fit_sticky_hmm, gaussian_log_likelihood, smooth_min_run,
                                sticky_log_transitions, viterbi)
from tests.reference.straightforward import smooth


def brute_force_path(log_em, log_trans, log_start):
    best, best_path = -np.inf, None
    length = log_em.shape[0]
    for path in itertools.product([0, 1], repeat=length):
        score = log_start[path[0]] + log_em[0, path[0]]
        for t in range(1, length):
            score += log_trans[path[t - 1], path[t]] + log_em[t, path[t]]
        if score > best + 1e-12:
            best, best_path = score, path
    return np.array(best_path), best


def path_score(path, log_em, log_trans, log_start):
    score = log_start[path[0]] + log_em[0, path[0]]
    for t in range(1, len(path)):
        score += log_trans[path[t - 1], path[t]] + log_em[t, path[t]]
    return score


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), batch=st.integers(1, 5), width=st.integers(1, 8),
       rho=st.floats(0.5, 0.999))
def test_viterbi_matches_brute_force(seed, batch, width, rho):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, width + 1, size=batch)
    lengths[0] = width
    log_em = rng.normal(0, 2, size=(batch, width, 2))
    log_trans = sticky_log_transitions(rho, batch)
    log_start = np.log(np.array([0.5, 0.5]))
    states = viterbi(log_em, lengths, log_trans)
    for b in range(batch):
        n = lengths[b]
        _, best = brute_force_path(log_em[b, :n], log_trans[b], log_start)
        got = path_score(states[b, :n], log_em[b, :n], log_trans[b], log_start)
        assert abs(got - best) <= 1e-9


def test_viterbi_prefers_sticky_paths():
    log_em = np.zeros((1, 6, 2))
    log_em[0, :, 0] = 0.1  # state 0 slightly better everywhere...
    log_em[0, 2, 1] = 0.5  # ...but one blip towards state 1: not worth two switches
    states = viterbi(log_em, np.array([6]), sticky_log_transitions(0.95, 1))
    assert states.tolist() == [[0, 0, 0, 0, 0, 0]]


@settings(max_examples=200, deadline=None)
@given(labels=st.lists(st.booleans(), min_size=1, max_size=40),
       cuts=st.lists(st.integers(0, 40), max_size=4), min_run=st.integers(1, 4))
def test_min_run_smoothing_matches_the_literal_pass(labels, cuts, min_run):
    n = len(labels)
    bounds = sorted({0, n, *[c for c in cuts if c <= n]})
    ptr = np.array(bounds)
    got = smooth_min_run(np.array(labels), ptr, min_run)
    want = []
    for a, b in zip(ptr[:-1], ptr[1:]):
        want.extend(smooth(labels[a:b], min_run))
    assert got.tolist() == want


def test_min_run_examples():
    def run(text):
        labels = np.array([c == "E" for c in text])
        out = smooth_min_run(labels, np.array([0, len(text)]), 2)
        return "".join("E" if v else "x" for v in out)

    assert run("xEExx") == "EEExx"  # a short first run takes the next run's label
    assert run("EEExE") == "EEEEE"  # short runs take the previous label
    assert run("EExEx") == "EEEEE"
    assert run("ExExE") == "xxxxx"


def test_em_extension_learns_rho_and_emissions():
    rng = np.random.default_rng(0)
    states = np.repeat(np.array([0, 1, 0, 1, 0]), 20)
    x = np.where(states == 1, 2.0, -1.0) + rng.normal(0, 0.3, states.size)
    mask = np.ones((1, x.size), dtype=bool)
    means, variances, rho = fit_sticky_hmm(x[None], mask, np.array([[-0.5, 0.5]]),
                                           np.array([[1.0, 1.0]]), 0.95, 30, 20.0, 1e-6)
    assert np.allclose(sorted(means[0]), [-1.0, 2.0], atol=0.15)
    assert np.all(variances > 0)
    assert 0.9 < rho[0] < 1.0
    # the fitted emissions decode the planted states
    path = viterbi(gaussian_log_likelihood(x[None], means, variances), np.array([x.size]),
                   sticky_log_transitions(rho, 1))[0]
    high = int(np.argmax(means[0]))
    assert np.mean((path == high) == (states == 1)) > 0.98


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 10_000), batch=st.integers(1, 6), width=st.integers(1, 9),
       scale=st.floats(0.01, 5.0))
def test_sticky_viterbi_equals_general_viterbi(seed, batch, width, scale):
    from nex_transforms.hmm import sticky_viterbi
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, width + 1, size=batch)
    rho = rng.uniform(0.5, 0.999, size=batch)
    log_em = rng.normal(0, scale, size=(batch, width, 2))
    general = viterbi(log_em, lengths, sticky_log_transitions(rho, batch))
    closed = sticky_viterbi(log_em[:, :, 1] - log_em[:, :, 0], lengths, rho)
    for b in range(batch):
        n = lengths[b]
        assert closed[b, :n].tolist() == general[b, :n].tolist()
        _, best = brute_force_path(log_em[b, :n], sticky_log_transitions(rho[b], 1)[0],
                                   np.log([0.5, 0.5]))
        got = path_score(closed[b, :n], log_em[b, :n], sticky_log_transitions(rho[b], 1)[0],
                         np.log([0.5, 0.5]))
        assert abs(got - best) <= 1e-9
