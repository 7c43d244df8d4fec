"""The batched k-means and mixture fits against scikit-learn, trace by trace."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.cluster import KMeans
from sklearn.mixture import GaussianMixture

from nex_transforms.mixture import fit_two_gaussians, kmeans_labels


def padded(values_list):
    width = max(len(v) for v in values_list)
    x = np.zeros((len(values_list), width))
    mask = np.zeros((len(values_list), width), dtype=bool)
    for i, v in enumerate(values_list):
        x[i, :len(v)] = v
        mask[i, :len(v)] = True
    return x, mask


def random_traces(seed, n):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        length = int(rng.integers(3, 90))
        split = rng.uniform(0.1, 0.9)
        v = np.where(rng.random(length) < split, rng.normal(-0.5, 1, length),
                     rng.normal(2.0, 1.5, length))
        out.append(v)
    return out


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 100_000))
def test_kmeans_partitions_like_sklearn(seed):
    traces = random_traces(seed, 6)
    x, mask = padded(traces)
    labels = kmeans_labels(x, mask)
    for i, v in enumerate(traces):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = KMeans(n_clusters=2, n_init=1, random_state=np.random.RandomState(0)
                         ).fit(v[:, None]).labels_
        ours = labels[i, :len(v)]
        assert (ours == ref).all() or (ours == 1 - ref).all()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 100_000))
def test_mixture_parameters_match_sklearn(seed):
    traces = random_traces(seed, 6)
    x, mask = padded(traces)
    fit = fit_two_gaussians(x, mask)
    for i, v in enumerate(traces):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm = GaussianMixture(n_components=2, covariance_type="diag", random_state=0,
                                 max_iter=50, tol=1e-3, reg_covar=1e-6).fit(v[:, None])
        assert fit.ok[i]
        order_ref = np.argsort(gm.means_.ravel())
        order_ours = np.argsort(fit.means[i])
        np.testing.assert_allclose(fit.means[i][order_ours], gm.means_.ravel()[order_ref],
                                   rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(fit.variances[i][order_ours],
                                   gm.covariances_.ravel()[order_ref], rtol=1e-7, atol=1e-9)
        assert fit.n_iter[i] == gm.n_iter_


def test_degenerate_traces_are_flagged_not_crashing():
    x, mask = padded([np.zeros(5), np.array([1.0, 1.0, 1.0, 2.0]), np.array([0.0, 1.0, 2.0])])
    fit = fit_two_gaussians(x, mask)
    assert fit.means.shape == (3, 2)
    assert np.all(np.isfinite(fit.means[fit.ok]))


@pytest.mark.parametrize("n", [2, 3, 7, 50])
def test_first_center_matches_numpy_choice(n):
    from nex_transforms.mixture import _first_center_index
    state = np.random.RandomState(0)
    assert _first_center_index(n) == state.choice(n, p=np.full(n, 1.0 / n))
