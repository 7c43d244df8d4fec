"""``nex rows-cache``: learn, score and label caches in the published row-cache layout."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from nex_transforms import KEY_SPACE, NexParams, WeightsError, accumulate, analyse, score_corpus
from nex_transforms.errors import expected

from ..crashsafe import atomic_write, atomic_write_json
from ..rows_cache import read_rows_cache
from ..weights_io import load_weights, write_npy, write_weights


def add_method_options(parser: argparse.ArgumentParser) -> None:
    """Options of :class:`NexParams` shared by every scoring command."""
    parser.add_argument("--rho", type=float, default=NexParams.rho,
                        help="stay probability of the sticky HMM (default %(default)s)")
    parser.add_argument("--min-run", type=int, default=NexParams.min_run,
                        help="min-run smoothing length (default %(default)s)")
    parser.add_argument("--fit-hmm", action="store_true",
                        help="extension: fit rho and emissions per trace by EM (off by default)")


def params_from_args(args: argparse.Namespace) -> NexParams:
    return NexParams(rho=args.rho, min_run=args.min_run, fit_hmm=args.fit_hmm)


def _summary(result, n_responses: int, params: NexParams) -> dict:
    return {
        "nex_score": result.nex,
        "log_gap": result.log_gap,
        "n_responses": n_responses,
        "n_scored_responses": result.n_scored,
        "rho": params.rho,
        "min_run": params.min_run,
        "fit_hmm": params.fit_hmm,
    }


def cmd_run(args: argparse.Namespace) -> int:
    params = params_from_args(args)
    corpus = read_rows_cache(args.cache)
    acc = accumulate(corpus, params)
    weights = acc.finalize(params.eps)
    result = score_corpus(corpus, weights)
    summary = _summary(result, corpus.n_traces, params)
    summary.update({
        "n_nonzero_weights": int(np.count_nonzero(weights)),
        "n_positive_weights": int((weights > 0).sum()),
        "n_negative_weights": int((weights < 0).sum()),
        "n_analysed_responses": acc.n_analysed,
        "n_cycles": acc.n_cycles,
        "n_effective_cycles": acc.n_effective,
        "n_redundant_cycles": acc.n_redundant,
    })
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise WeightsError(expected("--out", "a directory", f"a file {out}"))
    atomic_write(out / "weights.npz", lambda path: write_weights(path, weights))
    atomic_write(out / "response_scores.npy", lambda path: write_npy(path, result.gmf))
    atomic_write_json(out / "summary.json", summary)
    _report(summary, args.json)
    return 0


def cmd_learn(args: argparse.Namespace) -> int:
    params = params_from_args(args)
    corpus = read_rows_cache(args.cache)
    weights = accumulate(corpus, params).finalize(params.eps)
    atomic_write(args.out, lambda path: write_weights(path, weights))
    print(f"wrote {args.out}: {np.count_nonzero(weights)} non-zero weights "
          f"({(weights > 0).sum()} positive, {(weights < 0).sum()} negative) of {KEY_SPACE}")
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    weights = load_weights(args.weights)
    corpus = read_rows_cache(args.cache)
    result = score_corpus(corpus, weights)
    summary = {"nex_score": result.nex, "log_gap": result.log_gap,
               "n_scored_responses": result.n_scored, "n_responses": corpus.n_traces}
    _report(summary, args.json)
    return 0


def cmd_labels(args: argparse.Namespace) -> int:
    params = params_from_args(args)
    corpus = read_rows_cache(args.cache)
    if not 0 <= args.response < corpus.n_traces:
        raise WeightsError(expected("--response", f"an index in [0, {corpus.n_traces})",
                                    args.response))
    one = corpus.select(np.array([args.response]))
    analysis = analyse(one, params)
    labels = analysis.labels(0)
    if not labels:
        raise WeightsError(expected(f"response {args.response}",
                                    f"at least {params.min_rows} non-empty rows",
                                    "fewer (the response is skipped)"))
    print(labels)
    return 0


def _report(summary: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary, sort_keys=True))
    else:
        for key, value in summary.items():
            print(f"{key}: {value}")


def register(subparsers) -> None:
    group = subparsers.add_parser("rows-cache", help="work on a cache in the row-cache layout")
    sub = group.add_subparsers(dest="rows_cache_command", metavar="ACTION", required=True)

    run = sub.add_parser("run", help="learn weights on CACHE and score CACHE (self-calibration)")
    run.add_argument("cache")
    run.add_argument("--out", required=True, help="output directory")
    run.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_method_options(run)
    run.set_defaults(func=cmd_run)

    learn = sub.add_parser("learn", help="learn weights on CACHE")
    learn.add_argument("cache")
    learn.add_argument("--out", required=True, help="weights file (.npz, key 'weights')")
    add_method_options(learn)
    learn.set_defaults(func=cmd_learn)

    score = sub.add_parser("score", help="score CACHE with given weights")
    score.add_argument("cache")
    score.add_argument("--weights", required=True, help=".npz (key 'weights') or .npy")
    score.add_argument("--json", action="store_true", help="print the result as JSON")
    score.set_defaults(func=cmd_score)

    labels = sub.add_parser("labels", help="print the E/X labels of one response")
    labels.add_argument("cache")
    labels.add_argument("--response", type=int, default=0)
    add_method_options(labels)
    labels.set_defaults(func=cmd_labels)
