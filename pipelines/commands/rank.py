"""``nex rank WORKSPACE``: the workspace's checkpoints ranked by NEX, with log-gap and the
baselines, per calibration set (from the catalog's completion markers)."""

from __future__ import annotations

import argparse
import json
import math

from nex_transforms.errors import CommandError

from ..workspace import Workspace, format_ranking


def cmd_rank(args: argparse.Namespace) -> int:
    workspace = Workspace(args.workspace)
    if not workspace.root.is_dir():
        raise CommandError(f"workspace: expected an existing folder, got {workspace.root}")
    rows = workspace.ranked(args.calibration_set)
    if args.json:
        print(json.dumps([{k: (None if isinstance(v, float) and math.isnan(v) else v)
                           for k, v in r.items()} for r in rows], sort_keys=True))
        return 0
    if not rows:
        print(f"no scored checkpoints in {workspace.root}"
              + (f" for calibration set {args.calibration_set}" if args.calibration_set else ""))
        return 0
    print(format_ranking(rows))
    return 0


def register(subparsers) -> None:
    """Register ``nex rank``."""
    p = subparsers.add_parser(
        "rank", help="rank a workspace's scored checkpoints by NEX",
        description="Print the checkpoints of WORKSPACE ranked by NEX (highest first) within "
                    "each calibration set, with log-gap, scored responses and the baselines "
                    "(mean entropy, self-certainty, token log-prob, DeepConf confidence).")
    p.add_argument("workspace", help="workspace root (flows' --workspace)")
    p.add_argument("--calibration-set", default=None, help="only this calibration set")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(func=cmd_rank)
