"""``nex flows``: run the Prefect flows (``flows/``) from the command line.

    nex flows run WORKSPACE CHECKPOINT_FOLDER [--calibration-set gsm8k] [--publish-to T ...]
    nex flows watch WORKSPACE [--checkpoints DIR ...] [--mlflow-model NAME ...]   # one scan now
    nex flows serve WORKSPACE [same sources] [--cron CRON | --interval SECONDS]    # embedded default

Without PREFECT_API_URL Prefect starts a temporary local server for ``run`` and ``watch``
(its ephemeral mode); ``serve`` needs a Prefect server (``prefect server start``). The
flows package sits above ``pipelines``, so it is loaded by name when a command runs.
"""

from __future__ import annotations

import argparse
import importlib
import json
from pathlib import Path


def _flows(module: str):
    from ..cli import CommandError

    try:
        return importlib.import_module(f"flows.{module}")
    except ImportError as err:
        raise CommandError(f"flows: expected Prefect installed (pip install "
                           f"'nex-pipeline[flows]'), got {err}") from None


def _sources(args) -> dict:
    return dict(directories=[str(d) for d in args.checkpoints],
                mlflow_models=list(args.mlflow_model), tracking_uri=args.tracking_uri)


def cmd_flows(args: argparse.Namespace) -> int:
    from ..cli import CommandError
    from ..workspace import Workspace, format_ranking, load_calibration_set

    calset = load_calibration_set(args.calibration_set)  # bad names fail before Prefect starts
    if Path(args.calibration_set).suffix:  # a file: absolute, for runs in other processes
        args.calibration_set = str(Path(args.calibration_set).absolute())
    workspace = str(Workspace(args.workspace).root)
    publish_to = args.publish_to or None
    if args.action == "run" and not args.checkpoint:
        raise CommandError("CHECKPOINT: expected a model folder for 'nex flows run', got none")
    if args.action != "run" and args.checkpoint:
        raise CommandError(f"CHECKPOINT: expected none for 'nex flows {args.action}' (sources "
                           f"are --checkpoints DIR / --mlflow-model NAME), got {args.checkpoint!r}")
    if args.action != "run" and not (args.checkpoints or args.mlflow_model):
        raise CommandError(f"sources: expected --checkpoints DIR or --mlflow-model NAME for "
                           f"'nex flows {args.action}', got none")
    if args.cron and args.interval:
        raise CommandError(f"--cron/--interval: expected one of them, got both "
                           f"({args.cron!r}, {args.interval})")
    if args.action == "serve":
        _flows("serve").serve(workspace, calibration_set=args.calibration_set,
                              publish_to=publish_to, cron=args.cron, interval=args.interval,
                              settle_seconds=args.settle_seconds, **_sources(args))
        return 0
    module = _flows("flows")
    if args.action == "run":
        state = module.score_checkpoint_flow(workspace, args.checkpoint, args.calibration_set,
                                             publish_to, args.tracking_uri, args.device,
                                             return_state=True)
        if not state.is_completed():
            try:
                state.result(raise_on_failure=True)
            except Exception as err:  # noqa: BLE001 - the flow's own failure
                raise CommandError(str(err)) from None
        result = state.result()
        print(f"{result['checkpoint']} [{result['calibration_set']}]: NEX {result['nex']:.5f} "
              f"(log-gap {result['log_gap']:.4f})")
    else:
        summary = module.watch_checkpoints_flow(
            workspace, args.calibration_set, publish_to=publish_to,
            settle_seconds=args.settle_seconds, device=args.device,
            retry_failed=args.retry_failed, **_sources(args))
        if args.json:
            print(json.dumps(summary, sort_keys=True, default=lambda v: None))
            return 0
        print(module.format_summary(args.calibration_set, summary))
    rows = Workspace(workspace).ranked(calset.name)
    if rows:
        print(format_ranking(rows))
    return 0


def register(subparsers) -> None:
    """Register ``nex flows run|watch|serve``."""
    p = subparsers.add_parser(
        "flows", help="score checkpoints with the Prefect flows (run, watch, serve)",
        description="run: capture, score and publish one checkpoint folder; watch: scan the "
                    "sources once and score every checkpoint without a score; serve: serve "
                    "the deployments (the watcher on a schedule) until interrupted.")
    p.add_argument("action", choices=("run", "watch", "serve"))
    p.add_argument("workspace", help="workspace root (stores, tables, catalog)")
    p.add_argument("checkpoint", nargs="?", default=None, help="run: the model folder")
    p.add_argument("--calibration-set", default="gsm8k",
                   help="gsm8k, arithmetic or a YAML file (default %(default)s)")
    p.add_argument("--checkpoints", action="append", default=[], metavar="DIR",
                   help="watch/serve: a directory of Hugging Face model folders (repeatable)")
    p.add_argument("--mlflow-model", action="append", default=[], metavar="NAME",
                   help="watch/serve: an MLflow registered model whose versions to score")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking/registry URI (default: MLFLOW_TRACKING_URI)")
    p.add_argument("--publish-to", action="append", default=[], metavar="TARGET",
                   help="folder, folder:PATH, hf, hf:PATH, source (the MLflow version), "
                        "mlflow:models:/NAME/VERSION (repeatable; default: folder and source)")
    p.add_argument("--cron", default=None, help="serve: watcher schedule (default */15 * * * *)")
    p.add_argument("--interval", type=float, default=None, help="serve: watch every N seconds")
    p.add_argument("--settle-seconds", type=float, default=5.0,
                   help="a folder unchanged this long counts as completely written")
    p.add_argument("--device", default="cpu", help="capture device (cpu, cuda)")
    p.add_argument("--retry-failed", action="store_true",
                   help="watch: try checkpoints that failed before again")
    p.add_argument("--json", action="store_true", help="watch: print the summary as JSON")
    p.set_defaults(func=cmd_flows)
