"""The failure taxonomy: is a failure bad input, or worth trying again?

One pure function, :func:`failure_kind`, decides for everything that can end a
checkpoint's scoring: an exception (ours, the MLflow client's, requests', urllib3's,
httpx's, the OS's) or the final state of a Prefect flow run (any object with a ``type``
whose value is a Prefect state type name, and a ``name``).

* **bad input** (:data:`BAD_INPUT`): the checkpoint, the calibration set or the target
  itself is wrong: the project's :class:`~nex_transforms.NexError` family (broken
  checkpoint, unknown architecture, bad calibration set, missing registry version), an
  MLflow error whose code says the request itself is wrong (``RESOURCE_DOES_NOT_EXIST``,
  ``INVALID_PARAMETER_VALUE``, ...), and a stage flow run that ended in the
  :data:`BAD_INPUT_STATE` state. It fails that checkpoint, is recorded, and is not tried
  again until the checkpoint changes.
* **transient** (:data:`TRANSIENT`): everything else: connection errors, timeouts, HTTP
  5xx, refused credentials (the registry's problem, not the checkpoint's), a stage run
  that ``Crashed``, was ``Cancelled`` or never finished before its deadline. It is
  retried by the task with backoff, then by the next scan, and never recorded as a
  permanent failure.

Nothing here imports MLflow, requests or Prefect: they are recognised by their
attributes and modules, so the function is cheap and works without the extras.
"""

from __future__ import annotations

from nex_transforms import NexError

BAD_INPUT = "bad-input"
TRANSIENT = "transient"
#: Name of the ``Failed`` state a stage flow run ends in when its input is bad, so that a
#: flow that started it elsewhere (``run_deployment``) reads the verdict from the state.
BAD_INPUT_STATE = "BadInput"
#: MLflow error codes that mean the request itself is wrong (HTTP 400/404 class).
MLFLOW_BAD_INPUT_CODES = frozenset({
    "RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "BAD_REQUEST", "NOT_FOUND",
    "MALFORMED_REQUEST", "INVALID_STATE", "RESOURCE_ALREADY_EXISTS", "ENDPOINT_NOT_FOUND",
    "FEATURE_DISABLED", "INVALID_STATE_TRANSITION", "NOT_IMPLEMENTED",
})


def _state_type(failure) -> str | None:
    kind = getattr(failure, "type", None)
    value = getattr(kind, "value", kind)
    return value.upper() if isinstance(value, str) and hasattr(failure, "name") else None


def failure_kind(failure) -> str:
    """:data:`BAD_INPUT` or :data:`TRANSIENT` for an exception or a final Prefect state.

    A completed state is not a failure (``ValueError``). An exception carrying a boolean
    ``transient`` attribute (a :class:`~pipelines.workspace.StageError`) has already been
    judged; its verdict stands.
    """
    if not isinstance(failure, BaseException):
        state_type = _state_type(failure)
        if state_type is None:
            raise TypeError(f"failure: expected an exception or a Prefect state, got "
                            f"{type(failure).__name__}")
        if state_type == "COMPLETED":
            raise ValueError("failure: expected a state that is not Completed, got Completed")
        if state_type == "FAILED":
            return BAD_INPUT if getattr(failure, "name", None) == BAD_INPUT_STATE else TRANSIENT
        return TRANSIENT
    judged = getattr(failure, "transient", None)
    if isinstance(judged, bool):
        return TRANSIENT if judged else BAD_INPUT
    if isinstance(failure, NexError):
        return BAD_INPUT
    code = getattr(failure, "error_code", None)
    if isinstance(code, str) and hasattr(failure, "get_http_status_code"):  # MlflowException
        return BAD_INPUT if code in MLFLOW_BAD_INPUT_CODES else TRANSIENT
    return TRANSIENT


def is_transient(failure) -> bool:
    """``failure_kind(failure) == TRANSIENT``."""
    return failure_kind(failure) == TRANSIENT


def describe(failure) -> str:
    """One line naming a failure: ``Type: first line of the message`` for an exception,
    ``State: message`` for a state."""
    if isinstance(failure, BaseException):
        text = str(failure).strip().splitlines()
        return f"{type(failure).__name__}: {text[0] if text else ''}".rstrip(": ")
    message = (getattr(failure, "message", None) or "").strip().splitlines()
    return f"{getattr(failure, 'name', '?')}: {message[0] if message else ''}".rstrip(": ")


__all__ = ["BAD_INPUT", "BAD_INPUT_STATE", "MLFLOW_BAD_INPUT_CODES", "TRANSIENT", "describe",
           "failure_kind", "is_transient"]
