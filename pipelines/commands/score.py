"""``nex score``: score every response and model of an activation store into tables.

    nex score STORE --out TABLES|URL [--engine local|beam|dask] [--calibration per-model|global]
                    [--storage-options JSON]
                    [--weights FILE] [--phases] [--workers N] [--scheduler ADDRESS]
                    [-- BEAM PIPELINE OPTIONS ...]

The engine modules (and apache_beam / dask) are imported only when the command runs.
"""

from __future__ import annotations

import argparse
import json

from nex_transforms.errors import CommandError

from ..engines import run_engine
from ..engines.plan import DEFAULT_BATCH_ENTRIES, ScoreConfig
from ..evaluation.coverage import tables_coverage, warnings_of
from ..store.fs import apply_storage_options
from .rows_cache import add_method_options, params_from_args


def cmd_score(args: argparse.Namespace) -> int:
    if args.weights is not None and args.calibration is not None:
        raise CommandError(f"--weights: expected no --calibration with it (weights are "
                           f"given, not learned), got --calibration {args.calibration}")
    calibration = "weights" if args.weights is not None else (args.calibration or "per-model")
    if args.engine != "dask" and (args.scheduler is not None or args.workers is not None):
        raise CommandError(f"--scheduler/--workers: expected only with --engine dask, "
                           f"got --engine {args.engine}")
    if args.engine != "beam" and args.engine_args:
        raise CommandError(f"engine options after '--': expected only with --engine beam, "
                           f"got {args.engine_args[:3]} with --engine {args.engine}")
    if args.workers is not None and args.workers < 1:
        raise CommandError(f"--workers: expected an integer >= 1, got {args.workers}")

    # parsed and checked once; object-store stores: workers inherit it
    storage_options = apply_storage_options(args.storage_options) or None
    config = ScoreConfig(store=args.store, params=params_from_args(args),
                         calibration=calibration, weights_file=args.weights,
                         phases=args.phases, batch_entries=args.batch_entries)
    options: dict = {}
    if args.engine == "beam":
        options["pipeline_args"] = list(args.engine_args)
    elif args.engine == "dask":
        options.update(scheduler=args.scheduler, workers=args.workers)
    summary = run_engine(args.engine, config, args.out, options, storage_options)
    if args.json:
        print(json.dumps(summary, sort_keys=True, default=str))
    else:
        print(f"scored {summary['n_traces']} traces of {len(summary['models'])} model(s) "
              f"with {args.engine} ({summary['n_units']} units, "
              f"{summary['timings']['total_s']:.2f} s); tables in {args.out}")
    _report_coverage(args.out, args.store, quiet=args.json)
    return 0


def _report_coverage(tables: str, store: str, quiet: bool) -> None:
    """Per model, how many responses could carry credit (stdout unless ``quiet``), and a
    warning (stderr) when too few did for NEX to mean anything
    (pipelines.evaluation.coverage)."""
    import sys

    for entry in tables_coverage(tables, store):
        if not quiet:
            print(f"  {entry['model_id']}: {entry['n_can_carry_credit']} of "
                  f"{entry['n_responses']} responses can carry credit "
                  f"({entry['n_skipped_too_few_rows']} skipped with fewer than 3 rows, "
                  f"{entry['n_fewer_than_2_cycles']} with fewer than 2 E->X cycles); "
                  f"{entry['n_credited_cycles']} cycles credited")
            if entry["late_novelty"] is not None:
                coverage = entry["pool_coverage"]
                pool = "unknown" if coverage is None else f"{100 * coverage:.1f} %"
                print(f"  {entry['model_id']}: regime: median late novelty "
                      f"{entry['late_novelty']:.4f}, pool coverage {pool}")
        for warning in warnings_of([entry]):
            print(f"nex: warning: {warning}", file=sys.stderr)


class _PassThroughParser(argparse.ArgumentParser):
    """Parses everything before a ``--``; what follows it goes to ``engine_args`` untouched
    (argparse alone would try to match it against the positionals)."""

    def parse_known_args(self, args=None, namespace=None):
        args = list(args if args is not None else [])
        passed: list[str] = []
        if "--" in args:
            cut = args.index("--")
            args, passed = args[:cut], args[cut + 1:]
        namespace, extras = super().parse_known_args(args, namespace)
        namespace.engine_args = passed
        return namespace, extras


def register(subparsers) -> None:
    """Add ``score``: score a store with the local, Beam or Dask engine."""
    score = subparsers.add_parser(
        "score", help="score a store into Parquet tables (local, Beam or Dask engine)",
        usage="nex score STORE --out TABLES [--engine {local,beam,dask}] [options] "
              "[-- BEAM_PIPELINE_OPTIONS ...]",
        description="Learn neuron weights and score every response of STORE; write "
                    "responses/models/neurons(/phases) Parquet tables and run.json to "
                    "--out atomically. Options after '--' go to the Beam pipeline "
                    "untouched (e.g. -- --runner=FlinkRunner --flink_master=HOST:8081).")
    score.add_argument("store", help="activation store")
    score.add_argument("--out", required=True,
                       help="tables folder (replaced atomically), or an object-storage URL "
                            "such as s3://bucket/prefix")
    score.add_argument("--storage-options", default=None, metavar="JSON",
                       help="fsspec options for an object-storage STORE and --out URL, "
                            "e.g. '{\"endpoint_url\": \"http://HOST:9000\"}' (default: AWS_* "
                            "environment variables)")
    score.add_argument("--engine", choices=("local", "beam", "dask"), default="local",
                       help="execution engine (default %(default)s)")
    score.add_argument("--calibration", choices=("per-model", "global"), default=None,
                       help="per-model: each model learns its own weights on its own traces "
                            "(default); global: one weight vector over the whole store")
    score.add_argument("--weights", default=None,
                       help="score only, with these weights (.npz key 'weights', or .npy)")
    score.add_argument("--phases", action="store_true",
                       help="also write phases.parquet (per-row novelty slope, z, E/X)")
    score.add_argument("--batch-entries", type=int, default=DEFAULT_BATCH_ENTRIES,
                       help="row entries per work unit (default %(default)s)")
    score.add_argument("--workers", type=int, default=None,
                       help="dask: local cluster worker processes (default: CPU count)")
    score.add_argument("--scheduler", default=None,
                       help="dask: address of an existing scheduler (tcp://HOST:PORT)")
    score.add_argument("--json", action="store_true", help="print run.json to stdout")
    add_method_options(score)
    score.set_defaults(func=cmd_score, engine_args=[])
    score.__class__ = _PassThroughParser  # split at '--' before argparse sees the rest
