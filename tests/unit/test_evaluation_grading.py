"""Grading on hand-written responses: each answer style, wrong, ambiguous, missing."""

from __future__ import annotations

import json

import pytest

from pipelines.evaluation import (EvaluationError, Grade, extract_answer, grade_response,
                                  grade_traces, normalize_answer, read_labels,
                                  register_grader)
from pipelines.evaluation.grading import GRADERS, last_boxed


@pytest.mark.parametrize("text, style, answer", [
    ("So the total is \\boxed{42}.", "auto", "42"),
    ("First \\boxed{3}, then corrected: \\boxed{\\frac{1}{2}}", "auto", "\\frac{1}{2}"),
    ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "auto", "72"),
    ("She pays $1,250 in total.\n#### $1,250", "gsm8k", "1,250"),
    ("Adding them up, the answer is 17 apples.", "auto", "17"),
    ("Final answer: 3/4", "auto", "3/4"),
    ("4 * 8 = 32", "auto", "32"),
    ("There are 5 cats and 3 dogs, so 8 pets", "auto", "8"),
    ("no digits here at all", "auto", None),
    ("", "auto", None),
    ("#### 12", "hash", "12"),
    ("the answer is 12", "hash", None),
    ("\\boxed{x^2+1}", "boxed", "x^2+1"),
    ("the answer is 5", "boxed", None),
    ("unbalanced \\boxed{12", "boxed", None),
])
def test_extract_answer_styles(text, style, answer):
    assert extract_answer(text, style) == answer


@pytest.mark.parametrize("raw, normal", [
    ("1,000", "1000"), ("1000.0", "1000"), ("$18", "18"), ("18 dollars", "18"),
    ("\\frac{1}{2}", "1/2"), ("\\dfrac{3}{6}", "1/2"), ("0.5", "1/2"), ("50\\%", "50"),
    ("\\text{(A)}", "(a)"), ("x = 5", "5"), ("-3", "-3"), ("7.", "7"),
    ("\\left( 1, 2 \\right)", "(1,2)"), ("90^\\circ", "90"), ("", None), (None, None),
    ("1e3", "1000"),
])
def test_normalize_answer(raw, normal):
    assert normalize_answer(raw) == normal


def test_grade_right_wrong_missing_and_ambiguous():
    assert grade_response("#### 72", "72") == Grade("72", True)
    assert grade_response("The answer is 70.", "72") == Grade("70", False)
    # no answer at all: ungradable, not wrong
    assert grade_response("I do not know.", "72") == Grade(None, None)
    # no reference: ungradable even with an answer
    assert grade_response("#### 72", None) == Grade("72", None)
    # ambiguous: several numbers and no marker -> the last number is taken
    assert grade_response("Either 72 or 74, I think 74", "72") == Grade("74", False)
    # the last boxed answer wins over earlier ones and over "####"
    assert grade_response("\\boxed{1} ... #### 2 ... \\boxed{0.5}", "\\frac12").correct
    # a reference holding a whole GSM8K solution
    assert grade_response("so 18", "She makes 9 * 2 = 18 dollars.\n#### 18").correct
    # MATH-style fraction and LaTeX wrappers
    assert grade_response("\\boxed{\\dfrac{2}{4}}", "\\frac{1}{2}").correct
    assert grade_response("\\boxed{\\text{5 meters}}", "5").correct


def test_pluggable_grader():
    def exact(text, reference):
        return Grade(text.strip(), None if reference is None else text.strip() == reference)

    register_grader("exact-test", exact)
    try:
        assert grade_response(" yes ", "yes", "exact-test") == Grade("yes", True)
        assert grade_response("no", "yes", exact) == Grade("no", False)
    finally:
        GRADERS.pop("exact-test")
    with pytest.raises(EvaluationError, match="grader: expected one of"):
        grade_response("x", "y", "nonexistent")
    with pytest.raises(EvaluationError):
        register_grader("bad", 3)
    with pytest.raises(EvaluationError, match="answer style"):
        extract_answer("x", "weird")


def test_last_boxed_nested():
    assert last_boxed("\\boxed{\\frac{1}{\\sqrt{2}}}") == "\\frac{1}{\\sqrt{2}}"
    assert last_boxed("nothing") is None


def test_grade_traces_statuses_and_labels(tmp_path):
    traces = [
        {"trace_id": "a", "prompt_id": "p", "text": "#### 4", "reference_answer": "4"},
        {"trace_id": "b", "prompt_id": "p", "text": "#### 5", "reference_answer": "4"},
        {"trace_id": "c", "prompt_id": "p", "text": "hmm", "reference_answer": "4"},
        {"trace_id": "d", "prompt_id": "q", "text": "#### 9", "reference_answer": None},
        {"trace_id": "e", "prompt_id": "r", "text": "#### 1", "reference_answer": None},
        {"trace_id": "f", "prompt_id": "s", "text": "#### 3", "reference_answer": "3"},
    ]
    grades = grade_traces(traces)
    assert [(g["status"], g["correct"]) for g in grades] == [
        ("graded", True), ("graded", False), ("no_answer", None), ("no_reference", None),
        ("no_reference", None), ("graded", True)]
    labels_file = tmp_path / "labels.jsonl"
    labels_file.write_text("\n".join(json.dumps(r) for r in [
        {"prompt_id": "q", "answer": "9"},        # gold answer for a prompt
        {"trace_id": "e", "correct": False},      # a verdict for one trace
        {"prompt_id": "s", "correct": "0"},       # a verdict for a whole prompt
    ]) + "\n")
    labelled = grade_traces(traces, labels=read_labels(labels_file))
    assert [(g["status"], g["correct"]) for g in labelled][3:] == [
        ("graded", True), ("labelled", False), ("labelled", False)]
    csv_file = tmp_path / "labels.csv"
    csv_file.write_text("trace_id,correct\na,false\n")
    assert grade_traces(traces[:1], labels=read_labels(csv_file))[0]["correct"] is False


@pytest.mark.parametrize("content, message", [
    ('{"foo": 1}\n', "a 'trace_id' or 'prompt_id'"),
    ('{"trace_id": "a"}\n', "a 'correct' or an 'answer'"),
    ('{"trace_id": "a", "correct": "maybe"}\n', "true/false"),
    ('{"trace_id": "a", "correct": 1}\n{"trace_id": "a", "correct": 0}\n', "one row per trace_id"),
    ("not json\n", "a JSON object"),
    ("", "at least one row"),
])
def test_labels_file_errors(tmp_path, content, message):
    path = tmp_path / "labels.jsonl"
    path.write_text(content)
    with pytest.raises(EvaluationError, match=message):
        read_labels(path)


def test_labels_file_missing(tmp_path):
    with pytest.raises(EvaluationError, match="--labels: expected an existing"):
        read_labels(tmp_path / "nope.jsonl")
