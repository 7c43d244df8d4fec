"""`make demo`: the main job end to end on embedded defaults, results written to a folder.

Stages (each prints what it did and writes into ``--out``):

1. capture: a shipped real model (SmolLM2-135M) samples a few responses to a handful of
   GSM8K prompts; MLP neurons and logit statistics go to ``OUT/store`` (resumable);
2. verify the store's invariants;
3. score the store with the local, Beam and Dask engines into ``OUT/tables-<engine>``
   and check that they agree; print the models table;
4. the published reference example: NEX with the published weights and self-calibrated;
5. a synthetic corpus with bursts of exploration, with and without the EM extension;
6. flows: ``score_checkpoint_flow`` once on the shipped model (a few GSM8K prompts x 2
   samples, Prefect's ephemeral mode: no server to start) into ``OUT/workspace``, then
   the ranked catalog (``nex rank OUT/workspace``).
7. the evaluation report of its own run (``nex score --phases`` then ``nex eval``):
   ``OUT/eval-report/report.html`` (and ``report.md``, ``report.json``, plots).
8. the explorer site of its own run (``nex explore``): ``OUT/explore/index.html``.

Everything lands in ``OUT/report.json``.

    python -m pipelines.demo --out demo-output
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from nex_transforms import NexParams, accumulate, learn_weights, score_corpus

from .capture import CaptureConfig, run_capture, summary_dict
from .capture.models import resolve_model
from .crashsafe import atomic_write_json
from .engines import run_engine
from .engines.plan import ScoreConfig
from .evaluation import run_eval
from .evaluation.coverage import tables_coverage, warnings_of
from .explore import write_site
from .rows_cache import read_rows_cache
from .store import ActivationStore
from .store.verify import verify_store
from .testing.corpora import SyntheticSpec, synthetic_corpus
from .workspace import Checkpoint, Workspace, content_hash, format_ranking, load_calibration_set

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / \
    "nex-reference-example"
ENGINES = ("local", "beam", "dask")


def _warn(tables: Path, store: Path) -> None:
    """The coverage and regime warnings ``nex score`` prints after scoring."""
    for warning in warnings_of(tables_coverage(tables, store)):
        print(f"nex: warning: {warning}", file=sys.stderr)


def capture_stage(out: Path, args: argparse.Namespace) -> Path:
    """Capture the shipped model's answers (``nex capture``), then check every invariant
    of the store (``nex store verify``)."""
    store = out / "store"
    print(f"$ nex capture --model {args.model} --prompts {args.prompts} --limit {args.limit} "
          f"--samples {args.samples} --max-new-tokens {args.max_new_tokens} --seed {args.seed} "
          f"--batch-size {args.batch_size} --row-size {args.row_size} --out {store}")
    summary = summary_dict(run_capture(CaptureConfig(
        model=args.model, prompts=args.prompts, out=str(store), limit=args.limit,
        samples=args.samples, max_new_tokens=args.max_new_tokens, seed=args.seed,
        batch_size=args.batch_size, row_size=args.row_size)))
    print(f"capture: {summary['traces_written']} traces, {summary['tokens_written']} tokens, "
          f"{summary['tokens_per_second']:.1f} tok/s")
    report = verify_store(ActivationStore.open(str(store)))
    if not report.ok:
        raise SystemExit(f"demo: store {store} fails verification: {report.problems[0]}")
    print(f"store verified: {report.parts} parts, {report.traces} traces, {report.rows} rows, "
          f"{report.entries} entries")
    return store


def score_stage(store: Path, out: Path, engines: list[str]) -> dict:
    import pyarrow.parquet as pq

    tables = {}
    for engine in engines:
        folder = out / f"tables-{engine}"
        start = time.perf_counter()
        run_engine(engine, ScoreConfig(store=str(store)), folder)
        tables[engine] = {
            "seconds": time.perf_counter() - start,
            "models": pq.read_table(folder / "models.parquet").to_pylist(),
            "gmf": pq.read_table(folder / "responses.parquet",
                                 columns=["trace_id", "gmf"]).to_pydict(),
        }
    first = tables[engines[0]]
    for engine in engines[1:]:
        if tables[engine]["gmf"]["trace_id"] != first["gmf"]["trace_id"]:
            raise SystemExit(f"demo: {engine} scored other traces than {engines[0]}")
        diff = np.nanmax(np.abs(np.asarray(tables[engine]["gmf"]["gmf"], float)
                                - np.asarray(first["gmf"]["gmf"], float)), initial=0.0)
        tables[engine]["max_abs_gmf_diff_vs_" + engines[0]] = float(diff)
        if diff > 1e-6:
            raise SystemExit(f"demo: {engine} and {engines[0]} disagree by {diff:.3g}")
    print("models table:")
    for row in first["models"]:
        print(f"  {row['model_id']}: NEX {row['nex']:.5f} (log-gap {row['log_gap']:.4f}) over "
              f"{row['n_scored']} responses; {row['n_cycles']} cycles; mean entropy "
              f"{row['mean_entropy']:.3f}, self-certainty {row['mean_self_certainty']:.3f}, "
              f"DeepConf {row['deepconf_mean_confidence']:.3f}")
    print("engines agree: " + ", ".join(
        f"{e} {tables[e]['seconds']:.1f} s" for e in engines))
    return {e: {k: v for k, v in t.items() if k != "gmf"} for e, t in tables.items()}


def flows_stage(out: Path, args: argparse.Namespace) -> dict:
    """score_checkpoint_flow on the shipped model, a cheap GSM8K calibration set; the flows
    package sits above pipelines, so it is loaded by name."""
    import importlib
    from dataclasses import asdict

    # a temporary Prefect server on a busy 2-core machine can take longer than Prefect's 20 s
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    # its own Prefect home (database, settings) under OUT, not the user's ~/.prefect
    (out / "prefect-home").mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str((out / "prefect-home").absolute()))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # offline: no telemetry
    flows = importlib.import_module("flows.flows")
    spec = resolve_model(args.model)
    folder = Path(spec.path)
    checkpoint = Checkpoint(spec.model_id, str(folder), content_hash(folder), {"kind": "directory"})
    calset = dict(load_calibration_set("gsm8k").to_dict(), name="gsm8k-demo",
                  limit=min(args.limit, 2), samples=2,
                  max_new_tokens=min(args.max_new_tokens, 96), batch_size=4)
    workspace = out / "workspace"
    start = time.perf_counter()
    result = flows.score_checkpoint_flow(str(workspace), asdict(checkpoint), calset, ["folder"])
    rows = Workspace(workspace).ranked()
    print(f"flows: score_checkpoint_flow({checkpoint.name}, gsm8k-demo) -> NEX "
          f"{result['nex']:.5f} (log-gap {result['log_gap']:.4f}) in "
          f"{time.perf_counter() - start:.1f} s; $ nex rank {workspace}")
    print(format_ranking(rows))
    return {"workspace": str(workspace), "nex": result["nex"], "log_gap": result["log_gap"],
            "catalog_rows": len(rows), "seconds": time.perf_counter() - start}
def eval_stage(store: Path, out: Path) -> dict:
    """Score with --phases and write the evaluation report of this run's own capture."""
    tables = out / "tables-phases"
    run_engine("local", ScoreConfig(store=str(store), phases=True), tables)
    _warn(tables, store)
    report = out / "eval-report"
    print(f"$ nex eval {tables} --report {report}")
    run_eval([str(tables)], report_dir=str(report))
    result = json.loads((report / "report.json").read_text())
    return {"report_dir": str(report), "html": str(report / "report.html"),
            "accuracy": {m: e["accuracy"] for m, e in result["models"].items()},
            "warnings": [e["coverage"]["warning"] for e in result["models"].values()
                         if e["coverage"]["warning"]]}


def explore_stage(out: Path, args: argparse.Namespace) -> dict:
    """The explorer site of this run's own capture (``nex explore``, after eval_stage)."""
    site = out / "explore"
    print(f"$ nex explore {out / 'tables-phases'} --out {site} --prompts {args.prompts}")
    summary = write_site(str(out / "tables-phases"), str(site), prompts=args.prompts)
    for note in summary["notes"]:
        print(f"nex: warning: {note}", file=sys.stderr)
    return {"site": str(site), "index": str(site / "index.html")}


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Run the NEX demo end to end.")
    parser.add_argument("--out", default="demo-output", help="folder for the results")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", default="gsm8k")
    parser.add_argument("--limit", type=int, default=5, help="prompts to capture")
    parser.add_argument("--samples", type=int, default=4, help="responses per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=288)
    parser.add_argument("--batch-size", type=int, default=6)
    parser.add_argument("--row-size", type=int, default=8,
                        help="tokens per row; the small model's answers are short (~150 "
                             "tokens), so rows of 8 give each response enough rows for "
                             "E/X cycles (the method's default is 32)")
    parser.add_argument("--engines", default=",".join(ENGINES),
                        help="comma-separated engines to score with")
    parser.add_argument("--skip-capture", action="store_true",
                        help="skip the real-model stages (capture and engines)")
    parser.add_argument("--reference", default=str(REFERENCE),
                        help="the published reference example folder")
    parser.add_argument("--synthetic-traces", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-flows", action="store_true",
                        help="skip the Prefect flow stage (it starts a temporary Prefect server)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"arguments": vars(args)}

    if not args.skip_capture:
        store = capture_stage(out, args)
        engines = [e for e in args.engines.split(",") if e]
        report["store"] = str(store)
        report["engines"] = score_stage(store, out, engines)

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

    if not args.skip_capture and not args.skip_flows:
        report["flows"] = flows_stage(out, args)

    if not args.skip_capture:
        report["evaluation"] = evaluation = eval_stage(store, out)
        report["explore"] = explore_stage(out, args)
    atomic_write_json(out / "report.json", json.loads(json.dumps(report, default=str)))
    print(f"report written to {out / 'report.json'}")
    if not args.skip_capture:
        print(f"evaluation report of this run: {evaluation['html']} "
              f"(also report.md, report.json, plots/ in {evaluation['report_dir']})")
        print(f"explorer site of this run: {report['explore']['index']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
