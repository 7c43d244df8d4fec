"""The single exception family of the NEX project.

Every input problem raises a subclass of :class:`NexError`, itself a ``ValueError``,
with a message of the form ``"<what>: expected <X>, got <Y>"``.
"""

from __future__ import annotations


class NexError(ValueError):
    """Base class of every error the NEX code raises on bad input."""


class ParameterError(NexError):
    """A method parameter is out of its allowed range."""


class CorpusError(NexError):
    """Sparse row arrays are inconsistent (pointers, lengths, key space)."""


class WeightsError(NexError):
    """A neuron weight vector has the wrong shape, dtype or values."""


class CommandError(NexError):
    """A CLI-level input problem (a missing file, a bad option combination)."""


def expected(what: str, wanted: str, got: object) -> str:
    """Format the project's standard error message."""
    return f"{what}: expected {wanted}, got {got}"
