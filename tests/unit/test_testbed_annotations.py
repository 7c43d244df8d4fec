"""Human E/X annotations: loading, token spans to rows, kappa and span F1."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, strategies as st
from sklearn.metrics import cohen_kappa_score

from pipelines.testbed.annotations import (Annotation, agreement, annotate_by_structure,
                                           cohen_kappa, e_spans, load_annotations,
                                           match_spans, row_labels)
from pipelines.testbed.errors import TestbedError


@given(st.lists(st.tuples(st.sampled_from("EX"), st.sampled_from("EX")), min_size=1,
                max_size=60))
def test_kappa_matches_sklearn(pairs):
    gold, predicted = [p[0] for p in pairs], [p[1] for p in pairs]
    ours = cohen_kappa(gold, predicted)
    if len(set(gold) | set(predicted)) == 1:
        assert np.isnan(ours)          # chance agreement 1: undefined
        return
    assert ours == pytest.approx(cohen_kappa_score(gold, predicted), abs=1e-12)


def test_kappa_worked_example():
    # 10 rows: 8 agree; gold E 5/10, predicted E 5/10 -> p_e = 0.5, kappa = 0.6
    gold = list("EEEEEXXXXX")
    pred = list("EEEEXEXXXX")
    assert cohen_kappa(gold, pred) == pytest.approx(0.6)


def test_row_labels_from_token_spans():
    ann = Annotation(None, "p", 0, "token", ((0, 20, "E"), (20, 40, "X"), (50, 60, "E")))
    # rows of 16: [0,16) all E; [16,32) 4 E + 12 X; [32,48) X; [48,64) 10 E; [64,80) none
    assert row_labels(ann, 5, 16) == ["E", "X", "X", "E", None]
    tie = Annotation(None, "p", 0, "token", ((0, 8, "X"), (8, 16, "E")))
    assert row_labels(tie, 1, 16) == ["E"]
    rows = Annotation(None, "p", 0, "row", ((1, 3, "E"), (3, 4, "X")))
    assert row_labels(rows, 5, 16) == [None, "E", "E", "X", None]


def test_span_matching_and_f1():
    assert e_spans(list("EEXEXE"), [0, 1, 2, 3, 4, 6]) == [(0, 2), (3, 4), (6, 7)]
    # row gaps split spans: rows 3 and 5 are not consecutive
    assert e_spans(list("EE"), [3, 5]) == [(3, 4), (5, 6)]
    gold = [(0, 4), (10, 12)]
    predicted = [(1, 4), (8, 9), (11, 14)]
    # (0,4)-(1,4) IoU 3/4 matches; (10,12)-(11,14) IoU 1/4 does not
    assert match_spans(gold, predicted) == 1
    assert match_spans([(0, 4)], [(0, 2), (2, 4)]) == 1   # one-to-one: only one of them


def _tables():
    responses = {"trace_id": ["m:p:0", "m:p:1"], "prompt_id": ["p", "p"],
                 "sample_index": [0, 1], "model_id": ["m", "m"], "n_rows": [6, 4]}
    phases = {"trace_id": ["m:p:0"] * 6 + ["m:p:1"] * 4,
              "row": [0, 1, 2, 3, 4, 5, 0, 1, 2, 3],
              "label": list("EEXXEX") + list("EXXX")}
    return phases, responses


def test_agreement_worked_example(tmp_path):
    path = tmp_path / "ann.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"prompt_id": "p", "sample_index": 0, "unit": "row",
         "spans": [{"start": 0, "end": 3, "label": "E"}, {"start": 3, "end": 6, "label": "X"}]},
        {"trace_id": "m:p:1", "unit": "token", "spans": [[0, 10, "E"], [10, 40, "X"]]},
    ]) + "\n")
    phases, responses = _tables()
    result = agreement(load_annotations(path), phases, responses, row_size=10)
    # trace 0: gold EEEXXX vs HMM EEXXEX; trace 1: gold EXXX vs HMM EXXX
    gold, hmm = list("EEEXXX") + list("EXXX"), list("EEXXEX") + list("EXXX")
    assert result["n_rows_compared"] == 10
    assert result["kappa"] == pytest.approx(cohen_kappa_score(gold, hmm))
    assert result["row_agreement"] == pytest.approx(0.8)
    # gold spans (0,3), (0,1); HMM spans (0,2), (4,5), (0,1): (0,3)~(0,2) IoU 2/3, (0,1) exact
    span = result["span"]
    assert (span["matched"], span["n_gold"], span["n_predicted"]) == (2, 2, 3)
    assert span["precision"] == pytest.approx(2 / 3) and span["recall"] == 1.0
    assert span["f1"] == pytest.approx(0.8)
    assert [t["kappa"] for t in result["traces"]][1] == pytest.approx(1.0)


def test_agreement_names_missing_traces(tmp_path):
    path = tmp_path / "ann.jsonl"
    path.write_text(json.dumps({"prompt_id": "q", "spans": [[0, 1, "E"]]}) + "\n")
    phases, responses = _tables()
    with pytest.raises(TestbedError, match="1 not found"):
        agreement(load_annotations(path), phases, responses, row_size=10)


@pytest.mark.parametrize("line, message", [
    ('{"spans": [[0, 1, "E"]]}', "'trace_id' or a 'prompt_id'"),
    ('{"prompt_id": "p", "spans": []}', "non-empty list"),
    ('{"prompt_id": "p", "spans": [[3, 1, "E"]]}', "0 <= start < end"),
    ('{"prompt_id": "p", "spans": [[0, 4, "Z"]]}', "E or X"),
    ('{"prompt_id": "p", "spans": [[0, 4, "E"], [2, 6, "X"]]}', "no overlaps"),
    ('{"prompt_id": "p", "unit": "word", "spans": [[0, 4, "E"]]}', "unit"),
    ('not json', "invalid JSON"),
])
def test_bad_annotation_files(tmp_path, line, message):
    path = tmp_path / "a.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(TestbedError, match=message):
        load_annotations(path)


def test_structure_rule_labels_subgoals_as_exploration():
    text = "Start: Ana has 3 eggs.\nStep 1: She finds 2 eggs.\nNow: 3+2=5 eggs.\n#### 5"
    spans = annotate_by_structure(text)
    assert [s["label"] for s in spans] == ["E", "X"]
    assert spans[0] == {"start": 0, "end": text.index("Now:"), "label": "E"}
    assert spans[-1]["end"] == len(text)
