"""``nex capture``: being written (see issue 3)."""


def register(subparsers) -> None:
    """Registers no subcommand yet."""
