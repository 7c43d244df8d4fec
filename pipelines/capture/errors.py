"""Errors of the capture job, all :class:`~nex_transforms.NexError` subclasses (exit status 2)."""

from __future__ import annotations

from nex_transforms import NexError


class CaptureError(NexError):
    """Base class of every capture input problem."""


class ModelError(CaptureError):
    """A model cannot be resolved or loaded (unknown name, missing package, bad file)."""


class ArchitectureError(ModelError):
    """A model's MLP layout is not one the capture can hook (MoE, unknown modules)."""


class PromptError(CaptureError):
    """A prompt source is empty, malformed or incompatible with the model."""
