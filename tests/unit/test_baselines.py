"""Per-response baselines (nex_transforms.baselines): oracles and properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nex_transforms.baselines import (BASELINES, DEEPCONF_WINDOW, STAT_OF_BASELINE,
                                      finite_means, lowest_group_means, response_baselines)


def brute_lowest(values: np.ndarray, window: int) -> float:
    if values.size == 0:
        return float("nan")
    w = min(window, values.size)
    means = [np.nanmean(values[s:s + w]) if np.isfinite(values[s:s + w]).any() else np.nan
             for s in range(values.size - w + 1)]
    return float(np.nanmin(means)) if np.isfinite(means).any() else float("nan")


@pytest.mark.parametrize("window", [1, 3, 7, DEEPCONF_WINDOW])
def test_lowest_group_means_equal_a_brute_force_sliding_window(window):
    rng = np.random.default_rng(window)
    lengths = np.array([0, 1, 2, 5, 9, 30, 3, 0, 12])
    values = rng.normal(size=int(lengths.sum()))
    values[rng.random(values.size) < 0.1] = np.nan
    ptr = np.concatenate([[0], np.cumsum(lengths)])
    got = lowest_group_means(values, ptr, window)
    want = [brute_lowest(values[a:b], window) for a, b in zip(ptr[:-1], ptr[1:])]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12, equal_nan=True)


def test_deepconf_window_is_2048_tokens_or_the_whole_response():
    short = np.arange(100, dtype=np.float64)
    assert lowest_group_means(short, np.array([0, 100]))[0] == pytest.approx(short.mean())
    long = np.concatenate([np.full(3000, 5.0), np.zeros(2048), np.full(500, 5.0)])
    assert lowest_group_means(long, np.array([0, long.size]))[0] == 0.0


def test_baselines_are_means_and_nan_without_statistics():
    ptr = np.array([0, 3, 3, 5])
    stats = {name: (ptr, np.array([1.0, 2.0, 3.0, np.nan, np.nan], np.float32))
             for name in ("entropy", "self_certainty", "token_logprob", "topk_confidence")}
    out = response_baselines(stats)
    assert list(out) == list(BASELINES)
    for name in BASELINES:
        assert out[name][0] == pytest.approx(2.0)
        assert np.isnan(out[name][1]) and np.isnan(out[name][2])


def brute_mean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else float("nan")


segments = st.lists(
    st.lists(st.one_of(st.floats(-50, 50), st.just(float("nan")), st.just(float("inf"))),
             max_size=12),
    min_size=1, max_size=8)


@settings(max_examples=150, deadline=None)
@given(segments, st.integers(1, 6))
def test_baselines_equal_per_segment_brute_force_and_ignore_batching(segs, window):
    """Every baseline of a segment is the straightforward per-segment value, whatever
    other segments share the batch (engines batch traces arbitrarily)."""
    values = np.array([v for seg in segs for v in seg], np.float64)
    values[np.isinf(values)] = np.nan  # +-inf is "not recorded" like NaN
    ptr = np.concatenate([[0], np.cumsum([len(seg) for seg in segs])]).astype(np.int64)
    means = finite_means(values, ptr)
    lows = lowest_group_means(values, ptr, window)
    for i, (a, b) in enumerate(zip(ptr[:-1], ptr[1:])):
        np.testing.assert_allclose(means[i], brute_mean(values[a:b]), rtol=1e-12,
                                   atol=1e-11, equal_nan=True)
        np.testing.assert_allclose(lows[i], brute_lowest(values[a:b], window), rtol=1e-12,
                                   atol=1e-11, equal_nan=True)
        alone = np.array([0, b - a])
        np.testing.assert_array_equal(finite_means(values[a:b], alone)[0], means[i])
        # window sums are differences of batch-wide prefix sums: equal up to rounding
        np.testing.assert_allclose(lowest_group_means(values[a:b], alone, window)[0],
                                   lows[i], rtol=1e-9, atol=1e-11, equal_nan=True)
        if b - a <= window:  # one window: the whole response
            np.testing.assert_allclose(lows[i], means[i], rtol=1e-12, atol=1e-11,
                                       equal_nan=True)


def test_every_baseline_name_is_produced_once_in_table_order():
    ptr = np.array([0, 2])
    stats = {stat: (ptr, np.array([1.0, 3.0])) for stat in STAT_OF_BASELINE.values()}
    assert tuple(response_baselines(stats)) == BASELINES
