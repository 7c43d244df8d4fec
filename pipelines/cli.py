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
    "pipelines.commands.explore",
    "pipelines.commands.testbed",
    "pipelines.commands.merge",
    "pipelines.commands.transfer",
    "pipelines.commands.annotate",
]


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``nex`` parser; with ``command``, only the group of the module named after it.

    Registering every group costs more than a short command runs for (some groups build
    their options from modules they import), so :func:`main` registers only the group
    asked for when a module is named after it, and every group otherwise.
    """
    parser = argparse.ArgumentParser(
        prog="nex", description="NEX: label-free scoring of LLM reasoning from MLP neurons.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    module = f"pipelines.commands.{(command or '').replace('-', '_')}"
    for name in [module] if module in COMMAND_MODULES else COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    if command is not None and command not in sub.choices:
        return build_parser()
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 bad input, 1 other failure)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv[0] if argv else None)
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
