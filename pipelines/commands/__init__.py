"""Subcommands of the ``nex`` CLI, one module per group, each with ``register(subparsers)``.

Modules import their heavy dependencies inside the command functions, so ``nex --help``
works with the core install alone.
"""
