"""The plain per-trace NEX, written straight from METHOD.md, for agreement tests.

One trace at a time, Python sets for novelty, scikit-learn's ``GaussianMixture`` for the
emissions and hmmlearn's ``GaussianHMM`` for Viterbi, a literal left-to-right min-run
pass. It shares no code with ``nex_transforms`` on purpose.
"""

from __future__ import annotations

import warnings

import numpy as np

KEY_SPACE = 1 << 22
RHO = 0.95
MIN_RUN = 2
EPS = 1e-6


def _rows_of_trace(corpus, t):
    rows = []
    for i in range(corpus.trace_row_ptr[t], corpus.trace_row_ptr[t + 1]):
        a, b = corpus.row_entry_ptr[i], corpus.row_entry_ptr[i + 1]
        keys = corpus.keys[a:b]
        masses = corpus.masses[a:b].astype(np.float64)
        keep = (keys >> 16) != 255
        keys, masses = keys[keep], masses[keep]
        masses = np.where(np.isfinite(masses), masses, 0.0)
        masses = np.maximum(masses, 0.0)
        tokens = int(corpus.row_tokens[i])
        if keys.size == 0 or masses.sum() <= 0 or tokens <= 0:
            continue
        row = {}
        for k, m in zip(keys.tolist(), masses.tolist()):
            row[k] = row.get(k, 0.0) + m
        rows.append((row, tokens))
    return rows


def smooth(labels, min_run=MIN_RUN):
    """Literal one-pass min-run smoothing."""
    out = list(labels)
    n = len(out)
    i = 0
    while i < n:
        j = i
        while j + 1 < n and out[j + 1] == out[i]:
            j += 1
        if j - i + 1 < min_run:
            if i > 0:
                fill = out[i - 1]
            elif j + 1 < n:
                fill = out[j + 1]
            else:
                fill = out[i]
            for k in range(i, j + 1):
                out[k] = fill
        i = j + 1
    return out


def label_slopes(slopes, rho=RHO, seed=0):
    """E (True) / X (False) labels of one trace's novelty slopes."""
    from hmmlearn.hmm import GaussianHMM
    from sklearn.mixture import GaussianMixture

    s = np.asarray(slopes, dtype=np.float64)
    n = s.size
    y = np.log1p(np.maximum(s, 0.0))
    t = np.arange(n, dtype=np.float64)
    design = np.column_stack([np.ones(n), np.log1p(t)])
    try:
        beta, *_ = np.linalg.lstsq(design, y, rcond=None)
        e = y - design @ beta
    except np.linalg.LinAlgError:
        e = y - np.median(y)
    med = np.median(e)
    mad = np.median(np.abs(e - med))
    z = (e - med) / (mad + 1e-6)
    if mad == 0 or not np.isfinite(mad):
        return smooth([bool(v > 0) for v in z])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gm = GaussianMixture(n_components=2, covariance_type="diag", random_state=seed,
                                 max_iter=50, tol=1e-3, reg_covar=1e-6).fit(z[:, None])
            means = gm.means_.ravel()
            variances = np.maximum(gm.covariances_.ravel(), 1e-6)
            hmm = GaussianHMM(n_components=2, covariance_type="diag", init_params="",
                              params="")
            hmm.startprob_ = np.array([0.5, 0.5])
            hmm.transmat_ = np.array([[rho, 1 - rho], [1 - rho, rho]])
            hmm.means_ = means[:, None]
            hmm.covars_ = variances[:, None]
            _, states = hmm.decode(z[:, None], algorithm="viterbi")
        explore_state = int(np.argmax(means))
        labels = [bool(st == explore_state) for st in states]
    except Exception:  # the reference falls back on any numerical failure
        labels = [bool(v > 0) for v in z]
    return smooth(labels)


def analyse_trace(rows, rho=RHO, seed=0):
    """Labels and credit of one trace. Returns (labels, eff dict, red dict) or None."""
    if len(rows) < 3:
        return None
    seen = set()
    new_sets, slopes = [], []
    for row, tokens in rows:
        new = set(row) - seen
        seen |= set(row)
        new_sets.append(new)
        slopes.append(len(new) / tokens)
    labels = label_slopes(slopes, rho, seed)
    s_tilde = float(np.median(slopes))
    # runs and cycles
    runs = []
    start = 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i] != labels[start]:
            runs.append((labels[start], start, i))
            start = i
    cycles = []
    for k in range(len(runs) - 1):
        if runs[k][0] and not runs[k + 1][0]:
            cycles.append((range(runs[k][1], runs[k][2]), range(runs[k + 1][1], runs[k + 1][2])))
    valid = []
    for e_rows, x_rows in cycles:
        s_e = float(np.median([slopes[r] for r in e_rows]))
        s_x = float(np.median([slopes[r] for r in x_rows]))
        strength = s_e - s_tilde
        kappa = float(np.clip(1 - s_x / (s_e + 1e-6), 0, 1)) if s_e > 0 else 0.0
        introduced = set().union(*(new_sets[r] for r in e_rows))
        if strength <= 0 or not introduced:
            continue
        reuse = sum(m for r in x_rows for k, m in rows[r][0].items() if k in introduced)
        total = sum(m for r in x_rows for m in rows[r][0].values())
        valid.append((e_rows, kappa, reuse / (total + 1e-6)))
    eff, red = {}, {}
    finite_u = [u for _, _, u in valid if np.isfinite(u)]
    if not finite_u:
        return labels, eff, red
    u_tilde = float(np.median(finite_u))
    for e_rows, kappa, u in valid:
        p = u - u_tilde
        if p == 0 or not np.isfinite(p):
            continue
        if p > 0 and kappa > 0:
            target, scale = eff, p * kappa
        else:
            target, scale = red, abs(p)
        for r in e_rows:
            for k in new_sets[r]:
                target[k] = target.get(k, 0.0) + rows[r][0][k] * scale
    return labels, eff, red


def learn(corpus, rho=RHO, seed=0):
    """Per-trace loop over the corpus. Returns (weights float32 2^22, labels per trace)."""
    eff_all, red_all, all_labels = {}, {}, []
    for t in range(corpus.n_traces):
        result = analyse_trace(_rows_of_trace(corpus, t), rho, seed)
        if result is None:
            all_labels.append(None)
            continue
        labels, eff, red = result
        all_labels.append(labels)
        for k, v in eff.items():
            eff_all[k] = eff_all.get(k, 0.0) + v
        for k, v in red.items():
            red_all[k] = red_all.get(k, 0.0) + v
    weights = np.zeros(KEY_SPACE, np.float32)
    for k in set(eff_all) | set(red_all):
        weights[k] = np.tanh(np.log((eff_all.get(k, 0.0) + EPS) / (red_all.get(k, 0.0) + EPS)))
    return weights, all_labels


def score(corpus, weights):
    """GMF per trace from its aggregate (per-trace loop)."""
    agg = corpus.aggregate()
    out = np.empty(agg.n_traces)
    for t in range(agg.n_traces):
        a, b = agg.row_ptr[t], agg.row_ptr[t + 1]
        good = total = 0.0
        n = 0
        for k, m in zip(agg.keys[a:b].tolist(), agg.masses[a:b].astype(np.float64).tolist()):
            if (k >> 16) == 255:
                continue
            n += 1
            m = max(m, 0.0) if np.isfinite(m) else 0.0
            w = float(weights[k])
            good += m * max(w, 0.0)
            total += m * abs(w)
        out[t] = np.nan if n == 0 else (good / total if total > 0 else 0.0)
    return out
