"""``nex eval``: grade the responses of scored tables, compare selectors, write a report.

    nex eval TABLES [TABLES ...] --report DIR [--labels FILE] [--store STORE]
             [--grader auto|gsm8k|hash|boxed] [--seed S] [--bootstrap B] [--bins K] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys

from nex_transforms.errors import CommandError

from ..evaluation import run_eval


def cmd_eval(args: argparse.Namespace) -> int:
    if args.bootstrap < 10:
        raise CommandError(f"--bootstrap: expected an integer >= 10, got {args.bootstrap}")
    if args.bins < 1:
        raise CommandError(f"--bins: expected an integer >= 1, got {args.bins}")
    summary = run_eval(args.tables, labels=args.labels, report_dir=args.report,
                       store=args.store, grader=args.grader, seed=args.seed,
                       n_boot=args.bootstrap, n_bins=args.bins)
    result = summary["result"]
    for model, entry in result["models"].items():
        for warning in (entry["coverage"]["warning"], entry["coverage"].get("regime_warning")):
            if warning:
                print(f"nex: warning: {warning}", file=sys.stderr)
    across = result["across_models"]
    if across and across["message"]:
        print(f"nex: warning: {across['message']}", file=sys.stderr)
    if args.json:
        print(json.dumps(result, sort_keys=True))
        return 0
    for model, entry in result["models"].items():
        d = entry["data"]
        line = (f"{model}: {d['n_prompts_evaluated']} prompts x {d['samples_min']} samples, "
                f"accuracy {_number(entry['accuracy'])}, {d['n_no_answer']} without an answer, "
                f"{d['n_no_reference']} without a reference")
        best = entry["best_of_n"]
        if best:
            n = best["random"]["n"][-1]
            picks = ", ".join(f"{name} {_number(series['accuracy'][-1])}"
                              for name, series in best.items())
            line += f"; best-of-{n}: {picks}"
        print(line)
    if across and not across["message"]:
        used = ", ".join(f"{m} {c['n_responses_used']} of {c['n_responses']} responses"
                         for m, c in across["counts"].items())
        nex = across["scores"].get("NEX")
        line = (f"across {len(across['models'])} models on {len(across['shared_prompts'])} "
                f"shared prompts ({used}): accuracy "
                + ", ".join(f"{m} {_number(a)}" for m, a in zip(across["models"],
                                                               across["accuracy"])))
        if nex:
            line += f"; NEX top-ranks {nex['top_ranked']}"
        print(line)
    print(f"report written to {summary['report_dir']} (report.md, report.html, report.json, "
          f"grades.parquet, {len(summary['plots'])} plots)")
    return 0


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def register(subparsers) -> None:
    """Add ``eval``: grading, selectors and the evaluation report."""
    p = subparsers.add_parser(
        "eval", help="grade scored responses, compare NEX with the baselines, write a report",
        description="Grade every response of one or more `nex score` output folders (the "
                    "store's response texts against its reference answers, or --labels), "
                    "then write to --report: best-of-N accuracy per selector (NEX, the "
                    "baselines, random, majority and NEX-weighted vote) with bootstrap "
                    "intervals over prompts, AUROC per score, accuracy across models (on the "
                    "prompts every model has), the "
                    "inverted-U, E/X phase plots (when scored with --phases), as report.md, "
                    "report.html (self-contained), report.json, grades.parquet and plots/*.png.")
    p.add_argument("tables", nargs="+", help="tables folders written by `nex score`")
    p.add_argument("--report", required=True, help="report folder (replaced atomically)")
    p.add_argument("--labels", default=None,
                   help="JSONL/CSV/Parquet with trace_id or prompt_id and correct (true/false) "
                        "or answer (gold answer)")
    p.add_argument("--store", default=None,
                   help="activation store with the response texts (default: run.json's store)")
    p.add_argument("--grader", default="auto",
                   help="answer format: auto (boxed, ####, 'the answer is', last number), "
                        "gsm8k, hash (#### only), boxed (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="bootstrap resamples (default %(default)s)")
    p.add_argument("--bins", type=int, default=5, help="inverted-U bins (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print every number as JSON")
    p.set_defaults(func=cmd_eval)
