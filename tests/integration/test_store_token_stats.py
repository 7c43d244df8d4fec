"""Per-token statistics stored as float16 (schema 2) keep what the baselines need.

A store written with the default ``token_stat_dtype`` (float16) and one written with
float32 hold the same traces; the per-response baselines (METHOD.md section 8: means and
the DeepConf lowest group mean) computed from each agree within the rounding bound of
:func:`token_stat_tolerance`: ``2^-11 * mean|x| + 2^-25`` for a mean and
``2^-11 * max|x| + 2^-25`` for a lowest window mean.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("zarr")

from pipelines.store import ActivationStore  # noqa: E402
from pipelines.store.schema import DEFAULT_STORAGE, token_stat_tolerance  # noqa: E402
from pipelines.store.synthetic import synthetic_records  # noqa: E402

try:  # the baselines moved to the core in issue 10 (engines split)
    from nex_transforms.baselines import response_baselines  # noqa: E402
except ImportError:  # pragma: no cover - before the split
    from pipelines.engines.core import response_baselines  # noqa: E402


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
    assert store.open_part("p0")["entropy"].dtype == np.float16
    wide = ActivationStore.create(tmp_path / "s32", {"capture": {"source": "test"},
                                                     "storage": dict(DEFAULT_STORAGE,
                                                                     token_stat_dtype="float32")})
    wide.write_part("p0", records)
    small, large = store.info()["array_bytes"], wide.info()["array_bytes"]
    for name in ("entropy", "self_certainty", "token_logprob", "topk_confidence"):
        assert small[name] < 0.75 * large[name], name


def test_baselines_from_float16_stats_agree_with_float32_within_the_bound(tmp_path):
    records = _records()
    stats32, base32 = _baselines(tmp_path / "s32", records, "float32")
    stats16, base16 = _baselines(tmp_path / "s16", records, "float16")
    assert stats16["entropy"][1].dtype == np.float32  # readers always return float32
    rel, absolute = token_stat_tolerance("float16")
    assert rel == 2.0 ** -11 and absolute == 2.0 ** -25
    columns = {"mean_entropy": "entropy", "mean_self_certainty": "self_certainty",
               "mean_token_logprob": "token_logprob", "deepconf_mean_confidence": "topk_confidence"}
    for column, stat in columns.items():
        ptr, values = stats32[stat]
        for t in range(ptr.size - 1):
            x = values[ptr[t]:ptr[t + 1]]
            if not np.isfinite(x).any():  # the trace without token_logprob
                assert np.isnan(base16[column][t]) and np.isnan(base32[column][t])
                continue
            bound = rel * np.nanmean(np.abs(x)) + absolute + 1e-9 * np.nanmean(np.abs(x))
            assert abs(base16[column][t] - base32[column][t]) <= bound, (column, t)
    ptr, values = stats32["topk_confidence"]
    diff = np.abs(base16["deepconf_lowest_group_confidence"]
                  - base32["deepconf_lowest_group_confidence"])
    for t in range(ptr.size - 1):
        assert diff[t] <= rel * np.abs(values[ptr[t]:ptr[t + 1]]).max() + absolute + 1e-9
    # the stored values themselves are within the per-value bound
    for stat in columns.values():
        a, b = stats16[stat][1], stats32[stat][1]
        finite = np.isfinite(b)
        assert np.array_equal(finite, np.isfinite(a))
        assert np.all(np.abs(a[finite] - b[finite]) <= rel * np.abs(b[finite]) + absolute)
