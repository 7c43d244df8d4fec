"""``nex transfer``: copy MLP neurons from a donor into a recipient; measure accuracy.

    nex transfer --donor DIR --recipient DIR --tables TABLES --donor-model-id ID
                 --prompts FILE.jsonl --out DIR [--k 32] [--draws 3] [--seed 0]
    nex transfer --donor DIR --recipient DIR --keys 5,65538 --out DIR   # one set, no eval
"""

from __future__ import annotations

import argparse
import json
import sys

from nex_transforms.errors import CommandError

from ..capture.prompts import load_prompt_file
from ..testbed.transfer import run_transfer, transfer_model


def cmd_transfer(args: argparse.Namespace) -> int:
    if args.keys is not None:
        try:
            keys = [int(k) for k in args.keys.split(",") if k.strip()]
        except ValueError:
            raise CommandError(f"--keys: expected comma-separated integer neuron keys, "
                               f"got {args.keys!r}") from None
        if not keys:
            raise CommandError(f"--keys: expected at least one key, got {args.keys!r}")
        folder = transfer_model(args.donor, args.recipient, keys, args.out,
                                note={"set": "given", "k": len(keys)})
        print(json.dumps({"out": str(folder), "k": len(keys)}))
        return 0
    missing = [name for name in ("tables", "donor_model_id", "prompts")
               if getattr(args, name) is None]
    if missing:
        raise CommandError("nex transfer: expected --keys, or --tables, --donor-model-id and "
                           f"--prompts, got no {', '.join('--' + m.replace('_', '-') for m in missing)}")
    if args.k < 1 or args.draws < 0 or args.bootstrap < 10:
        raise CommandError(f"--k/--draws/--bootstrap: expected k >= 1, draws >= 0, bootstrap "
                           f">= 10, got {args.k}, {args.draws}, {args.bootstrap}")

    items = load_prompt_file(args.prompts)
    if any(item.reference_answer is None for item in items):
        raise CommandError(f"--prompts {args.prompts}: expected an answer for every prompt, "
                           "got prompts without one")
    result = run_transfer(args.donor, args.recipient, args.tables, [i.text for i in items],
                          [i.reference_answer for i in items], args.out,
                          donor_model_id=args.donor_model_id, k=args.k, draws=args.draws,
                          seed=args.seed, max_new_tokens=args.max_new_tokens,
                          n_boot=args.bootstrap,
                          log=lambda m: print(m, file=sys.stderr, flush=True))
    print(json.dumps({name: {k: entry[k] for k in ("accuracy", "delta", "low", "high")}
                      for name, entry in result["sets"].items()}, sort_keys=True))
    return 0


def register(subparsers) -> None:
    """Add ``transfer``: the causal neuron-transfer check."""
    p = subparsers.add_parser(
        "transfer", help="copy MLP neurons (gate/up rows, down columns) from a donor into a "
                         "recipient and measure the accuracy change",
        description="With --tables: choose the donor's k top-weighted Effective neurons, its k "
                    "most Redundant and --draws random sets of k units, transfer each into the "
                    "recipient, answer --prompts greedily and report accuracy changes with "
                    "paired bootstrap intervals (transfer.json, transfer.md in --out). With "
                    "--keys: write one transferred model folder to --out.")
    p.add_argument("--donor", required=True, help="donor model folder")
    p.add_argument("--recipient", required=True, help="recipient model folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--keys", default=None, help="comma-separated neuron keys (layer<<16|unit)")
    p.add_argument("--tables", default=None, help="`nex score` tables with the donor's neurons")
    p.add_argument("--donor-model-id", default=None, help="the donor's model id in the tables")
    p.add_argument("--prompts", default=None, help="prompts JSONL with id, prompt, answer")
    p.add_argument("--k", type=int, default=32, help="neurons per set (default %(default)s)")
    p.add_argument("--draws", type=int, default=3, help="random sets (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random sets and bootstrap seed")
    p.add_argument("--max-new-tokens", type=int, default=640, help="default %(default)s")
    p.add_argument("--bootstrap", type=int, default=2000, help="default %(default)s")
    p.set_defaults(func=cmd_transfer)
