"""``nex merge FAMILY.yaml --out DIR``: merged variants with mergekit (see
:mod:`pipelines.testbed.merge` for the family file)."""

from __future__ import annotations

import argparse
import json
import sys

from ..testbed.merge import merge_family


def cmd_merge(args: argparse.Namespace) -> int:
    done = merge_family(args.family, args.out, only=args.only or None,
                        log=lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps(done, sort_keys=True))
    return 0


def register(subparsers) -> None:
    """Add ``merge``: build a family of merged variants."""
    p = subparsers.add_parser(
        "merge", help="merge same-architecture checkpoints (linear, SLERP, task arithmetic, "
                      "TIES, DARE) with mergekit",
        description="Build every variant of FAMILY.yaml into --out/NAME: a loadable model "
                    "folder with the tokenizer of its first model and a card recording the "
                    "recipe. Finished variants with the same recipe are kept on a rerun.")
    p.add_argument("family", help="family YAML file (paths relative to it)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--only", nargs="*", default=None, help="merge only these variant names")
    p.set_defaults(func=cmd_merge)
