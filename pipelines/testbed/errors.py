"""Errors of the testbed commands, all :class:`~nex_transforms.NexError` subclasses (exit 2)."""

from __future__ import annotations

from nex_transforms import NexError


class TestbedError(NexError):
    """A testbed input problem (unknown preset, bad family file, bad neuron set, ...)."""

    __test__ = False  # not a pytest test class despite the name
