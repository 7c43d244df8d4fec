"""E/X segmentation of every trace (METHOD.md section 3), batched across traces."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .hmm import fit_sticky_hmm, gaussian_log_likelihood, smooth_min_run, sticky_viterbi
from .mixture import fit_two_gaussians
from .params import NexParams
from .segments import grouped_median, positions_in_segment, ranges, segment_ids

#: How a trace's labels were obtained.
METHOD_HMM, METHOD_MAD_ZERO, METHOD_FALLBACK = 0, 1, 2


@dataclass(frozen=True)
class Segmentation:
    """Labels of the kept rows of a set of traces.

    Attributes:
        z: robust z-score of each kept row's detrended observation.
        explore: True for E (explore) rows, False for X (exploit), after smoothing.
        method: per trace, ``METHOD_HMM``, ``METHOD_MAD_ZERO`` (``z > 0`` because the MAD
            was zero) or ``METHOD_FALLBACK`` (``z > 0`` after a numerical failure).
    """

    z: np.ndarray
    explore: np.ndarray
    method: np.ndarray


def robust_z(slopes: np.ndarray, trace_ptr: np.ndarray, mad_eps: float = 1e-6
             ) -> tuple[np.ndarray, np.ndarray]:
    """Observation transform: ``log1p`` slope, log-time detrend, robust z-score.

    Returns ``(z, mad_ok)``: z per row and, per trace, whether its MAD was finite and > 0.
    The trend is the least-squares fit on ``[1, log(1 + t)]``; where that fit is
    degenerate the median is subtracted instead.
    """
    n_traces = trace_ptr.size - 1
    trace = segment_ids(trace_ptr)
    y = np.log1p(np.maximum(slopes, 0.0))
    x = np.log1p(positions_in_segment(trace_ptr).astype(np.float64))
    counts = np.diff(trace_ptr).astype(np.float64)
    safe = np.maximum(counts, 1.0)
    x_mean = np.bincount(trace, x, n_traces) / safe
    y_mean = np.bincount(trace, y, n_traces) / safe
    dx = x - x_mean[trace]
    sxx = np.bincount(trace, dx * dx, n_traces)
    sxy = np.bincount(trace, dx * (y - y_mean[trace]), n_traces)
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = sxy / sxx
    fit_ok = np.isfinite(slope) & (sxx > 0)
    intercept = y_mean - np.where(fit_ok, slope, 0.0) * x_mean
    resid = y - intercept[trace] - np.where(fit_ok, slope, 0.0)[trace] * x
    if not fit_ok.all():
        med_y = grouped_median(y, trace, n_traces)
        resid = np.where(fit_ok[trace], resid, y - med_y[trace])
    med = grouped_median(resid, trace, n_traces)
    dev = resid - med[trace]
    mad = grouped_median(np.abs(dev), trace, n_traces)
    z = dev / (mad[trace] + mad_eps)
    mad_ok = np.isfinite(mad) & (mad > 0)
    return z, mad_ok


def length_batches(lengths: np.ndarray, max_cells: int = 1 << 16) -> list[np.ndarray]:
    """Split trace indices into batches of similar length with bounded padded size."""
    order = np.argsort(lengths, kind="stable")
    batches, start = [], 0
    while start < order.size:
        stop = start + 1
        width = lengths[order[start]]
        while stop < order.size:
            width = max(width, lengths[order[stop]])
            if width * (stop - start + 1) > max_cells:
                break
            stop += 1
        batches.append(order[start:stop])
        start = stop
    return batches


def _batch_labels(z: np.ndarray, trace_ptr: np.ndarray, traces: np.ndarray,
                  params: NexParams) -> tuple[np.ndarray, np.ndarray]:
    """Viterbi labels (E = True) of a batch of traces; ``ok`` False where it failed."""
    starts = trace_ptr[traces]
    lengths = trace_ptr[traces + 1] - starts
    width = int(lengths.max())
    cols = np.arange(width)
    mask = cols[None, :] < lengths[:, None]
    index = np.where(mask, starts[:, None] + cols[None, :], 0)
    x = np.where(mask, z[index], 0.0)
    fit = fit_two_gaussians(x, mask, params.gmm_max_iter, params.gmm_tol,
                            params.gmm_reg_covar, params.kmeans_max_iter, params.kmeans_tol)
    means = fit.means
    variances = np.maximum(np.where(fit.ok[:, None], fit.variances, 1.0), params.var_floor)
    means = np.where(fit.ok[:, None], means, 0.0)
    rho = np.full(traces.size, params.rho)
    if params.fit_hmm:
        means, variances, rho = fit_sticky_hmm(x, mask, means, variances, params.rho,
                                               params.hmm_em_iter, params.rho_prior_strength,
                                               params.var_floor)
    with np.errstate(all="ignore"):
        log_em = gaussian_log_likelihood(x, means, variances)
        states = sticky_viterbi(log_em[:, :, 1] - log_em[:, :, 0], lengths, rho)
    ok = fit.ok & np.all(np.isfinite(log_em) | ~mask[:, :, None], axis=(1, 2))
    explore_state = np.argmax(means, axis=1)
    explore = states == explore_state[:, None]
    return explore[mask], ok


def segment(slopes: np.ndarray, trace_ptr: np.ndarray, params: NexParams) -> Segmentation:
    """Label every kept row E or X.

    Args:
        slopes: novelty slope per kept row (concatenated over traces).
        trace_ptr: CSR pointer of the kept rows per trace; traces with no rows are allowed.
        params: method parameters.
    """
    n_traces = trace_ptr.size - 1
    z, mad_ok = robust_z(slopes, trace_ptr, params.mad_eps)
    explore = z > 0
    method = np.where(mad_ok, METHOD_HMM, METHOD_MAD_ZERO)
    lengths = np.diff(trace_ptr)
    candidates = np.flatnonzero(mad_ok & (lengths > 0))
    for batch in length_batches(lengths[candidates]):
        traces = candidates[batch]
        labels, ok = _batch_labels(z, trace_ptr, traces, params)
        starts, stops = trace_ptr[traces], trace_ptr[traces + 1]
        row_idx = ranges(starts, stops)
        ok_rows = np.repeat(ok, stops - starts)
        explore[row_idx] = np.where(ok_rows, labels, explore[row_idx])
        method[traces[~ok]] = METHOD_FALLBACK
    explore = smooth_min_run(explore, trace_ptr, params.min_run)
    return Segmentation(z=z, explore=explore, method=method[:n_traces])

