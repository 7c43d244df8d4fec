"""Per-token statistics stored as float16 (schema 2) keep what the baselines need.

A store written with the default ``token_stat_dtype`` (float16, running-sum quantisation)
and one written with float32 hold the same traces; the per-response baselines (METHOD.md
section 8: means and the DeepConf lowest group mean) computed from each agree within the
stated bound: the sum of a trace's values within ``TOKEN_STAT_STEP + 2^-11 * sum(|x|
of its values >= TOKEN_STAT_LIMIT)``, so a mean over ``n`` values within that over ``n``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("zarr")

from nex_transforms.baselines import response_baselines  # noqa: E402
from pipelines.store import ActivationStore  # noqa: E402
from pipelines.store.encode import quantize_token_stat  # noqa: E402
from pipelines.store.schema import (DEFAULT_STORAGE, TOKEN_STAT_LIMIT,  # noqa: E402
                                    TOKEN_STAT_STEP)
from pipelines.testing.traces import synthetic_records  # noqa: E402


def _realistic_stats(rng: np.random.Generator, n: int) -> dict:
    """Statistics with the ranges a real capture has (vocabulary ~49k: log V ~ 10.8)."""
    entropy = np.abs(rng.gamma(0.6, 1.2, n)).astype(np.float32)
    logprob = -rng.exponential(0.8, n).astype(np.float32)
    logprob[::17] = -1e-7  # near-certain tokens: tiny magnitudes (float16 subnormals)
    logprob[::53] = -40.0  # a sampled low-probability token
    return {"entropy": entropy,
            "self_certainty": (10.8 - entropy + rng.normal(0, 0.1, n)).astype(np.float32),
            "token_logprob": logprob,
            "topk_confidence": (2.0 + 8.0 * rng.random(n)).astype(np.float32)}


def _records(n_traces: int = 12):
    rng = np.random.default_rng(7)
    out = []
    for record in synthetic_records(n_traces, seed=3, n_tokens=None):
        stats = _realistic_stats(rng, record.response_tokens)
        if record.trace_id.endswith(":5"):
            stats.pop("token_logprob")  # a trace without one statistic: NaN in the store
        out.append(dataclasses.replace(record, token_stats=stats))
    return out


def _baselines(path, records, token_stat_dtype):
    store = ActivationStore.create(path, {"capture": {"source": "test"},
                                          "storage": dict(DEFAULT_STORAGE,
                                                          token_stat_dtype=token_stat_dtype)})
    store.write_part("p0", records[:7])
    store.write_part("p1", records[7:])
    stats = ActivationStore.open(path).read_token_stats()
    return stats, response_baselines(stats)


def test_float16_token_stats_are_the_default_and_smaller(tmp_path):
    assert DEFAULT_STORAGE["token_stat_dtype"] == "float16"
    records = _records()
    store = ActivationStore.create(tmp_path / "s16", {"capture": {"source": "test"}})
    store.write_part("p0", records)
    assert store.open_part("p0")["token_stats"].dtype == np.float16
    wide = ActivationStore.create(tmp_path / "s32", {"capture": {"source": "test"},
                                                     "storage": dict(DEFAULT_STORAGE,
                                                                     token_stat_dtype="float32")})
    wide.write_part("p0", records)
    small, large = store.info()["array_bytes"], wide.info()["array_bytes"]
    assert small["token_stats"] < 0.75 * large["token_stats"]  # the four statistics


def _sum_bound(x: np.ndarray) -> float:
    """Bound on |sum(stored) - sum(x)| over the finite values of one trace."""
    finite = x[np.isfinite(x)].astype(np.float64)
    large = np.abs(finite)[np.abs(finite) >= TOKEN_STAT_LIMIT]
    return TOKEN_STAT_STEP + 2.0 ** -11 * large.sum() + 1e-9 * np.abs(finite).sum()


def test_baselines_from_float16_stats_agree_with_float32_within_the_bound(tmp_path):
    records = _records()
    assert max(r.response_tokens for r in records) < 2048  # one DeepConf window per trace
    stats32, base32 = _baselines(tmp_path / "s32", records, "float32")
    stats16, base16 = _baselines(tmp_path / "s16", records, "float16")
    assert stats16["entropy"][1].dtype == np.float32  # readers always return float32
    columns = {"mean_entropy": "entropy", "mean_self_certainty": "self_certainty",
               "mean_token_logprob": "token_logprob", "deepconf_mean_confidence": "topk_confidence"}
    worst = 0.0
    for column, stat in columns.items():
        ptr, values = stats32[stat]
        for t in range(ptr.size - 1):
            x = values[ptr[t]:ptr[t + 1]]
            n = int(np.isfinite(x).sum())
            if n == 0:  # the trace without token_logprob
                assert np.isnan(base16[column][t]) and np.isnan(base32[column][t])
                continue
            diff = abs(base16[column][t] - base32[column][t])
            assert diff <= _sum_bound(x) / n, (column, t)
            worst = max(worst, diff)
    assert worst > 0  # the stored values are rounded: the check above has something to check
    ptr, values = stats32["topk_confidence"]
    diff = np.abs(base16["deepconf_lowest_group_confidence"]
                  - base32["deepconf_lowest_group_confidence"])
    for t in range(ptr.size - 1):
        x = values[ptr[t]:ptr[t + 1]]
        assert diff[t] <= _sum_bound(x) / np.isfinite(x).sum()
    for stat in columns.values():  # each stored value within one step (or 2^-11 |x|)
        a, b = stats16[stat][1].astype(np.float64), stats32[stat][1].astype(np.float64)
        finite = np.isfinite(b)
        assert np.array_equal(finite, np.isfinite(a))
        small = finite & (np.abs(b) < TOKEN_STAT_LIMIT)
        assert np.all(np.abs(a[small] - b[small]) <= TOKEN_STAT_STEP)
        large = finite & ~small
        assert np.all(np.abs(a[large] - b[large]) <= 2.0 ** -11 * np.abs(b[large]))


def test_running_sum_quantisation_keeps_every_running_sum_of_a_trace():
    rng = np.random.default_rng(1)
    ptr = np.array([0, 0, 50, 51, 400, 400, 1000])  # empty traces and a one-token trace
    x = rng.normal(0, 6, ptr[-1])
    x[rng.random(x.size) < 0.05] = np.nan
    x[7], x[300], x[301] = np.inf, 40.0, -1e5  # non-finite and large values pass through
    q = quantize_token_stat(x, ptr)
    passthrough = ~np.isfinite(x) | (np.abs(x) >= TOKEN_STAT_LIMIT)
    assert np.array_equal(q[passthrough], x[passthrough], equal_nan=True)
    small = ~passthrough
    assert np.all(np.abs(q[small] - x[small]) <= TOKEN_STAT_STEP)
    steps = q[small] / TOKEN_STAT_STEP
    assert np.array_equal(steps, np.round(steps))  # multiples of the step ...
    assert np.array_equal(q[small].astype(np.float16).astype(np.float64), q[small])  # ... exact
    for t in range(ptr.size - 1):
        keep = small[ptr[t]:ptr[t + 1]]
        exact = np.cumsum(x[ptr[t]:ptr[t + 1]][keep])
        stored = np.cumsum(q[ptr[t]:ptr[t + 1]][keep])
        assert np.all(np.abs(stored - exact) <= TOKEN_STAT_STEP / 2 + 1e-9)
