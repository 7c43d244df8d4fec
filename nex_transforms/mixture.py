"""Batched two-component 1-D Gaussian mixtures (METHOD.md section 3).

One EM runs over a padded batch of traces at once. It follows scikit-learn's
``GaussianMixture(n_components=2, covariance_type="diag", init_params="kmeans",
random_state=0, max_iter=50, tol=1e-3, reg_covar=1e-6)`` step for step: a k-means++
seeding with the same random draws (a fresh ``RandomState(0)`` per trace makes them the
same constants for every trace), Lloyd iterations with the same stopping rule, the same
initial parameters from the k-means labels, the same E/M-steps and the same per-trace
convergence test on the mean log-likelihood. Remaining differences are floating-point
summation order only.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

_LOG_2PI = float(np.log(2.0 * np.pi))
_TINY = 10.0 * np.finfo(np.float64).eps


@lru_cache(maxsize=1)
def _random_draws() -> tuple[float, tuple[float, float]]:
    """The draws k-means++ takes from ``RandomState(0)``: the first centre's, then the
    two trials' (drawn on first use: importing ``numpy.random`` costs ~15 ms)."""
    state = np.random.RandomState(0)
    first = state.random_sample()
    trials = state.uniform(size=2)
    return float(first), (float(trials[0]), float(trials[1]))


@lru_cache(maxsize=4096)
def _first_center_index(n: int) -> int:
    """Index ``RandomState(0).choice(n, p=ones(n)/n)`` picks."""
    cdf = np.cumsum(np.full(n, 1.0) / n)
    cdf /= cdf[-1]
    return int(cdf.searchsorted(_random_draws()[0], side="right"))


@dataclass(frozen=True)
class MixtureFit:
    """Fitted parameters per trace of a batch: shape ``(B, 2)`` each, plus ``ok`` (B,)."""

    means: np.ndarray
    variances: np.ndarray
    weights: np.ndarray
    ok: np.ndarray
    n_iter: np.ndarray


def kmeans_labels(x: np.ndarray, mask: np.ndarray, max_iter: int = 300,
                  tol: float = 1e-4) -> np.ndarray:
    """Two-cluster k-means labels per trace of a padded batch (scikit-learn's rules).

    Args:
        x: ``(B, T)`` values, padded.
        mask: ``(B, T)`` True on real values; each trace has at least 2 of them.
    Returns:
        ``(B, T)`` int labels in {0, 1} (pads 0).
    """
    n_batch, width = x.shape
    counts = mask.sum(axis=1)
    xm = np.where(mask, x, 0.0)
    mean = xm.sum(axis=1) / counts
    xc = np.where(mask, x - mean[:, None], 0.0)
    var = np.where(mask, (x - mean[:, None]) ** 2, 0.0).sum(axis=1) / counts
    tol_abs = var * tol
    rows = np.arange(n_batch)

    # k-means++ seeding with the constant draws of RandomState(0).
    first = np.array([_first_center_index(int(n)) for n in counts])
    c0 = xc[rows, first]
    x_sq = xc * xc
    closest = np.where(mask, np.maximum((-2.0 * c0[:, None] * xc + c0[:, None] ** 2) + x_sq,
                                        0.0), 0.0)
    pot = closest.sum(axis=1)
    cum = np.cumsum(closest, axis=1)
    best_pot = np.full(n_batch, np.inf)
    best_center = np.zeros(n_batch)
    for draw in _random_draws()[1]:
        target = draw * pot
        cand = np.minimum((cum < target[:, None]).sum(axis=1), counts - 1)
        cx = xc[rows, cand]
        dist = np.maximum((-2.0 * cx[:, None] * xc + cx[:, None] ** 2) + x_sq, 0.0)
        cand_pot = np.where(mask, np.minimum(closest, dist), 0.0).sum(axis=1)
        better = cand_pot < best_pot
        best_pot = np.where(better, cand_pot, best_pot)
        best_center = np.where(better, cx, best_center)
    centers = np.stack([c0, best_center], axis=1)

    def assign(c):
        d0 = c[:, 0:1] ** 2 + (-2.0 * xc * c[:, 0:1])
        d1 = c[:, 1:2] ** 2 + (-2.0 * xc * c[:, 1:2])
        return np.where(mask, (d1 < d0).astype(np.int64), 0)

    labels = np.full((n_batch, width), -1, np.int64)
    active = np.ones(n_batch, dtype=bool)
    relabel = np.zeros(n_batch, dtype=bool)
    for _ in range(max_iter):
        if not active.any():
            break
        new_labels = assign(centers)
        in1 = (new_labels == 1) & mask
        in0 = (new_labels == 0) & mask
        n1 = in1.sum(axis=1).astype(np.float64)
        n0 = in0.sum(axis=1).astype(np.float64)
        s1 = np.where(in1, xc, 0.0).sum(axis=1)
        s0 = np.where(in0, xc, 0.0).sum(axis=1)
        empty = (n0 == 0) | (n1 == 0)
        if empty.any():
            # scikit-learn relocates an empty cluster to the point farthest from its centre.
            own = np.where(new_labels == 1, centers[:, 1:2], centers[:, 0:1])
            far = np.argmax(np.where(mask, (xc - own) ** 2, -1.0), axis=1)
            fx = xc[rows, far]
            move0 = empty & (n0 == 0)
            move1 = empty & (n1 == 0) & ~move0
            s0 = np.where(move0, fx, np.where(move1, s0 - fx, s0))
            n0 = np.where(move0, 1.0, np.where(move1, n0 - 1, n0))
            s1 = np.where(move1, fx, np.where(move0, s1 - fx, s1))
            n1 = np.where(move1, 1.0, np.where(move0, n1 - 1, n1))
        new_centers = np.stack([s0 / np.maximum(n0, 1), s1 / np.maximum(n1, 1)], axis=1)
        shift = ((new_centers - centers) ** 2).sum(axis=1)
        same = np.all(new_labels == labels, axis=1)
        upd = active
        labels = np.where(upd[:, None], new_labels, labels)
        centers = np.where(upd[:, None], new_centers, centers)
        strict = upd & same
        loose = upd & ~same & (shift <= tol_abs)
        relabel |= loose
        active = active & ~strict & ~loose
    relabel |= active  # ran out of iterations
    if relabel.any():
        labels = np.where(relabel[:, None], assign(centers), labels)
    return np.where(mask, labels, 0)


def fit_two_gaussians(x: np.ndarray, mask: np.ndarray, max_iter: int = 50, tol: float = 1e-3,
                      reg_covar: float = 1e-6, kmeans_max_iter: int = 300,
                      kmeans_tol: float = 1e-4) -> MixtureFit:
    """Fit a 2-component 1-D Gaussian mixture to every trace of a padded batch.

    ``ok`` is False where scikit-learn would fail (a non-positive variance) or a value is
    not finite; callers then fall back to ``z > 0``.
    """
    n_batch = x.shape[0]
    maskf = mask.astype(np.float64)
    counts = maskf.sum(axis=1)
    xm = np.where(mask, x, 0.0)
    x2 = xm * xm
    labels = kmeans_labels(x, mask, kmeans_max_iter, kmeans_tol)
    resp1 = (labels == 1) * maskf
    resp0 = maskf - resp1

    def m_step(r0, r1, xm, x2):
        nk = np.stack([r0.sum(axis=1), r1.sum(axis=1)], axis=1) + _TINY
        sums = np.stack([(r0 * xm).sum(axis=1), (r1 * xm).sum(axis=1)], axis=1)
        sq = np.stack([(r0 * x2).sum(axis=1), (r1 * x2).sum(axis=1)], axis=1)
        means = sums / nk
        cov = sq / nk - means ** 2 + reg_covar
        return nk, means, cov

    nk, means, cov = m_step(resp0, resp1, xm, x2)
    weights = nk / counts[:, None]
    ok = np.all(cov > 0, axis=1)
    n_iter = np.zeros(n_batch, np.int64)
    # Work on the traces still iterating only; converged ones keep their parameters.
    live = np.flatnonzero(ok)
    lower = np.full(live.size, -np.inf)
    w_mask, w_maskf, w_counts = mask[live], maskf[live], counts[live]
    w_xm, w_x2 = xm[live], x2[live]
    w_means, w_cov, w_weights = means[live], cov[live], weights[live]
    for _ in range(max_iter):
        if live.size == 0:
            break
        prec_chol = 1.0 / np.sqrt(w_cov)
        prec = prec_chol ** 2
        log_det = np.log(prec_chol)
        wlp = []
        for k in range(2):
            quad = (w_means[:, k:k + 1] ** 2 * prec[:, k:k + 1]
                    - 2.0 * w_xm * (w_means[:, k:k + 1] * prec[:, k:k + 1])
                    + w_x2 * prec[:, k:k + 1])
            wlp.append(-0.5 * (_LOG_2PI + quad) + log_det[:, k:k + 1]
                       + np.log(w_weights[:, k:k + 1]))
        top = np.maximum(wlp[0], wlp[1])
        norm = np.log(np.exp(wlp[0] - top) + np.exp(wlp[1] - top)) + top
        new_lower = np.where(w_mask, norm, 0.0).sum(axis=1) / w_counts
        r0 = np.exp(wlp[0] - norm) * w_maskf
        r1 = np.exp(wlp[1] - norm) * w_maskf
        w_nk, w_means, w_cov = m_step(r0, r1, w_xm, w_x2)
        w_weights = w_nk / w_nk.sum(axis=1, keepdims=True)
        n_iter[live] += 1
        bad = ~np.all(w_cov > 0, axis=1)
        converged = np.abs(new_lower - lower) < tol
        lower = new_lower
        done = converged | bad
        if done.any():
            finished = live[done]
            means[finished], cov[finished] = w_means[done], w_cov[done]
            weights[finished] = w_weights[done]
            ok[live[bad]] = False
            keep = ~done
            live, lower = live[keep], lower[keep]
            w_mask, w_maskf, w_counts = w_mask[keep], w_maskf[keep], w_counts[keep]
            w_xm, w_x2 = w_xm[keep], w_x2[keep]
            w_means, w_cov, w_weights = w_means[keep], w_cov[keep], w_weights[keep]
    if live.size:  # ran out of iterations
        means[live], cov[live], weights[live] = w_means, w_cov, w_weights
    ok &= np.all(np.isfinite(means), axis=1) & np.all(np.isfinite(cov), axis=1)
    return MixtureFit(means=means, variances=cov, weights=weights, ok=ok, n_iter=n_iter)
