"""Grades of responses: from the store's response text and reference answer, or from a
labels file, into a ``grades`` table.

The ``grades`` table (one row per response, Parquet when written by ``nex eval``):

| column | type | meaning |
| --- | --- | --- |
| ``trace_id`` | string | the response |
| ``prompt_id`` | string | its prompt |
| ``answer`` | string, nullable | extracted, normalised answer (None: none found / not known) |
| ``reference`` | string, nullable | normalised reference answer of the prompt |
| ``correct`` | bool, nullable | graded correctness; None when ungradable |
| ``status`` | string | ``graded``, ``labelled`` (given by a labels file), ``no_answer`` (no answer could be extracted: counts as wrong in accuracies), ``no_reference`` (the prompt has no reference answer: left out) |

A labels file (JSONL, CSV or Parquet) gives, per row, ``trace_id`` or ``prompt_id`` and
either ``correct`` (true/false, 1/0) or ``answer`` (the gold answer, graded with the
chosen grader). Trace rows override prompt rows; prompt ``answer`` rows replace the
store's reference answer.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from nex_transforms.errors import expected

from ..store import ActivationStore
from .grading import EvaluationError, Grader, get_grader, normalize_answer

GRADE_STATUSES = ("graded", "labelled", "no_answer", "no_reference")


def _truth(value, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise EvaluationError(expected(f"{where} 'correct'", "true/false or 1/0", repr(value)))


def read_labels(path: str | Path) -> dict[str, dict]:
    """Read a labels file into ``{"trace": {id: row}, "prompt": {id: row}}`` where each
    row has ``correct`` (bool) and/or ``answer`` (str)."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(expected("--labels", "an existing .jsonl, .csv or .parquet file",
                                       str(path)))
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = pq.read_table(path).to_pylist()
        elif suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
        else:
            rows = []
            with open(path, encoding="utf-8") as handle:
                for number, line in enumerate(handle, 1):
                    if line.strip():
                        try:
                            rows.append(json.loads(line))
                        except json.JSONDecodeError as err:
                            raise EvaluationError(expected(f"{path} line {number}", "a JSON object",
                                                           f"invalid JSON ({err.msg})")) from None
    except EvaluationError:
        raise
    except Exception as err:  # unreadable Parquet / CSV
        raise EvaluationError(expected(f"labels file {path}", "a readable table",
                                       f"{type(err).__name__}: {err}")) from None
    if not rows:
        raise EvaluationError(expected(f"labels file {path}", "at least one row", "none"))
    labels: dict[str, dict] = {"trace": {}, "prompt": {}}
    for number, row in enumerate(rows, 1):
        where = f"{path} row {number}"
        if not isinstance(row, dict):
            raise EvaluationError(expected(where, "an object", type(row).__name__))
        if row.get("trace_id") not in (None, ""):
            kind, key = "trace", str(row["trace_id"])
        elif row.get("prompt_id") not in (None, ""):
            kind, key = "prompt", str(row["prompt_id"])
        else:
            raise EvaluationError(expected(where, "a 'trace_id' or 'prompt_id'",
                                           f"fields {sorted(row)}"))
        entry: dict = {}
        if row.get("correct") not in (None, ""):
            entry["correct"] = _truth(row["correct"], where)
        if row.get("answer") not in (None, ""):
            entry["answer"] = str(row["answer"])
        if not entry:
            raise EvaluationError(expected(where, "a 'correct' or an 'answer' value",
                                           f"fields {sorted(row)}"))
        if key in labels[kind]:
            raise EvaluationError(expected(where, f"one row per {kind}_id",
                                           f"a second row for {key!r}"))
        labels[kind][key] = entry
    return labels


def grade_traces(traces: list[dict], grader: str | Grader = "auto",
                 labels: dict[str, dict] | None = None) -> list[dict]:
    """Grade responses. ``traces`` rows need ``trace_id``, ``prompt_id``, ``text`` and
    ``reference_answer`` (None when unknown). Returns rows of the ``grades`` table."""
    grade = get_grader(grader)
    labels = labels or {"trace": {}, "prompt": {}}
    grades = []
    for trace in traces:
        trace_id, prompt_id = str(trace["trace_id"]), str(trace["prompt_id"])
        by_trace = labels["trace"].get(trace_id, {})
        by_prompt = labels["prompt"].get(prompt_id, {})
        text = trace.get("text") or ""
        reference = by_trace.get("answer", by_prompt.get("answer", trace.get("reference_answer")))
        if "correct" in by_trace or ("correct" in by_prompt and "answer" not in by_trace):
            correct = by_trace.get("correct", by_prompt.get("correct"))
            graded = grade(text, reference) if text else None
            grades.append({"trace_id": trace_id, "prompt_id": prompt_id,
                           "answer": graded.answer if graded else None,
                           "reference": normalize_answer(reference) if reference else None,
                           "correct": bool(correct), "status": "labelled"})
            continue
        result = grade(text, reference)
        if reference is None or normalize_answer(reference) is None:
            status, correct = "no_reference", None
        elif result.correct is None:
            status, correct = "no_answer", None
        else:
            status, correct = "graded", bool(result.correct)
        grades.append({"trace_id": trace_id, "prompt_id": prompt_id, "answer": result.answer,
                       "reference": normalize_answer(reference) if reference else None,
                       "correct": correct, "status": status})
    return grades


def store_traces(store_path: str | Path) -> list[dict]:
    """``trace_id``, ``prompt_id``, ``text``, ``reference_answer`` and ``finish_reason``
    of every trace of an activation store (from its manifest)."""
    store = ActivationStore.open(store_path)
    table = store.manifest()
    columns = [c for c in ("trace_id", "prompt_id", "text", "reference_answer", "finish_reason")
               if c in table.column_names]
    return table.select(columns).to_pylist()
