"""Per-response baselines from per-token statistics (METHOD.md section 8), pure numpy.

The baselines are label-free confidence measures that NEX is compared with: the mean
entropy, self-certainty and token log-probability of a response, DeepConf's mean
confidence, and DeepConf's lowest group confidence (the lowest mean confidence over
sliding windows of :data:`DEEPCONF_WINDOW` tokens).

Every function works on a batch of responses at once: values of all responses
concatenated, and a pointer ``ptr`` (``ptr[i]:ptr[i + 1]`` are the tokens of response
``i``). Non-finite values (a statistic that was not recorded) are left out of every mean;
a response without any finite value gets NaN.

Typical use::

    from nex_transforms.baselines import BASELINES, response_baselines
    columns = response_baselines({"entropy": (ptr, entropy), ...})  # name -> per response
"""

from __future__ import annotations

import numpy as np

from .segments import ranges, segment_sums

#: DeepConf lowest-group window, in tokens (METHOD.md section 8).
DEEPCONF_WINDOW = 2048
#: Per-response baseline names, in table order (the columns of the responses and models
#: tables use exactly these names).
BASELINES = ("mean_entropy", "mean_self_certainty", "mean_token_logprob",
             "deepconf_mean_confidence", "deepconf_lowest_group_confidence")
#: Per-token statistic each mean baseline averages (the lowest group confidence uses
#: ``topk_confidence`` too).
STAT_OF_BASELINE = {"mean_entropy": "entropy", "mean_self_certainty": "self_certainty",
                    "mean_token_logprob": "token_logprob",
                    "deepconf_mean_confidence": "topk_confidence"}
#: Per-token statistics the baselines need.
BASELINE_STATS = ("entropy", "self_certainty", "token_logprob", "topk_confidence")


def finite_means(values: np.ndarray, ptr: np.ndarray) -> np.ndarray:
    """Mean of the finite values of each segment ``values[ptr[i]:ptr[i + 1]]`` (float64);
    NaN where a segment has none."""
    values = np.asarray(values)
    finite = np.isfinite(values)
    sums = segment_sums(np.where(finite, values, 0.0).astype(np.float64), ptr)
    counts = segment_sums(finite.astype(np.float64), ptr)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def lowest_group_means(values: np.ndarray, ptr: np.ndarray,
                       window: int = DEEPCONF_WINDOW) -> np.ndarray:
    """DeepConf lowest group confidence: per segment, the lowest mean over sliding windows
    of ``window`` tokens (the whole segment when shorter); NaN for an empty segment or
    where no window has a finite value. Non-finite values are left out of window means.

    Vectorised with prefix sums: every window of every segment is one difference of two
    cumulative sums, and the per-segment minimum one ``fmin.reduceat``.
    """
    values = np.asarray(values)
    ptr = np.asarray(ptr, np.int64)
    n_seg = ptr.size - 1
    lengths = np.diff(ptr)
    out = np.full(n_seg, np.nan)
    if values.size == 0:
        return out
    finite = np.isfinite(values)
    csum = np.concatenate([[0.0], np.cumsum(np.where(finite, values, 0.0), dtype=np.float64)])
    ccount = np.concatenate([[0], np.cumsum(finite, dtype=np.int64)])
    width = np.minimum(lengths, window)
    n_windows = np.where(lengths > 0, lengths - width + 1, 0)
    starts = ranges(ptr[:-1], ptr[:-1] + n_windows)
    seg = np.repeat(np.arange(n_seg), n_windows)
    stops = starts + width[seg]
    counts = ccount[stops] - ccount[starts]
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, (csum[stops] - csum[starts]) / np.maximum(counts, 1),
                         np.nan)
    has = n_windows > 0
    if has.any():
        first = np.concatenate([[0], np.cumsum(n_windows)])[:-1][has]
        out[has] = np.fmin.reduceat(means, first)
    return out


def response_baselines(token_stats: dict, window: int = DEEPCONF_WINDOW) -> dict:
    """Per-response baselines from per-token statistics.

    Args:
        token_stats: statistic name (each of :data:`BASELINE_STATS`) -> ``(ptr, values)``.
        window: DeepConf lowest-group window in tokens.

    Returns:
        baseline name -> float64 array with one value per response, in the order of
        :data:`BASELINES`.
    """
    out = {}
    for column in BASELINES:
        if column == "deepconf_lowest_group_confidence":
            ptr, values = token_stats["topk_confidence"]
            out[column] = lowest_group_means(values, ptr, window)
        else:
            ptr, values = token_stats[STAT_OF_BASELINE[column]]
            out[column] = finite_means(values, ptr)
    return out


__all__ = ["BASELINES", "BASELINE_STATS", "DEEPCONF_WINDOW", "STAT_OF_BASELINE",
           "finite_means", "lowest_group_means", "response_baselines"]
