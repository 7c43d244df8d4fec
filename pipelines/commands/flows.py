"""``nex flows``: run the Prefect flows (``flows/``) from the command line.

    nex flows run WORKSPACE CHECKPOINT_FOLDER [--calibration-set gsm8k] [--publish-to T ...]
    nex flows watch WORKSPACE [--checkpoints DIR ...] [--mlflow-model NAME ...]   # one scan now
    nex flows serve WORKSPACE [same sources] [--cron CRON | --interval SECONDS]    # embedded default

Without PREFECT_API_URL Prefect starts a temporary local server for ``run`` and ``watch``
(its ephemeral mode); ``serve`` needs a Prefect server (``prefect server start``). The
flows package sits above ``pipelines``, so it is loaded by name when a command runs.

Exit status: 0 when everything asked for was scored (or done before); 1 when a checkpoint
failed or a source could not be read (``watch``; the summary names them), or a transient
failure stopped ``run``; 2 for bad input (bad arguments, a broken checkpoint for ``run``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from nex_transforms.errors import CommandError

from ..failures import BAD_INPUT, failure_kind
from ..workspace import (CLAIM_STALE_SECONDS, SETTLE_SECONDS, STALL_SECONDS, Workspace,
                         format_ranking, load_calibration_set)


def _flows(module: str):
    try:
        return importlib.import_module(f"flows.{module}")
    except ImportError as err:
        raise CommandError(f"flows: expected Prefect installed (pip install "
                           f"'nex-pipeline[flows]'), got {err}") from None


def _sources(args) -> dict:
    return dict(directories=[str(d) for d in args.checkpoints],
                mlflow_models=list(args.mlflow_model), tracking_uri=args.tracking_uri)


def _stages(args) -> dict:
    return dict(device=args.device, dtype=args.dtype, capture_deployment=args.capture_deployment,
                score_deployment=args.score_deployment, stall_seconds=args.stall_seconds)


def cmd_flows(args: argparse.Namespace) -> int:
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
    for name in ("claim_stale_seconds", "stall_seconds", "settle_seconds"):
        if not getattr(args, name) >= 0:
            raise CommandError(f"--{name.replace('_', '-')}: expected a number of seconds >= 0, "
                               f"got {getattr(args, name)}")
    if args.action == "serve":
        _flows("serve").serve(workspace, calibration_set=args.calibration_set,
                              publish_to=publish_to, cron=args.cron, interval=args.interval,
                              settle_seconds=args.settle_seconds,
                              claim_stale_seconds=args.claim_stale_seconds,
                              **_stages(args), **_sources(args))
        return 0
    module = _flows("flows")
    status = 0
    if args.action == "run":
        state = module.score_checkpoint_flow(workspace, args.checkpoint, args.calibration_set,
                                             publish_to, args.tracking_uri, engine=None,
                                             return_state=True, **_stages(args))
        if not state.is_completed():
            cause = state.result(raise_on_failure=False)
            failure = cause if isinstance(cause, BaseException) else state
            if failure_kind(failure) == BAD_INPUT:
                raise CommandError(str(cause if isinstance(cause, BaseException) else
                                       state.message))
            print(f"nex: error (transient, try again): {cause}", file=sys.stderr)
            return 1
        result = state.result()
        print(f"{result['checkpoint']} [{result['calibration_set']}]: NEX {result['nex']:.5f} "
              f"(log-gap {result['log_gap']:.4f})")
    else:
        state = module.watch_checkpoints_flow(
            workspace, args.calibration_set, publish_to=publish_to,
            settle_seconds=args.settle_seconds, claim_stale_seconds=args.claim_stale_seconds,
            retry_failed=args.retry_failed, return_state=True, **_stages(args), **_sources(args))
        summary = module.watch_summary(state)
        status = 0 if state.is_completed() else 1
        if args.json:
            print(json.dumps(summary, sort_keys=True, default=lambda v: None))
            return status
        print(module.format_summary(calset.name, summary))
    rows = Workspace(workspace).ranked(calset.name)
    if rows:
        print(format_ranking(rows))
    return status


def register(subparsers) -> None:
    """Register ``nex flows run|watch|serve``."""
    p = subparsers.add_parser(
        "flows", help="score checkpoints with the Prefect flows (run, watch, serve)",
        description="run: capture, score and publish one checkpoint folder; watch: scan the "
                    "sources once and score every checkpoint without a score (exit status 1 "
                    "when a checkpoint failed or a source could not be read); serve: serve "
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
                   help="MLflow tracking/registry URI without credentials (default: "
                        "MLFLOW_TRACKING_URI; user and password from MLFLOW_TRACKING_USERNAME "
                        "and MLFLOW_TRACKING_PASSWORD)")
    p.add_argument("--publish-to", action="append", default=[], metavar="TARGET",
                   help="folder, folder:PATH, hf, hf:PATH, source (the MLflow version), "
                        "mlflow:models:/NAME/VERSION (repeatable; default: folder and source)")
    p.add_argument("--cron", default=None, help="serve: watcher schedule (default */15 * * * *)")
    p.add_argument("--interval", type=float, default=None, help="serve: watch every N seconds")
    p.add_argument("--settle-seconds", type=float, default=SETTLE_SECONDS,
                   help="a folder unchanged this long counts as completely written "
                        "(default %(default)s)")
    p.add_argument("--claim-stale-seconds", type=float, default=CLAIM_STALE_SECONDS,
                   help="a claim on a checkpoint whose heartbeat is this old is taken over "
                        "(its holder beats every quarter of it; a holder that died on this "
                        "host is taken over at once; default %(default)s)")
    p.add_argument("--stall-seconds", type=float, default=STALL_SECONDS,
                   help="a stage run on another pool with no new store part and no live "
                        "heartbeat this long is given up and retried (default %(default)s)")
    p.add_argument("--capture-deployment", default=None, metavar="NAME",
                   help="run captures as flow runs of this deployment (e.g. capture/gpu)")
    p.add_argument("--score-deployment", default=None, metavar="NAME",
                   help="run scoring as flow runs of this deployment (e.g. score/cpu)")
    p.add_argument("--device", default=None,
                   help="capture device (cpu, cuda); default: the capture deployment's, else cpu")
    p.add_argument("--dtype", default=None,
                   help="capture dtype (float32, bfloat16); default: the deployment's, else float32")
    p.add_argument("--retry-failed", action="store_true",
                   help="watch: try checkpoints that failed before again")
    p.add_argument("--json", action="store_true", help="watch: print the summary as JSON")
    p.set_defaults(func=cmd_flows)
