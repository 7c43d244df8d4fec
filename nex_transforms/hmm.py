"""Sticky two-state HMM over padded batches: Viterbi, optional EM, min-run smoothing.

State 0 and 1 are the mixture components; the caller maps the one with the larger
emission mean to E (explore). All functions take a padded batch ``(B, T)`` plus the
true length of each trace and never loop over traces.
"""

from __future__ import annotations

import numpy as np

from .segments import run_starts

_LOG_2PI = float(np.log(2.0 * np.pi))


def gaussian_log_likelihood(x: np.ndarray, means: np.ndarray, variances: np.ndarray
                            ) -> np.ndarray:
    """``log N(x; mean_k, var_k)`` for both states: ``(B, T)`` -> ``(B, T, 2)``."""
    diff = x[:, :, None] - means[:, None, :]
    return -0.5 * (_LOG_2PI + np.log(variances)[:, None, :] + diff * diff
                   / variances[:, None, :])


def sticky_log_transitions(rho: np.ndarray | float, n_batch: int) -> np.ndarray:
    """``(B, 2, 2)`` log transition matrices with stay probability ``rho``."""
    rho = np.broadcast_to(np.asarray(rho, dtype=np.float64), (n_batch,))
    trans = np.empty((n_batch, 2, 2))
    trans[:, 0, 0] = trans[:, 1, 1] = rho
    trans[:, 0, 1] = trans[:, 1, 0] = 1.0 - rho
    with np.errstate(divide="ignore"):
        return np.log(trans)


def viterbi(log_emissions: np.ndarray, lengths: np.ndarray, log_transitions: np.ndarray,
            log_start: np.ndarray | None = None) -> np.ndarray:
    """Most likely state path of every trace of a padded batch.

    Args:
        log_emissions: ``(B, T, 2)`` log-likelihood of each value under each state.
        lengths: ``(B,)`` true lengths (>= 1); positions past them are ignored.
        log_transitions: ``(B, 2, 2)``, ``[b, i, j] = log P(j | i)``.
        log_start: ``(2,)`` or ``(B, 2)``; default uniform.
    Returns:
        ``(B, T)`` int states (pads 0). Ties go to the lower state index, as in hmmlearn.
    """
    n_batch, width, _ = log_emissions.shape
    if log_start is None:
        log_start = np.log(np.full(2, 0.5))
    log_start = np.broadcast_to(log_start, (n_batch, 2))
    # two states: unroll the max over predecessors; keep backpointers
    a00, a01 = log_transitions[:, 0, 0], log_transitions[:, 0, 1]
    a10, a11 = log_transitions[:, 1, 0], log_transitions[:, 1, 1]
    score0 = log_start[:, 0] + log_emissions[:, 0, 0]
    score1 = log_start[:, 1] + log_emissions[:, 0, 1]
    from0_to0 = np.empty((width, n_batch), dtype=bool)  # best predecessor of 0 is 0
    from0_to1 = np.empty((width, n_batch), dtype=bool)  # best predecessor of 1 is 0
    final0 = score0.copy()
    final1 = score1.copy()
    last = lengths - 1
    for t in range(1, width):
        stay0, move10 = score0 + a00, score1 + a10
        move01, stay1 = score0 + a01, score1 + a11
        from0_to0[t] = stay0 >= move10  # ties go to the lower state, as argmax does
        from0_to1[t] = move01 >= stay1
        score0 = np.where(from0_to0[t], stay0, move10) + log_emissions[:, t, 0]
        score1 = np.where(from0_to1[t], move01, stay1) + log_emissions[:, t, 1]
        ends = last == t
        if ends.any():
            final0 = np.where(ends, score0, final0)
            final1 = np.where(ends, score1, final1)
    states = np.zeros((n_batch, width), np.int64)
    states[np.arange(n_batch), last] = final1 > final0  # ties go to state 0
    for t in range(width - 1, 0, -1):
        active = t <= last
        if not active.any():
            continue
        current = states[:, t]
        previous = np.where(current == 0, ~from0_to0[t], ~from0_to1[t])
        states[:, t - 1] = np.where(active, previous, states[:, t - 1])
    return states


def sticky_viterbi(delta: np.ndarray, lengths: np.ndarray, rho) -> np.ndarray:
    """Viterbi for two states with symmetric sticky transitions, in closed form.

    With stay probability ``rho`` in both states and uniform start, only the score
    difference ``d_t = score1_t - score0_t`` matters, and it follows
    ``d_t = clip(d_{t-1}, -c, c) + delta_t`` with ``c = log(rho / (1 - rho))`` and
    ``delta_t`` the emission log-likelihood difference (state 1 minus state 0). The
    backtrack is then closed-form too: a step with ``d_t > c`` is in state 1 and one with
    ``d_t <= -c`` in state 0 whatever follows; any other step copies the next step's
    state; the last step takes ``d > 0``. Ties resolve to state 0 as in :func:`viterbi`,
    to which this is equal (tested against it and against brute force).

    Args:
        delta: ``(B, T)`` emission log-likelihood differences, padded.
        lengths: ``(B,)`` true lengths (>= 1).
        rho: stay probability, scalar or ``(B,)``.
    Returns:
        ``(B, T)`` int states (pads 0).
    """
    n_batch, width = delta.shape
    rho = np.broadcast_to(np.asarray(rho, dtype=np.float64), (n_batch,))
    with np.errstate(divide="ignore"):
        c = np.log(rho) - np.log1p(-rho)
    diff = np.empty((width, n_batch))
    steps = np.ascontiguousarray(delta.T)
    diff[0] = steps[0]
    low = -c
    for t in range(1, width):
        np.clip(diff[t - 1], low, c, out=diff[t])
        diff[t] += steps[t]
    diff = diff.T
    cols = np.arange(width)
    last = lengths - 1
    rows = np.arange(n_batch)
    known = np.where(diff > c[:, None], 1, np.where(diff <= low[:, None], 0, -1))
    known[rows, last] = diff[rows, last] > 0
    known[cols[None, :] > last[:, None]] = 0
    source = np.where(known >= 0, cols[None, :], width)
    source = np.minimum.accumulate(source[:, ::-1], axis=1)[:, ::-1]
    return np.take_along_axis(known, source, axis=1).astype(np.int64)


def fit_sticky_hmm(x: np.ndarray, mask: np.ndarray, means: np.ndarray, variances: np.ndarray,
                   rho: float, n_iter: int, prior_strength: float, var_floor: float
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """EM (Baum-Welch) of a sticky two-state Gaussian HMM per trace (project extension).

    Starts from the mixture's emissions and stay probability ``rho``; re-estimates the
    emissions and one shared stay probability per trace, with a Beta prior on it of
    ``prior_strength`` pseudo-transitions centred on ``rho``. Start probabilities stay
    0.5/0.5. Returns ``(means, variances, rho)`` per trace.
    """
    n_batch, width = x.shape
    maskf = mask.astype(np.float64)
    rho_b = np.full(n_batch, float(rho))
    means = means.copy()
    variances = np.maximum(variances, var_floor)
    for _ in range(n_iter):
        emis = np.exp(gaussian_log_likelihood(np.where(mask, x, 0.0), means, variances))
        emis = np.where(mask[:, :, None], emis, 1.0)
        trans = np.exp(sticky_log_transitions(rho_b, n_batch))
        alpha = np.empty((n_batch, width, 2))
        scale = np.empty((n_batch, width))
        a = 0.5 * emis[:, 0]
        scale[:, 0] = np.maximum(a.sum(axis=1), 1e-300)
        alpha[:, 0] = a / scale[:, 0, None]
        for t in range(1, width):
            a = np.einsum("bi,bij->bj", alpha[:, t - 1], trans) * emis[:, t]
            s = np.maximum(a.sum(axis=1), 1e-300)
            live = mask[:, t]
            scale[:, t] = np.where(live, s, 1.0)
            alpha[:, t] = np.where(live[:, None], a / s[:, None], alpha[:, t - 1])
        beta = np.ones((n_batch, width, 2))
        stays = np.zeros(n_batch)
        total = np.zeros(n_batch)
        for t in range(width - 2, -1, -1):
            live = mask[:, t + 1]
            b = np.einsum("bij,bj->bi", trans, emis[:, t + 1] * beta[:, t + 1])
            b = b / scale[:, t + 1, None]
            beta[:, t] = np.where(live[:, None], b, 1.0)
            xi = (alpha[:, t, :, None] * trans * (emis[:, t + 1] * beta[:, t + 1])[:, None, :]
                  / scale[:, t + 1, None, None])
            xi = np.where(live[:, None, None], xi, 0.0)
            stays += xi[:, 0, 0] + xi[:, 1, 1]
            total += xi.sum(axis=(1, 2))
        gamma = alpha * beta
        gamma /= np.maximum(gamma.sum(axis=2, keepdims=True), 1e-300)
        gamma *= maskf[:, :, None]
        nk = gamma.sum(axis=1) + 1e-12
        new_means = (gamma * x[:, :, None]).sum(axis=1) / nk
        diff = x[:, :, None] - new_means[:, None, :]
        new_vars = np.maximum((gamma * diff * diff).sum(axis=1) / nk, var_floor)
        new_rho = (stays + prior_strength * rho) / (total + prior_strength)
        good = (np.all(np.isfinite(new_means), axis=1) & np.all(np.isfinite(new_vars), axis=1)
                & np.isfinite(new_rho))
        means = np.where(good[:, None], new_means, means)
        variances = np.where(good[:, None], new_vars, variances)
        rho_b = np.where(good, np.clip(new_rho, 0.5, 1.0 - 1e-6), rho_b)
    return means, variances, rho_b


def smooth_min_run(labels: np.ndarray, trace_ptr: np.ndarray, min_run: int) -> np.ndarray:
    """Min-run smoothing of concatenated boolean labels, per trace (METHOD.md section 3).

    Equivalent to one left-to-right pass per trace in which a run shorter than
    ``min_run`` takes the previous row's (already smoothed) label, or the next run's
    label when it starts at row 0. Since runs are found on the original labels, a short
    run ends up with the label of the last long run before it; short runs before the
    first long run take the label of the trace's second run.
    """
    labels = np.asarray(labels, dtype=bool)
    if min_run <= 1 or labels.size == 0:
        return labels.copy()
    starts = run_starts(labels, trace_ptr)
    run_id = np.cumsum(starts) - 1
    start_idx = np.flatnonzero(starts)
    n_runs = start_idx.size
    run_len = np.diff(np.concatenate([start_idx, [labels.size]]))
    run_label = labels[start_idx]
    run_trace = np.searchsorted(trace_ptr, start_idx, side="right") - 1
    first_run = np.concatenate([[True], run_trace[1:] != run_trace[:-1]])
    trace_first = np.maximum.accumulate(np.where(first_run, np.arange(n_runs), 0))
    long = run_len >= min_run
    last_long = np.maximum.accumulate(np.where(long, np.arange(n_runs), -1))
    has_long = last_long >= trace_first
    second = trace_first + 1
    second_ok = (second < n_runs) & (run_trace[np.minimum(second, n_runs - 1)] == run_trace)
    lead_label = np.where(second_ok, run_label[np.minimum(second, n_runs - 1)], run_label)
    new_run_label = np.where(long, run_label,
                             np.where(has_long, run_label[np.maximum(last_long, 0)], lead_label))
    return new_run_label[run_id]
