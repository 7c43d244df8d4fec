"""The ``nex`` command: one entry point, subcommands registered per group."""

from __future__ import annotations

import argparse
import importlib
import sys

from nex_transforms import NexError

#: Subcommand groups, in help order. Each module has ``register(subparsers)``.
COMMAND_MODULES = [
    "pipelines.commands.rows_cache",
    "pipelines.commands.store",
    "pipelines.commands.capture",
    "pipelines.commands.score",
    "pipelines.commands.publish",
    "pipelines.commands.rank",
    "pipelines.commands.flows",
    "pipelines.commands.eval",
    "pipelines.commands.testbed",
    "pipelines.commands.merge",
    "pipelines.commands.transfer",
    "pipelines.commands.annotate",
]


class CommandError(NexError):
    """A CLI-level input problem (a missing file, a bad option combination)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nex", description="NEX: label-free scoring of LLM reasoning from MLP neurons.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 bad input, 1 other failure)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except NexError as err:
        print(f"nex: error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as err:
        print(f"nex: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
