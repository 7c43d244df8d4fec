"""``nex testbed``: train the testbed model family and run it end to end.

    nex testbed train --preset ci|results --out DIR [--threads N] [--steps N]
    nex testbed problems --seed S --n N --out FILE.jsonl
    nex testbed run --preset ci|results --out DIR [--stages train,merge,...] [--threads N]

torch, transformers and mergekit are imported only when a subcommand runs.
"""

from __future__ import annotations

import argparse
import json
import sys

from nex_transforms.errors import CommandError

from ..testbed.presets import get_preset
from ..testbed.problems import generate_problems
from ..testbed.run import STAGES, run_testbed
from ..testbed.train import heldout_problems, train, write_prompts


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _preset(args: argparse.Namespace):
    preset = get_preset(args.preset, steps=getattr(args, "steps", None))
    given = getattr(args, "checkpoints", None)
    if given:
        try:
            steps = tuple(sorted({int(s) for s in given.split(",") if s.strip()}))
        except ValueError:
            raise CommandError(f"--checkpoints: expected comma-separated steps, got {given!r}") \
                from None
        if not set(steps) <= set(preset.checkpoints) or len([s for s in steps if s]) < 2:
            raise CommandError(f"--checkpoints: expected at least 2 trained steps of the preset's "
                               f"{list(preset.checkpoints)}, got {given!r}")
        from dataclasses import replace

        preset = replace(preset, checkpoints=steps)
    return preset


def _threads(args: argparse.Namespace) -> int | None:
    if args.threads is not None and args.threads < 1:
        raise CommandError(f"--threads: expected an integer >= 1, got {args.threads}")
    return args.threads


def cmd_train(args: argparse.Namespace) -> int:
    preset = _preset(args)
    summary = train(preset, args.out, threads=_threads(args), log=_log)
    write_prompts(heldout_problems(preset), f"{args.out}/heldout.jsonl")
    print(json.dumps({"checkpoints": summary.checkpoints, "seconds": round(summary.seconds, 1),
                      "n_parameters": summary.n_parameters,
                      "final_loss": summary.losses[-1]}, sort_keys=True))
    return 0


def cmd_problems(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise CommandError(f"--n: expected an integer >= 1, got {args.n}")
    write_prompts(generate_problems(args.seed, args.n, prefix="p"), args.out)
    print(f"wrote {args.n} problems (seed {args.seed}) to {args.out}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise CommandError(f"--stages: expected a comma-separated subset of "
                           f"{','.join(STAGES)}, got {args.stages!r}")
    summary = run_testbed(_preset(args), args.out, threads=_threads(args), stages=stages,
                          bootstrap=args.bootstrap, log=_log)
    print(json.dumps({"out": args.out, "timings_s": summary.get("timings_s"),
                      "family": summary.get("family")}, sort_keys=True, default=str))
    return 0


def register(subparsers) -> None:
    """Add ``testbed``: train the testbed family, write problems, run it end to end."""
    p = subparsers.add_parser(
        "testbed", help="a family of small models with known answers (train, run end to end)",
        description="Train a small Qwen3-architecture model on synthetic multi-step word "
                    "problems with long step-by-step solutions, keep checkpoints, merge "
                    "variants, capture, score, evaluate and run the neuron-transfer check.")
    sub = p.add_subparsers(dest="testbed_command", metavar="SUBCOMMAND", required=True)
    train = sub.add_parser("train", help="train a preset and save its checkpoints")
    train.add_argument("--preset", default="ci", help="ci, results or regime (default ci)")
    train.add_argument("--out", required=True, help="output folder")
    train.add_argument("--steps", type=int, default=None, help="override the preset's steps")
    train.add_argument("--threads", type=int, default=None, help="torch threads")
    train.set_defaults(func=cmd_train)
    problems = sub.add_parser("problems", help="write synthetic problems as a prompts JSONL")
    problems.add_argument("--seed", type=int, required=True)
    problems.add_argument("--n", type=int, required=True)
    problems.add_argument("--out", required=True)
    problems.set_defaults(func=cmd_problems)
    run = sub.add_parser("run", help="train, merge, capture, score, eval and transfer")
    run.add_argument("--preset", default="ci", help="ci, results or regime (default ci)")
    run.add_argument("--out", required=True, help="output folder (resumable)")
    run.add_argument("--stages", default="train,merge,capture,score,eval,transfer,annotate",
                     help="comma-separated stages to run (default all)")
    run.add_argument("--threads", type=int, default=None, help="torch threads")
    run.add_argument("--checkpoints", default=None,
                     help="use only these saved steps of the preset (e.g. when its training "
                          "was stopped early); the family is built from them")
    run.add_argument("--bootstrap", type=int, default=1000,
                     help="bootstrap resamples for eval and transfer (default 1000)")
    run.set_defaults(func=cmd_run)
