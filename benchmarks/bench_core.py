"""Benchmark: the batched core against the straightforward per-trace implementation.

Both learn weights on one synthetic corpus and score it, side by side in one process
pinned to one core (BLAS/OpenMP threads = 1). Prints rows/s, peak memory, agreement and,
last, the speed ratio (target >= 30x).

    .venv/bin/python benchmarks/bench_core.py [--traces 500] [--keys-per-row 300]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from nex_transforms import analyse, learn_weights, score_corpus  # noqa: E402
from pipelines.synthetic import SyntheticSpec, synthetic_corpus  # noqa: E402
from tests.reference import straightforward  # noqa: E402


def _timed(fn, repeat: int):
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=500)
    parser.add_argument("--keys-per-row", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="best of N for the core")
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

    spec = SyntheticSpec(n_traces=args.traces, keys_per_row=args.keys_per_row, seed=args.seed)
    corpus = synthetic_corpus(spec)
    print(f"corpus: {corpus.n_traces} traces, {corpus.n_rows} rows, {corpus.n_entries} entries "
          f"({corpus.n_entries / corpus.n_rows:.0f} keys/row)")

    def core():
        weights = learn_weights(corpus)
        return weights, score_corpus(corpus, weights)

    core(), core()  # warm up the allocator
    tracemalloc.start()
    core()
    _, core_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    core_s, (core_w, core_scores) = _timed(core, args.repeat)

    def plain():
        weights, labels = straightforward.learn(corpus)
        return weights, labels, straightforward.score(corpus, weights)

    plain_s, (plain_w, plain_labels, plain_gmf) = _timed(plain, 1)

    analysis = analyse(corpus)
    same = total = 0
    for t, labels in enumerate(plain_labels):
        if labels is None:
            continue
        a, b = analysis.rows.trace_ptr[t], analysis.rows.trace_ptr[t + 1]
        same += int((np.asarray(labels) == analysis.segmentation.explore[a:b]).sum())
        total += len(labels)
    credited = (core_w != 0) | (plain_w != 0)
    sign_agree = float((np.sign(core_w[credited]) == np.sign(plain_w[credited])).mean())
    gmf_diff = np.abs(core_scores.gmf - plain_gmf)

    print(f"agreement: labels {same / total:.5f}, weight signs {sign_agree:.5f}, "
          f"max |dGMF| {np.nanmax(gmf_diff):.2e}, "
          f"|dNEX| {abs(core_scores.nex - np.nanmean(plain_gmf)):.2e}")
    print(f"core (batched):         {core_s:8.3f} s  {corpus.n_rows / core_s:12,.0f} rows/s  "
          f"peak traced memory {core_peak / 2**20:7.1f} MiB")
    print(f"straightforward (loop): {plain_s:8.3f} s  {corpus.n_rows / plain_s:12,.0f} rows/s")
    print(f"NEX {core_scores.nex:.6f} over {core_scores.n_scored} responses")
    print(f"speed ratio (straightforward / core, learn + score, one core): "
          f"{plain_s / core_s:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
