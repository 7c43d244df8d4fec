"""Say when NEX cannot mean anything: how many responses could carry credit.

Credit needs a response with at least 3 kept rows (else it is skipped) and at least two
E->X cycles (progress is measured against the median reuse of the response's own
cycles, so a lone cycle credits nothing; METHOD.md section 4). This module counts, per
model, the responses of a ``responses`` table that fall short, and words a warning with
the row size and token budget that would give responses enough rows.

Works on plain dicts of columns (numpy arrays or lists), so ``nex score`` can use it on
the table it has just written.
"""

from __future__ import annotations

import math

import numpy as np

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
                   max_new_tokens: int | None = None) -> list[dict]:
    """Per model: responses, skipped (too few kept rows), with fewer than 2 cycles, able
    to carry credit, credited cycles, median tokens and rows, and a ``warning`` (None when
    enough responses can carry credit).

    ``columns`` needs ``model_id``, ``n_rows``, ``n_kept_rows``, ``n_cycles``,
    ``n_effective_cycles``, ``n_redundant_cycles`` and ``response_tokens``. ``row_size``
    and ``max_new_tokens`` (the capture's, when known) make the advice precise; the row
    size is otherwise inferred from the counts.
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
        out.append(entry)
    return out


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
    try:
        from ..store import ActivationStore

        capture = ActivationStore.open(store_path).metadata.get("capture") or {}
    except Exception:  # noqa: BLE001 - the advice falls back to inferred values
        return None, None
    generation = capture.get("generation") if isinstance(capture.get("generation"), dict) else {}
    return capture.get("row_size"), generation.get("max_new_tokens")


def tables_coverage(tables, store_path=None) -> list[dict]:
    """:func:`model_coverage` of a tables folder's responses (the store of its run.json,
    or ``store_path``, gives the capture's row size and token budget)."""
    from ..tables import read_run, read_table

    columns = read_table(tables, "responses").select(
        ["model_id", "n_rows", "n_kept_rows", "n_cycles", "n_effective_cycles",
         "n_redundant_cycles", "response_tokens"]).to_pydict()
    store_path = store_path or (read_run(tables).get("store") or {}).get("path")
    row_size, budget = capture_budget(store_path) if store_path else (None, None)
    return model_coverage(columns, row_size, budget)
