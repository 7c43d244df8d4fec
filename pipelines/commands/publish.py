"""``nex publish TABLES --to TARGET``: put a tables folder's results into a registry.

    nex publish TABLES --to mlflow:models:/NAME/VERSION [--tracking-uri URI]
    nex publish TABLES --to hf:MODEL_FOLDER
    nex publish TABLES --to [folder:]PATH            (the default kind)

TABLES is a tables folder (``nex score --out``) or a workspace entry; ``--calibration-set``
names the prompts it was scored on (default: ``default``).
"""

from __future__ import annotations

import argparse
import json
import sys

from nex_transforms.errors import CommandError

from ..failures import TRANSIENT, describe, failure_kind
from ..publish import parse_target, results_from_tables
from ..publish.folder import publish_folder
from ..publish.huggingface import publish_huggingface
from ..publish.mlflow import publish_mlflow


def cmd_publish(args: argparse.Namespace) -> int:
    kind, where = parse_target(args.to)
    results = results_from_tables(args.tables, args.calibration_set, args.model_id)
    if kind in ("mlflow", "huggingface") and len(results) != 1:
        raise CommandError(f"--model-id: expected it with a tables folder of several models "
                           f"for --to {kind}, got {len(results)} models "
                           f"{[r['model_id'] for r in results]}")
    if kind == "mlflow":
        try:
            changes = publish_mlflow(results[0], args.tables, where, args.tracking_uri)
        except Exception as err:
            if failure_kind(err) != TRANSIENT:
                raise
            print(f"nex: error: registry {args.tracking_uri or 'MLFLOW_TRACKING_URI'}: "
                  f"{describe(err)} (nothing lost; publish again later)", file=sys.stderr)
            return 1
    elif kind == "huggingface":
        changes = publish_huggingface(results[0], where)
    else:
        changes = publish_folder(results, args.tables, where)
    if args.json:
        print(json.dumps({"target": args.to, "kind": kind, "changes": changes,
                          "results": results}, sort_keys=True, default=str))
    else:
        for r in results:
            print(f"{r['model_id']} [{r['calibration_set']}]: NEX {r['nex']:.5f} "
                  f"(log-gap {r['log_gap']:.4f})")
        what = ", ".join(f"{k} {v}" for k, v in changes.items() if isinstance(v, int))
        print(f"published to {kind} {where}: changed {what}"
              + (" (already up to date)" if not any(isinstance(v, int) and v for v in
                                                    changes.values()) else ""))
    return 0


def register(subparsers) -> None:
    """Register ``nex publish``."""
    p = subparsers.add_parser(
        "publish", help="publish a tables folder to MLflow, a Hugging Face card or a folder",
        description="Publish NEX, log-gap, baselines and the tables of TABLES. Targets: "
                    "mlflow:models:/NAME/VERSION (version tags, metrics on its run, tables as "
                    "artifacts), hf:MODEL_FOLDER (model-index results in README.md), or "
                    "[folder:]PATH (tables + catalog.parquet). Publishing twice changes nothing.")
    p.add_argument("tables", help="tables folder (nex score --out)")
    p.add_argument("--to", required=True, help="mlflow:models:/NAME/VERSION, hf:FOLDER or PATH")
    p.add_argument("--calibration-set", default="default",
                   help="name of the prompts the tables were scored on (default %(default)s)")
    p.add_argument("--model-id", default=None, help="publish only this model of the tables")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking/registry URI without credentials (default: "
                        "MLFLOW_TRACKING_URI; user and password from MLFLOW_TRACKING_USERNAME "
                        "and MLFLOW_TRACKING_PASSWORD)")
    p.add_argument("--json", action="store_true", help="print what was published as JSON")
    p.set_defaults(func=cmd_publish)
