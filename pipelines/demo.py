"""`make demo`: the main job end to end on embedded defaults, results written to a folder.

Stages (each prints what it did and writes into ``--out``):

1. the published reference example: NEX with the published weights and self-calibrated;
2. a synthetic corpus with bursts of exploration: self-calibrated NEX and its spread.

    python -m pipelines.demo --out demo-output
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from nex_transforms import NexParams, accumulate, learn_weights, score_corpus

from .atomic import atomic_write_json
from .rows_cache import read_rows_cache
from .synthetic import SyntheticSpec, synthetic_corpus

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / \
    "nex-reference-example"


def reference_stage(reference: Path) -> dict:
    corpus = read_rows_cache(reference / "example_cache")
    with np.load(reference / "example_weights.npz") as data:
        published = score_corpus(corpus, data["weights"])
    weights = learn_weights(corpus)
    self_cal = score_corpus(corpus, weights)
    return {
        "responses": corpus.n_traces,
        "rows": corpus.n_rows,
        "published_weights": {"nex": published.nex, "log_gap": published.log_gap},
        "self_calibrated": {"nex": self_cal.nex, "log_gap": self_cal.log_gap,
                            "nonzero_weights": int(np.count_nonzero(weights)),
                            "positive": int((weights > 0).sum()),
                            "negative": int((weights < 0).sum())},
    }


def synthetic_stage(n_traces: int, seed: int, params: NexParams | None = None) -> dict:
    corpus = synthetic_corpus(SyntheticSpec(n_traces=n_traces, seed=seed))
    start = time.perf_counter()
    params = params or NexParams()
    acc = accumulate(corpus, params)
    weights = acc.finalize(params.eps)
    scores = score_corpus(corpus, weights)
    seconds = time.perf_counter() - start
    gmf = scores.gmf[np.isfinite(scores.gmf)]
    return {
        "responses": corpus.n_traces, "rows": corpus.n_rows, "entries": corpus.n_entries,
        "nex": scores.nex, "log_gap": scores.log_gap,
        "gmf_quantiles": dict(zip(("min", "q25", "median", "q75", "max"),
                                  np.quantile(gmf, [0, .25, .5, .75, 1]).tolist())),
        "cycles": acc.n_cycles, "effective_cycles": acc.n_effective,
        "redundant_cycles": acc.n_redundant, "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the NEX demo end to end.")
    parser.add_argument("--out", default="demo-output", help="folder for the results")
    parser.add_argument("--reference", default=str(REFERENCE),
                        help="the published reference example folder")
    parser.add_argument("--synthetic-traces", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {}

    reference = Path(args.reference)
    if reference.is_dir():
        report["reference_example"] = ref = reference_stage(reference)
        print(f"reference example: NEX with published weights {ref['published_weights']['nex']:.5f}"
              f" (log-gap {ref['published_weights']['log_gap']:.4f}); self-calibrated NEX "
              f"{ref['self_calibrated']['nex']:.5f} with "
              f"{ref['self_calibrated']['nonzero_weights']} non-zero weights")
    else:
        print(f"reference example not found at {reference}; skipped", file=sys.stderr)

    report["synthetic"] = syn = synthetic_stage(args.synthetic_traces, args.seed)
    print(f"synthetic corpus: {syn['responses']} responses, {syn['rows']} rows -> NEX "
          f"{syn['nex']:.5f} (log-gap {syn['log_gap']:.4f}), {syn['cycles']} cycles "
          f"({syn['effective_cycles']} effective), {syn['seconds']:.2f} s")
    report["synthetic_fit_hmm_extension"] = ext = synthetic_stage(
        args.synthetic_traces, args.seed, NexParams(fit_hmm=True))
    print(f"  extension (EM-fitted sticky HMM per trace): NEX {ext['nex']:.5f}, "
          f"{ext['cycles']} cycles, {ext['seconds']:.2f} s")

    atomic_write_json(out / "report.json", report)
    print(f"report written to {out / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
