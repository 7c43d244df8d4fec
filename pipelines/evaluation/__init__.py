"""Evaluation: does NEX pick the better response and the better model?

Grade responses (:mod:`.grading`, :mod:`.labels`), select with NEX and the baselines
(:mod:`.selectors`), compute best-of-N, AUROC, rank correlations and the inverted-U
(:mod:`.statistics`, :mod:`.evaluate`), say when NEX cannot mean anything
(:mod:`.coverage`), and write a report (:mod:`.report`, :mod:`.plots`)::

    from pipelines.evaluation import run_eval
    summary = run_eval(["tables"], labels=None, report_dir="report")

``nex eval TABLES... [--labels FILE] --report DIR`` is the command-line form.
"""

from __future__ import annotations

from pathlib import Path

from .coverage import model_coverage
from .evaluate import EvalData, evaluate, load_eval_data
from .grading import (GRADERS, EvaluationError, Grade, extract_answer, get_grader,
                      grade_response, normalize_answer, register_grader)
from .labels import grade_traces, read_labels
from .report import write_report


def run_eval(tables_dirs, labels=None, report_dir="report", *, store=None, grader="auto",
             seed: int = 0, n_boot: int = 1000, n_bins: int = 5) -> dict:
    """Grade, evaluate and write the report of one or more tables folders.

    Args:
        tables_dirs: ``nex score`` output folders (a path or a list of paths).
        labels: optional labels file (trace or prompt id -> correct, or -> gold answer).
        report_dir: folder for report.md, report.html, report.json, grades.parquet, plots/.
        store: the activation store with the response texts (default: each folder's
            ``run.json`` store path).
        grader: a grader name (``auto``, ``gsm8k``, ``hash``, ``boxed`` or one added with
            :func:`register_grader`) or a callable ``(text, reference) -> Grade``.
        seed, n_boot: bootstrap seed and resamples; n_bins: bins of the inverted-U.

    Returns:
        ``{"result": <every number>, "report_dir": ..., "files": [...], "plots": [...]}``.
    """
    if isinstance(tables_dirs, (str, Path)):
        tables_dirs = [tables_dirs]
    data = load_eval_data(list(tables_dirs), labels=labels, store=store, grader=grader)
    result = evaluate(data, seed=seed, n_boot=n_boot, n_bins=n_bins)
    written = write_report(result, data.grades, report_dir)
    return {"result": result, **written}


__all__ = ["EvalData", "EvaluationError", "GRADERS", "Grade", "evaluate", "extract_answer",
           "get_grader", "grade_response", "grade_traces", "load_eval_data", "model_coverage",
           "normalize_answer", "read_labels", "register_grader", "run_eval", "write_report"]
