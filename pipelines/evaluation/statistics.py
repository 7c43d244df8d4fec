"""Statistics of the evaluation: best-of-N, votes, AUROC, bootstrap, rank correlations.

All functions are numpy (plus ``itertools``) and are tested against independent
computations (scikit-learn, scipy, enumeration of subsets) in
``tests/unit/test_evaluation_statistics.py``.
"""

from __future__ import annotations

import itertools
from math import comb
from typing import Callable, Sequence

import numpy as np

#: Above this many subsets a prompt's vote expectation is estimated by sampling subsets.
MAX_ENUMERATED_SUBSETS = 5000


def best_of_n_expected(scores: Sequence[float], correct: Sequence[float], n: int) -> float:
    """Expected correctness of the highest-scored response of a uniformly random
    ``n``-subset of one prompt's responses (ties broken uniformly at random).

    Exact, no sampling: sorting the ``M`` responses by score (descending), the response at
    position ``j`` is the subset's best with probability ``C(M-1-j, n-1) / C(M, n)``; a
    tie group shares its probability equally (its mean correctness counts). NaN scores
    rank lowest. ``correct`` holds 1/0 (or a fraction).
    """
    scores = np.asarray(scores, dtype=float)
    correct = np.asarray(correct, dtype=float)
    m = scores.size
    if not 1 <= n <= m:
        raise ValueError(f"n: expected 1 <= n <= {m}, got {n}")
    keyed = np.where(np.isfinite(scores), scores, -np.inf)
    order = np.argsort(-keyed, kind="stable")
    sorted_scores, sorted_correct = keyed[order], correct[order]
    total = comb(m, n)
    probability = np.array([comb(m - 1 - j, n - 1) for j in range(m)], dtype=float) / total
    expected_value = 0.0
    start = 0
    while start < m:
        stop = start + 1
        while stop < m and sorted_scores[stop] == sorted_scores[start]:
            stop += 1
        expected_value += probability[start:stop].sum() * sorted_correct[start:stop].mean()
        start = stop
    return float(expected_value)


def pass_at_n(correct: Sequence[float], n: int) -> float:
    """Probability that a random ``n``-subset holds at least one correct response
    (the oracle selector's best-of-N accuracy): ``1 - C(M-k, n) / C(M, n)``."""
    correct = np.asarray(correct, dtype=float)
    m, k = correct.size, int(np.sum(correct > 0.5))
    return float(1.0 - comb(m - k, n) / comb(m, n))


def vote_pick_correctness(answers: Sequence[str | None], correct: Sequence[float],
                          weights: Sequence[float] | None = None) -> float:
    """Expected correctness of a (weighted) majority vote over extracted answers.

    Responses without an answer (None) do not vote. Each answer's votes are the count of
    its responses (or the sum of their ``weights``, non-finite weights counting 0); among
    tied top answers one is chosen uniformly. No answer at all: 0 (nothing picked).
    """
    tally: dict[str, float] = {}
    answer_correct: dict[str, float] = {}
    for position, answer in enumerate(answers):
        if answer is None:
            continue
        weight = 1.0
        if weights is not None:
            weight = float(weights[position])
            weight = weight if np.isfinite(weight) else 0.0
        tally[answer] = tally.get(answer, 0.0) + weight
        answer_correct[answer] = max(answer_correct.get(answer, 0.0), float(correct[position]))
    if not tally:
        return 0.0
    top = max(tally.values())
    winners = [a for a, v in tally.items() if np.isclose(v, top, rtol=1e-12, atol=1e-12)]
    return float(np.mean([answer_correct[a] for a in winners]))


def vote_expected(answers: Sequence[str | None], correct: Sequence[float], n: int,
                  weights: Sequence[float] | None = None, seed: int = 0,
                  max_subsets: int = MAX_ENUMERATED_SUBSETS) -> float:
    """Expected correctness of the vote over a uniformly random ``n``-subset: the mean
    over all ``C(M, n)`` subsets when there are at most ``max_subsets``, otherwise over
    ``max_subsets`` subsets drawn with ``seed``."""
    m = len(answers)
    if not 1 <= n <= m:
        raise ValueError(f"n: expected 1 <= n <= {m}, got {n}")
    if comb(m, n) <= max_subsets:
        subsets: Sequence[Sequence[int]] = list(itertools.combinations(range(m), n))
    else:
        rng = np.random.default_rng(seed)
        subsets = [rng.choice(m, size=n, replace=False) for _ in range(max_subsets)]
    values = []
    for subset in subsets:
        values.append(vote_pick_correctness(
            [answers[i] for i in subset], [correct[i] for i in subset],
            None if weights is None else [weights[i] for i in subset]))
    return float(np.mean(values))


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks 1..n, ties getting the mean of their ranks."""
    values = np.asarray(values, dtype=float)
    n = values.size
    if n == 0:
        return np.empty(0)
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    stops = np.r_[starts[1:], n]
    mean_rank = (starts + stops + 1) / 2.0
    ranks = np.empty(n, dtype=float)
    ranks[order] = np.repeat(mean_rank, stops - starts)
    return ranks


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve of ``scores`` for ``labels`` (True = positive), by the
    Mann-Whitney rank sum (ties count one half). NaN when a class is empty. Non-finite
    scores are left out."""
    scores = np.asarray(scores, dtype=float)
    labels = np.asarray(labels, dtype=bool)
    keep = np.isfinite(scores)
    scores, labels = scores[keep], labels[keep]
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = average_ranks(scores)
    rank_sum = ranks[labels].sum()
    return float((rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives))


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson correlation of average ranks); NaN when
    fewer than 2 points or a constant input."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.size < 2:
        return float("nan")
    return _pearson(average_ranks(x), average_ranks(y))


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    dx, dy = x - x.mean(), y - y.mean()
    denominator = np.sqrt((dx * dx).sum() * (dy * dy).sum())
    return float("nan") if denominator == 0 else float((dx * dy).sum() / denominator)


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b by counting all pairs (ties corrected); NaN when undefined."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = x.size
    concordant = discordant = ties_x = ties_y = 0
    for i in range(n):
        for j in range(i + 1, n):
            sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
            if sx == 0 and sy == 0:
                continue
            if sx == 0:
                ties_x += 1
            elif sy == 0:
                ties_y += 1
            elif sx == sy:
                concordant += 1
            else:
                discordant += 1
    denominator = np.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return float("nan") if denominator == 0 else float((concordant - discordant) / denominator)


def bootstrap_ci(groups: Sequence, statistic: Callable[[list], float], n_boot: int = 1000,
                 seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over ``groups`` resampled with
    replacement (the evaluation resamples prompts, each group holding one prompt's
    data). Draws giving NaN are left out; (NaN, NaN) when none is finite."""
    groups = list(groups)
    if not groups:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(groups), size=(n_boot, len(groups)))
    values = np.array([statistic([groups[i] for i in row]) for row in draws], dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(values, [alpha, 1.0 - alpha])
    return float(low), float(high)


def bootstrap_mean_ci(values: Sequence[float], n_boot: int = 1000, seed: int = 0,
                      level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-prompt ``values`` (vectorised
    form of :func:`bootstrap_ci` with the mean; same draws for the same seed)."""
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, values.size, size=(n_boot, values.size))
    means = values[draws].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


def binned_accuracy(proxy: Sequence[float], correct: Sequence[float], n_bins: int = 5
                    ) -> list[dict]:
    """Accuracy in quantile bins of ``proxy`` (non-finite proxy values left out): per bin
    its edges, count, mean proxy and accuracy. Equal proxy values may make fewer bins."""
    proxy = np.asarray(proxy, dtype=float)
    correct = np.asarray(correct, dtype=float)
    keep = np.isfinite(proxy)
    proxy, correct = proxy[keep], correct[keep]
    if proxy.size == 0:
        return []
    edges = np.unique(np.quantile(proxy, np.linspace(0, 1, n_bins + 1)))
    if edges.size == 1:
        edges = np.array([edges[0], edges[0]])
    index = np.clip(np.searchsorted(edges, proxy, side="right") - 1, 0, edges.size - 2)
    bins = []
    for b in range(edges.size - 1):
        members = index == b
        if not members.any():
            continue
        bins.append({"low": float(edges[b]), "high": float(edges[b + 1]),
                     "count": int(members.sum()), "mean_proxy": float(proxy[members].mean()),
                     "accuracy": float(correct[members].mean())})
    return bins
