"""Say when NEX cannot mean anything: how many responses could carry credit.

Credit needs a response with at least 3 kept rows (else it is skipped) and at least two
E->X cycles (progress is measured against the median reuse of the response's own
cycles, so a lone cycle credits nothing; METHOD.md section 4). This module counts, per
model, the responses of a ``responses`` table that fall short, and words a warning with
the row size and token budget that would give responses enough rows.

It also says when a capture is out of the method's regime (see
``nex_transforms.diagnostics``): NEX reads exploration from neurons a response uses for
the first time, so it needs late rows that still bring new neurons (late novelty) and a
neuron pool far larger than a response uses (pool coverage).

Works on plain dicts of columns (numpy arrays or lists), so ``nex score`` can use it on
the table it has just written.
"""

from __future__ import annotations

import math

import numpy as np

from nex_transforms.diagnostics import median_over

from ..store import ActivationStore
from ..tables import read_run, read_table

#: Rows a response should have for two or more E->X cycles. From data, not theory: the
#: published reference response has 4 cycles in 83 rows (about 20 rows a cycle), and
#: SmolLM2-135M GSM8K responses of 8-32 rows (rows of 8 tokens) had at most one cycle
#: each (docs/results.md). A heuristic for the advice below, not a guarantee.
TARGET_ROWS = 48
#: Warn when fewer than this fraction of a model's responses can carry credit.
MIN_CREDITABLE_FRACTION = 0.5
MIN_CYCLES_FOR_CREDIT = 2
#: Smallest row size the advice suggests (a novelty slope over one token is all noise).
MIN_ROW_SIZE = 2

#: The published reference example (METHOD.md section 6), the regime the method was shown
#: in: one Qwen3-4B response of 83 rows of 32 tokens, 3,514 of 36 x 9,728 = 350,208 hooked
#: neurons (tests/unit/test_diagnostics.py).
REFERENCE_REGIME = {"rows": 83, "row_size": 32, "late_novelty": 0.05542,
                    "pool_coverage": 3514 / 350_208, "n_can_carry_credit": 1, "n_responses": 1}
#: Warn when a model's median late novelty is below this. A heuristic, between measured
#: captures (docs/results.md, "Regime of each capture"): the reference example has 0.055
#: and the shipped models' captures 0.15-0.43, while the saturated testbed captures, whose
#: novelty series is mostly noise, have 0.006-0.015.
MIN_LATE_NOVELTY = 0.02
#: Warn when a model's median pool coverage is above this. A heuristic, from the same
#: captures: the reference example uses 1.0 % of its pool and the shipped models' captures
#: 1.3-8.7 %, while the saturated testbed captures use 71-84 %.
MAX_POOL_COVERAGE = 0.25


def infer_row_size(response_tokens, n_rows) -> int | None:
    """The row size of a capture, from responses' token and row counts: the largest
    ``ceil(tokens / rows)`` (every row but the last is full). None without data."""
    tokens = np.asarray(response_tokens, dtype=float)
    rows = np.asarray(n_rows, dtype=float)
    keep = (rows > 0) & np.isfinite(tokens)
    if not keep.any():
        return None
    return int(np.max(np.ceil(tokens[keep] / rows[keep])))


def model_coverage(columns: dict, row_size: int | None = None,
                   max_new_tokens: int | None = None, top_k: int | None = None) -> list[dict]:
    """Per model: responses, skipped (too few kept rows), with fewer than 2 cycles, able
    to carry credit, credited cycles, median tokens and rows, and a ``warning`` (None when
    enough responses can carry credit).

    ``columns`` needs ``model_id``, ``n_rows``, ``n_kept_rows``, ``n_cycles``,
    ``n_effective_cycles``, ``n_redundant_cycles`` and ``response_tokens``. ``row_size``
    and ``max_new_tokens`` (the capture's, when known) make the advice precise; the row
    size is otherwise inferred from the counts.

    With ``gmf``, ``late_novelty`` and ``pool_coverage`` columns (tables of schema 3) each
    entry also holds the model's regime: the medians over its scored responses (as in the
    models table) and a ``regime_warning`` (None when in regime or unknown); ``top_k`` (the
    capture's top-K per row) sharpens that advice.
    """
    model_ids = np.asarray(columns["model_id"], dtype=object)
    out = []
    for model in sorted(set(model_ids.tolist())):
        member = model_ids == model
        pick = {k: np.asarray(columns[k])[member] for k in
                ("n_rows", "n_kept_rows", "n_cycles", "n_effective_cycles",
                 "n_redundant_cycles", "response_tokens")}
        n = int(member.sum())
        skipped = int((pick["n_kept_rows"] == 0).sum())
        few_cycles = int(((pick["n_kept_rows"] > 0)
                          & (pick["n_cycles"] < MIN_CYCLES_FOR_CREDIT)).sum())
        creditable = n - skipped - few_cycles
        credited = int(pick["n_effective_cycles"].sum() + pick["n_redundant_cycles"].sum())
        size = row_size or infer_row_size(pick["response_tokens"], pick["n_rows"])
        median_tokens = float(np.median(pick["response_tokens"])) if n else float("nan")
        median_rows = float(np.median(pick["n_rows"])) if n else float("nan")
        entry = {"model_id": model, "n_responses": n, "n_skipped_too_few_rows": skipped,
                 "n_fewer_than_2_cycles": few_cycles, "n_can_carry_credit": creditable,
                 "n_credited_cycles": credited, "row_size": size,
                 "median_response_tokens": median_tokens, "median_rows": median_rows,
                 "warning": None}
        if n and (creditable < MIN_CREDITABLE_FRACTION * n or credited == 0):
            entry["warning"] = coverage_warning(entry, max_new_tokens)
        entry.update(_regime(columns, member))
        entry["regime_warning"] = regime_warning(entry, top_k)
        out.append(entry)
    return out


def _regime(columns: dict, member: np.ndarray) -> dict:
    """Median late novelty and pool coverage over a model's scored responses (None where
    the columns are missing, as in tables written before schema 3)."""
    if not {"gmf", "late_novelty", "pool_coverage"} <= set(columns):
        return {"late_novelty": None, "pool_coverage": None}
    scored = np.isfinite(np.asarray(columns["gmf"], np.float64)[member])
    out = {}
    for name in ("late_novelty", "pool_coverage"):
        values = np.array([np.nan if v is None else v for v in
                           np.asarray(columns[name], dtype=object)[member]], np.float64)
        median = median_over(values[scored])
        out[name] = median if math.isfinite(median) else None
    return out


def regime_warning(entry: dict, top_k: int | None = None) -> str | None:
    """The plain-words warning when a model's capture is out of the method's regime (median
    late novelty below :data:`MIN_LATE_NOVELTY` or median pool coverage above
    :data:`MAX_POOL_COVERAGE`), with what would help; None otherwise."""
    late, coverage = entry.get("late_novelty"), entry.get("pool_coverage")
    low_novelty = late is not None and late < MIN_LATE_NOVELTY
    saturated = coverage is not None and coverage > MAX_POOL_COVERAGE
    if not (low_novelty or saturated):
        return None
    ref = REFERENCE_REGIME
    found = []
    if low_novelty:
        found.append(f"late rows bring almost no neuron the response has not used yet "
                     f"(median late novelty {late:.3f}; the published example has "
                     f"{ref['late_novelty']:.3f})")
    if saturated:
        found.append(f"a response uses {100 * coverage:.0f} % of the hooked neurons (median; "
                     f"the published example uses {100 * ref['pool_coverage']:.1f} %)")
    k = f" (now {top_k})" if top_k else ""
    helps = []
    if saturated:
        helps.append("a larger model (more neurons to draw from)")
    helps.append(f"a smaller --top-k-neurons{k}")
    if low_novelty:
        helps.append("longer rows (--row-size) and longer responses")
    return (f"the capture of {entry['model_id']} is outside the method's regime: "
            + " and ".join(found) + ". NEX reads exploration from neurons a response uses "
            "for the first time, so its scores say little here; " + ", ".join(helps[:-1])
            + (" or " if len(helps) > 1 else "") + helps[-1] + " would help.")


def coverage_warning(entry: dict, max_new_tokens: int | None = None) -> str:
    """The plain-words warning for one model's coverage entry."""
    n, size = entry["n_responses"], entry["row_size"]
    tokens = entry["median_response_tokens"]
    text = (f"NEX of {entry['model_id']} rests on {entry['n_can_carry_credit']} of {n} "
            f"responses ({entry['n_skipped_too_few_rows']} had fewer than 3 rows, "
            f"{entry['n_fewer_than_2_cycles']} fewer than {MIN_CYCLES_FOR_CREDIT} E->X "
            f"cycles; {entry['n_credited_cycles']} cycles credited), so its scores say little. "
            f"Responses have a median of {tokens:.0f} tokens")
    if size:
        text += f" = {entry['median_rows']:.0f} rows of {size} tokens"
        wanted = max(MIN_ROW_SIZE, math.floor(tokens / TARGET_ROWS)) if math.isfinite(tokens) \
            else MIN_ROW_SIZE
        advice = []
        if wanted < size:
            advice.append(f"capture with --row-size {wanted} (about {TARGET_ROWS} rows a response)")
        budget = TARGET_ROWS * size
        if max_new_tokens is None or budget > max_new_tokens:
            advice.append(f"let responses run longer (--max-new-tokens {budget} or more, "
                          f"prompts that ask for step-by-step work)")
        if not advice:
            advice.append("the row size is already small and the token budget is not the "
                          "limit: only longer responses (prompts that draw longer answers) "
                          "would give more rows")
        text += "; " + " or ".join(advice)
    return text + "."


def capture_budget(store_path) -> tuple[int | None, int | None]:
    """``(row_size, max_new_tokens)`` recorded in a store's capture metadata (None where
    unknown, e.g. an imported row cache or an unreadable store)."""
    capture = _capture(store_path)
    generation = capture.get("generation") if isinstance(capture.get("generation"), dict) else {}
    return capture.get("row_size"), generation.get("max_new_tokens")


def capture_top_k(store_path) -> int | None:
    """The top-K per row recorded in a store's capture metadata (None where unknown)."""
    value = _capture(store_path).get("top_k_neurons")
    return value if isinstance(value, int) else None


def _capture(store_path) -> dict:
    """A store's capture metadata ({} where unreadable)."""
    try:
        capture = ActivationStore.open(store_path).metadata.get("capture") or {}
    except Exception:  # noqa: BLE001 - the advice falls back to inferred values
        return {}
    return capture if isinstance(capture, dict) else {}


def tables_coverage(tables, store_path=None) -> list[dict]:
    """:func:`model_coverage` of a tables folder's responses (the store of its run.json,
    or ``store_path``, gives the capture's row size and token budget)."""
    responses = read_table(tables, "responses")
    wanted = ["model_id", "n_rows", "n_kept_rows", "n_cycles", "n_effective_cycles",
              "n_redundant_cycles", "response_tokens", "gmf", "late_novelty", "pool_coverage"]
    columns = responses.select([c for c in wanted if c in responses.column_names]).to_pydict()
    store_path = store_path or (read_run(tables).get("store") or {}).get("path")
    row_size, budget = capture_budget(store_path) if store_path else (None, None)
    top_k = capture_top_k(store_path) if store_path else None
    return model_coverage(columns, row_size, budget, top_k)


def warnings_of(entries: list[dict]) -> list[str]:
    """The coverage and regime warnings of :func:`model_coverage` entries, in order (what
    ``nex score`` prints after scoring)."""
    return [w for entry in entries for w in (entry["warning"], entry.get("regime_warning")) if w]
