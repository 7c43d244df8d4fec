"""Coverage: counts of responses that cannot carry credit, and the plain-words warning."""

from __future__ import annotations

import numpy as np

from pipelines.evaluation.coverage import TARGET_ROWS, infer_row_size, model_coverage


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
