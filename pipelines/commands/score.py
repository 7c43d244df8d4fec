"""``nex score``: being written (see issue 4)."""


def register(subparsers) -> None:
    """Registers no subcommand yet."""
