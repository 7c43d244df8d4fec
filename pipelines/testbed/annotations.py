"""Human E/X span annotations and their agreement with the HMM labels.

Annotation file (JSONL), one response a line::

    {"prompt_id": "h1000003-0", "sample_index": 0,          # or "trace_id": "model:prompt:0"
     "unit": "token",                                       # or "row"
     "spans": [{"start": 0, "end": 48, "label": "E"}, {"start": 48, "end": 90, "label": "X"}],
     "response": "..."}                                     # optional: the annotated text

Spans are half-open ``[start, end)`` in response tokens (``unit: token``) or rows
(``unit: row``), labelled ``E`` (explore) or ``X`` (exploit), and must not overlap;
positions outside every span are unannotated. A file with ``response`` texts doubles
as a ``nex capture --responses`` file, so the annotated texts can be teacher-forced into
any model and then scored with ``--phases``.

Token spans become row labels with the capture's row size: a row takes the label that
covers most of its annotated tokens (ties go to ``E``); rows with no annotated token are
left out. Agreement with the ``phases`` table (the HMM's E/X per kept row):

* **Cohen's kappa** over rows, pooled over every annotated response (and per response):
  ``(p_o - p_e) / (1 - p_e)``, NaN when ``p_e = 1``;
* **span F1** of E spans: maximal runs of E rows in each labelling; a predicted span
  matches a gold one when their intersection over union (in rows) is at least 0.5,
  matched one-to-one greedily in order of overlap; precision, recall and F1 pooled
  over responses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nex_transforms.errors import expected

from .errors import TestbedError

LABELS = ("E", "X")
UNITS = ("token", "row")
IOU_MATCH = 0.5


@dataclass(frozen=True)
class Annotation:
    """One annotated response."""

    trace_id: str | None
    prompt_id: str | None
    sample_index: int
    unit: str
    spans: tuple[tuple[int, int, str], ...]


def load_annotations(path: str | Path) -> list[Annotation]:
    """Read and validate an annotation JSONL file."""
    path = Path(path)
    if not path.is_file():
        raise TestbedError(expected("annotations", "an existing JSONL file", str(path)))
    out: list[Annotation] = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path} line {number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise TestbedError(expected(where, "a JSON object", f"invalid JSON ({err.msg})")) \
                    from None
            if not isinstance(row, dict):
                raise TestbedError(expected(where, "a JSON object", type(row).__name__))
            trace_id, prompt_id = row.get("trace_id"), row.get("prompt_id")
            if not isinstance(trace_id, str) and not isinstance(prompt_id, (str, int)):
                raise TestbedError(expected(where, "a 'trace_id' or a 'prompt_id'",
                                            f"fields {sorted(row)}"))
            sample = row.get("sample_index", 0)
            if not isinstance(sample, int) or isinstance(sample, bool) or sample < 0:
                raise TestbedError(expected(f"{where} sample_index", "an integer >= 0",
                                            repr(sample)))
            unit = row.get("unit", "token")
            if unit not in UNITS:
                raise TestbedError(expected(f"{where} unit", f"one of {UNITS}", repr(unit)))
            spans = row.get("spans")
            if not isinstance(spans, list) or not spans:
                raise TestbedError(expected(f"{where} spans", "a non-empty list", repr(spans)))
            parsed = []
            for span in spans:
                if isinstance(span, dict):
                    start, end, label = span.get("start"), span.get("end"), span.get("label")
                elif isinstance(span, (list, tuple)) and len(span) == 3:
                    start, end, label = span
                else:
                    raise TestbedError(expected(f"{where} span", "{start, end, label}",
                                                repr(span)))
                if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, end)) \
                        or start < 0 or end <= start:
                    raise TestbedError(expected(f"{where} span", "integers 0 <= start < end",
                                                f"[{start!r}, {end!r})"))
                if label not in LABELS:
                    raise TestbedError(expected(f"{where} span label", "E or X", repr(label)))
                parsed.append((start, end, label))
            parsed.sort()
            for (s0, e0, _), (s1, _, _) in zip(parsed, parsed[1:]):
                if s1 < e0:
                    raise TestbedError(expected(f"{where} spans", "no overlaps",
                                                f"[{s0}, {e0}) and one starting at {s1}"))
            out.append(Annotation(trace_id if isinstance(trace_id, str) else None,
                                  None if prompt_id is None else str(prompt_id), sample, unit,
                                  tuple(parsed)))
    if not out:
        raise TestbedError(expected(f"annotations {path}", "at least one annotated response",
                                    "an empty file"))
    return out


def row_labels(annotation: Annotation, n_rows: int, row_size: int) -> list[str | None]:
    """Per row of a response, the annotated label or None (unannotated)."""
    if annotation.unit == "row":
        labels: list[str | None] = [None] * n_rows
        for start, end, label in annotation.spans:
            for row in range(start, min(end, n_rows)):
                labels[row] = label
        return labels
    if row_size < 1:
        raise TestbedError(expected("row size", "an integer >= 1", row_size))
    counts = np.zeros((n_rows, 2), dtype=np.int64)
    for start, end, label in annotation.spans:
        column = LABELS.index(label)
        for row in range(start // row_size, min(n_rows, -(-end // row_size))):
            lo, hi = max(start, row * row_size), min(end, (row + 1) * row_size)
            counts[row, column] += max(0, hi - lo)
    return [None if c.sum() == 0 else ("E" if c[0] >= c[1] else "X") for c in counts]


def cohen_kappa(gold, predicted) -> float:
    """Cohen's kappa of two equal-length label sequences over ``E``/``X``; NaN when the
    chance agreement is 1 (both labellings constant and equal)."""
    gold, predicted = np.asarray(gold), np.asarray(predicted)
    if gold.shape != predicted.shape or gold.size == 0:
        raise TestbedError(expected("label sequences", "two non-empty sequences of one length",
                                    f"{gold.size} and {predicted.size}"))
    observed = float(np.mean(gold == predicted))
    chance = sum(float(np.mean(gold == label)) * float(np.mean(predicted == label))
                 for label in np.union1d(gold, predicted))
    if chance >= 1.0:
        return float("nan")
    return (observed - chance) / (1.0 - chance)


def e_spans(labels, rows) -> list[tuple[int, int]]:
    """Maximal runs of ``E`` over consecutive row indices, as half-open ``[start, end)``."""
    spans: list[tuple[int, int]] = []
    for label, row in zip(labels, rows):
        if label != "E":
            continue
        if spans and spans[-1][1] == row:
            spans[-1] = (spans[-1][0], row + 1)
        else:
            spans.append((row, row + 1))
    return spans


def match_spans(gold: list[tuple[int, int]], predicted: list[tuple[int, int]],
                threshold: float = IOU_MATCH) -> int:
    """Number of one-to-one matches with intersection over union >= ``threshold``."""
    pairs = []
    for i, (gs, ge) in enumerate(gold):
        for j, (ps, pe) in enumerate(predicted):
            inter = max(0, min(ge, pe) - max(gs, ps))
            union = max(ge, pe) - min(gs, ps)
            if union > 0 and inter / union >= threshold:
                pairs.append((-inter / union, i, j))
    used_gold, used_pred, matched = set(), set(), 0
    for _, i, j in sorted(pairs):
        if i not in used_gold and j not in used_pred:
            used_gold.add(i)
            used_pred.add(j)
            matched += 1
    return matched


def _f1(matched: int, n_gold: int, n_pred: int) -> dict:
    precision = matched / n_pred if n_pred else float("nan")
    recall = matched / n_gold if n_gold else float("nan")
    f1 = (2 * precision * recall / (precision + recall)
          if n_pred and n_gold and precision + recall > 0 else
          (0.0 if n_pred and n_gold else float("nan")))
    return {"matched": matched, "n_gold": n_gold, "n_predicted": n_pred,
            "precision": precision, "recall": recall, "f1": f1}


def agreement(annotations: list[Annotation], phases, responses, row_size: int,
              model_id: str | None = None) -> dict:
    """Agreement of ``annotations`` with the HMM labels of a ``phases`` table.

    Args:
        annotations: from :func:`load_annotations`.
        phases, responses: the ``phases`` and ``responses`` tables (pyarrow tables or
            dicts of columns) of one ``nex score --phases`` run.
        row_size: tokens per row of the capture (for token spans).
        model_id: resolves annotations given by prompt id and sample index (required
            when the tables hold several models).

    Returns:
        pooled kappa and span F1, and per response the rows compared, both label
        strings, kappa and span matches.
    """
    ph = phases.to_pydict() if hasattr(phases, "to_pydict") else dict(phases)
    rs = responses.to_pydict() if hasattr(responses, "to_pydict") else dict(responses)
    models = sorted(set(rs["model_id"]))
    if model_id is None and len(models) > 1:
        raise TestbedError(expected("--model-id", f"one of {models} (the tables hold several "
                                    "models)", "none"))
    model = model_id or (models[0] if models else None)
    by_key = {(m, p, int(s)): t for t, m, p, s in zip(rs["trace_id"], rs["model_id"],
                                                    rs["prompt_id"], rs["sample_index"])}
    n_rows = dict(zip(rs["trace_id"], (int(n) for n in rs["n_rows"])))
    hmm: dict[str, dict[int, str]] = {}
    for trace, row, label in zip(ph["trace_id"], ph["row"], ph["label"]):
        hmm.setdefault(trace, {})[int(row)] = label
    gold_all, pred_all, traces = [], [], []
    matched = n_gold = n_pred = 0
    missing = []
    for ann in annotations:
        trace = ann.trace_id or by_key.get((model, ann.prompt_id, ann.sample_index))
        if trace is None or trace not in n_rows:
            missing.append(ann.trace_id or f"{ann.prompt_id}:{ann.sample_index}")
            continue
        gold_rows = row_labels(ann, n_rows[trace], row_size)
        labelled = hmm.get(trace, {})
        rows = [r for r in range(n_rows[trace]) if gold_rows[r] is not None and r in labelled]
        if not rows:
            traces.append({"trace_id": trace, "n_rows_compared": 0, "kappa": float("nan")})
            continue
        gold = [gold_rows[r] for r in rows]
        pred = [labelled[r] for r in rows]
        gs, ps = e_spans(gold, rows), e_spans(pred, rows)
        m = match_spans(gs, ps)
        matched, n_gold, n_pred = matched + m, n_gold + len(gs), n_pred + len(ps)
        gold_all += gold
        pred_all += pred
        traces.append({"trace_id": trace, "n_rows_compared": len(rows), "rows": rows,
                       "gold": "".join(gold), "hmm": "".join(pred),
                       "kappa": cohen_kappa(gold, pred), "row_agreement":
                       float(np.mean(np.array(gold) == np.array(pred))),
                       "span_matches": m, "n_gold_spans": len(gs), "n_hmm_spans": len(ps)})
    if missing:
        raise TestbedError(expected("annotated responses", "traces of the tables "
                                    f"(model {model!r})", f"{len(missing)} not found, e.g. "
                                    f"{missing[:3]}"))
    return {"model_id": model, "row_size": row_size, "n_annotations": len(annotations),
            "n_rows_compared": len(gold_all),
            "kappa": cohen_kappa(gold_all, pred_all) if gold_all else float("nan"),
            "row_agreement": float(np.mean(np.array(gold_all) == np.array(pred_all)))
            if gold_all else float("nan"),
            "gold_e_fraction": float(np.mean(np.array(gold_all) == "E")) if gold_all else
            float("nan"),
            "hmm_e_fraction": float(np.mean(np.array(pred_all) == "E")) if pred_all else
            float("nan"),
            "span": _f1(matched, n_gold, n_pred), "iou_threshold": IOU_MATCH,
            "traces": traces}


def annotate_by_structure(response: str) -> list[dict]:
    """E/X token spans of a testbed solution from its line structure (how the shipped
    annotation file was labelled): a line that opens a new sub-goal (``Start:``,
    ``Step k:`` and the work line that computes a new quantity) is exploration; a line
    that reuses quantities already found (``Now:`` running totals, ``Check:``, the
    recount, the conclusion and ``####``) is exploitation. Character positions are token
    positions under the testbed tokenizer."""
    spans: list[dict] = []
    position = 0
    for line in response.split("\n"):
        end = position + len(line) + 1  # the newline belongs to its line
        end = min(end, len(response))
        explore = line.startswith(("Start:", "Step "))
        label = "E" if explore else "X"
        if spans and spans[-1]["label"] == label and spans[-1]["end"] == position:
            spans[-1]["end"] = end
        elif end > position:
            spans.append({"start": position, "end": end, "label": label})
        position = end
    return spans
