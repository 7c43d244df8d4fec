"""Coverage: counts of responses that cannot carry credit, and the plain-words warning."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.evaluation.coverage import (REFERENCE_REGIME, TARGET_ROWS, infer_row_size,
                                           model_coverage)


def columns(rows):
    names = ("model_id", "n_rows", "n_kept_rows", "n_cycles", "n_effective_cycles",
             "n_redundant_cycles", "response_tokens")
    return {n: np.array([r[i] for r in rows], dtype=object if n == "model_id" else np.int64)
            for i, n in enumerate(names)}


def test_counts_and_warning_for_short_responses():
    # the GSM8K case of the issue: ~190 tokens in rows of 32, one cycle or none
    rows = [("m", 6, 6, 1, 0, 0, 190), ("m", 6, 6, 0, 0, 0, 185), ("m", 2, 0, 0, 0, 0, 40),
            ("m", 7, 7, 2, 1, 1, 200)]
    (entry,) = model_coverage(columns(rows), row_size=32, max_new_tokens=256)
    assert entry["n_responses"] == 4
    assert entry["n_skipped_too_few_rows"] == 1
    assert entry["n_fewer_than_2_cycles"] == 2
    assert entry["n_can_carry_credit"] == 1
    assert entry["n_credited_cycles"] == 2
    warning = entry["warning"]
    assert "NEX of m rests on 1 of 4 responses" in warning
    assert "1 had fewer than 3 rows, 2 fewer than 2 E->X cycles" in warning
    assert f"--row-size {int(187.5 // TARGET_ROWS)}" in warning  # median 187.5 tokens
    assert f"--max-new-tokens {TARGET_ROWS * 32}" in warning


def test_no_warning_when_most_responses_carry_credit():
    rows = [("a", 30, 30, 3, 2, 1, 120)] * 3 + [("a", 30, 30, 1, 0, 0, 120)]
    rows += [("b", 3, 3, 0, 0, 0, 12)] * 2
    a, b = model_coverage(columns(rows))
    assert a["model_id"] == "a" and a["warning"] is None and a["n_can_carry_credit"] == 3
    assert b["warning"] is not None and "rests on 0 of 2" in b["warning"]
    assert b["row_size"] == 4  # inferred: ceil(12 / 3)


def test_infer_row_size():
    assert infer_row_size([17, 32, 9], [3, 4, 2]) == 8
    assert infer_row_size([], []) is None


def test_advice_when_rows_are_already_small():
    rows = [("m", 40, 40, 1, 0, 0, 78)] * 3
    (entry,) = model_coverage(columns(rows), row_size=2, max_new_tokens=128)
    assert "only longer responses" in entry["warning"]
    assert "--row-size" not in entry["warning"]


def regime_columns(rows, late, coverage, gmf=None):
    out = columns(rows)
    out["late_novelty"] = np.array(late, float)
    out["pool_coverage"] = np.array(coverage, dtype=object)
    out["gmf"] = np.array(gmf if gmf is not None else [0.5] * len(rows), float)
    return out


def test_regime_is_the_median_over_scored_responses():
    rows = [("m", 60, 60, 3, 1, 1, 240)] * 4
    (entry,) = model_coverage(regime_columns(rows, [0.01, 0.2, 0.3, 0.9], [0.5, 0.02, 0.03, None],
                                             gmf=[0.5, 0.5, 0.5, np.nan]))
    assert entry["late_novelty"] == pytest.approx(0.2)     # 0.9 is not scored
    assert entry["pool_coverage"] == pytest.approx(0.03)
    assert entry["regime_warning"] is None


def test_regime_warning_for_saturated_and_stale_captures():
    rows = [("m", 60, 60, 3, 1, 1, 240)] * 3
    (entry,) = model_coverage(regime_columns(rows, [0.0, 0.004, 0.01], [0.84, 0.85, 0.86]),
                              top_k=100)
    warning = entry["regime_warning"]
    assert warning.startswith("the capture of m is outside the method's regime")
    assert "median late novelty 0.004" in warning and "uses 85 % of the hooked neurons" in warning
    assert "a larger model" in warning and "--top-k-neurons (now 100)" in warning
    assert "longer rows" in warning
    (entry,) = model_coverage(regime_columns(rows, [0.3] * 3, [0.4] * 3))
    assert "late novelty" not in entry["regime_warning"] and "40 %" in entry["regime_warning"]
    (entry,) = model_coverage(regime_columns(rows, [0.01] * 3, [None] * 3))
    assert "a larger model" not in entry["regime_warning"]


def test_no_regime_without_the_columns():
    (entry,) = model_coverage(columns([("m", 60, 60, 3, 1, 1, 240)]))
    assert entry["late_novelty"] is None and entry["regime_warning"] is None


def test_reference_regime_is_the_published_example():
    assert REFERENCE_REGIME["pool_coverage"] == pytest.approx(0.01003, abs=1e-5)
    assert REFERENCE_REGIME["late_novelty"] == 0.05542
