"""Checkpoints ranked by NEX within each calibration set, and the ranking as text."""

from __future__ import annotations

import math


def _nan_last(value: float | None) -> float:
    return math.inf if value is None or math.isnan(value) else -value


def rank_rows(rows: list[dict], calibration_set: str | None = None) -> list[dict]:
    """Catalog rows ranked by NEX (highest first, NaN last) within each calibration set;
    each row gets ``rank`` (1-based within its set)."""
    rows = [r for r in rows if calibration_set is None or r["calibration_set"] == calibration_set]
    rows.sort(key=lambda r: (r["calibration_set"], _nan_last(r["nex"]), r["checkpoint"]))
    out, counts = [], {}
    for row in rows:
        counts[row["calibration_set"]] = counts.get(row["calibration_set"], 0) + 1
        out.append(dict(row, rank=counts[row["calibration_set"]]))
    return out


def format_ranking(rows: list[dict]) -> str:
    """The ranking as a fixed-width text table (one screen)."""
    header = (f"{'rank':>4}  {'checkpoint':<28} {'calibration':<14} {'NEX':>8} {'log-gap':>8} "
              f"{'scored':>7} {'entropy':>8} {'self-cert':>9} {'logprob':>8} {'DeepConf':>8}")
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['rank']:>4}  {r['checkpoint'][:28]:<28} {r['calibration_set'][:14]:<14} "
            f"{r['nex']:>8.5f} {r['log_gap']:>8.4f} {r['n_scored']:>3}/{r['n_responses']:<3} "
            f"{r['mean_entropy']:>8.3f} {r['mean_self_certainty']:>9.3f} "
            f"{r['mean_token_logprob']:>8.3f} {r['deepconf_mean_confidence']:>8.3f}")
    return "\n".join(lines)


__all__ = ["format_ranking", "rank_rows"]
