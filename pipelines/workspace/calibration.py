"""Calibration sets: the prompts a checkpoint is scored on, with the capture parameters
the set pins, the scoring engine and calibration, and the stages' deadlines.

A calibration set is a flat YAML mapping (the shipped ones are package data in
``pipelines/workspace/calibration_sets/``). Its capture keys are the fields of
:class:`pipelines.capture.CaptureConfig` a set may pin (``SET_FIELDS``: ``prompts``,
``limit``, ``samples``, ``max_new_tokens``, ``row_size``, ...): the set records only the
ones it sets (they, not the defaults, make its key), every other capture parameter keeps
the default of :mod:`pipelines.capture.config` or comes from the run (``device`` and
``dtype`` from the deployment that runs the capture). Its other keys: ``name``,
``description``, ``engine`` (local, dask, beam), ``calibration`` (per-model, global) and
the deadlines ``capture_deadline_seconds`` / ``score_deadline_seconds``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from nex_transforms.errors import expected

from ..capture import CaptureError
from ..capture.config import CAPTURE_DEFAULTS, RUN_PARAMS, SET_FIELDS, CaptureConfig
from .errors import WorkspaceError

#: The shipped calibration sets (package data, installed with the wheel).
CALIBRATION_SET_DIR = Path(str(resources.files(__package__).joinpath("calibration_sets")))
SET_KEYS = ("name", "description", "engine", "calibration", "capture_deadline_seconds",
            "score_deadline_seconds")
#: Deadline terms (seconds) when a set gives none: a stage may take STARTUP_SECONDS to
#: start (worker, model load) plus, for a capture, its token budget at
#: DEADLINE_TOKENS_PER_SECOND, for scoring SCORE_SECONDS_PER_TRACE per trace. Sets
#: without a ``limit`` (every prompt of the source) get UNBOUNDED_DEADLINE_SECONDS.
STARTUP_SECONDS = 600.0
DEADLINE_TOKENS_PER_SECOND = 1.0
SCORE_SECONDS_PER_TRACE = 1.0
UNBOUNDED_DEADLINE_SECONDS = 24 * 3600.0


@dataclass(frozen=True)
class CalibrationSet:
    """A named prompt source and the capture parameters it pins (``capture``: sorted
    ``(key, value)`` pairs, ``prompts`` among them), the scoring engine and calibration,
    and optional stage deadlines. Build it with :func:`load_calibration_set`."""

    name: str
    capture: tuple
    engine: str = "local"
    calibration: str = "per-model"
    description: str = ""
    capture_deadline_seconds: float | None = None
    score_deadline_seconds: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*",
                                                              self.name):
            raise WorkspaceError(expected("calibration set name", "letters, digits, '.', '_', '-'",
                                          repr(self.name)))
        params = dict(self.capture)
        limit = params.get("limit")
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise WorkspaceError(expected(f"calibration set {self.name}: limit",
                                          "an integer >= 1 or null", repr(limit)))
        if "prompts" not in params:
            raise WorkspaceError(expected(f"calibration set {self.name}", "a 'prompts' key",
                                          "none"))
        for key, value in params.items():
            if value is not None and not isinstance(value, (str, int, float, bool)):
                raise WorkspaceError(expected(f"calibration set {self.name}: {key}",
                                              "a number, a string or null", repr(value)))
        try:  # CaptureConfig validates every value, completed with its defaults
            CaptureConfig(model="-", out="-", **params)
        except CaptureError as err:
            raise WorkspaceError(f"calibration set {self.name}: {err}") from None
        if self.engine not in ("local", "beam", "dask"):
            raise WorkspaceError(expected(f"calibration set {self.name}: engine",
                                          "local, beam or dask", repr(self.engine)))
        if self.calibration not in ("per-model", "global"):
            raise WorkspaceError(expected(f"calibration set {self.name}: calibration",
                                          "per-model or global", repr(self.calibration)))
        for what in ("capture_deadline_seconds", "score_deadline_seconds"):
            value = getattr(self, what)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not value > 0):
                raise WorkspaceError(expected(f"calibration set {self.name}: {what}",
                                              "a number of seconds > 0 or null", repr(value)))

    @property
    def prompts(self) -> str:
        return dict(self.capture)["prompts"]

    def capture_params(self) -> dict:
        """The capture parameters this set pins (and only those)."""
        return dict(self.capture)

    def completed_params(self) -> dict:
        """Every capture parameter a set may pin: the set's value, else the capture default."""
        defaults = {key: CAPTURE_DEFAULTS[key] for key in SET_FIELDS if key in CAPTURE_DEFAULTS}
        return {**defaults, **self.capture_params()}

    def param(self, key: str):
        """A capture parameter: the set's value, else the capture default."""
        return self.completed_params()[key]

    @property
    def fingerprint(self) -> str:
        """SHA-256 over what decides the scores: the name, the capture parameters the set
        pins, the engine and the calibration (not the description or the deadlines)."""
        data = {"name": self.name, "capture": self.capture_params(), "engine": self.engine,
                "calibration": self.calibration}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    @property
    def key(self) -> str:
        return f"{self.name}-{self.fingerprint[:8]}"

    def to_dict(self) -> dict:
        """The flat mapping :func:`load_calibration_set` reads back (what a YAML file holds)."""
        out = {"name": self.name, **self.capture_params(), "engine": self.engine,
               "calibration": self.calibration}
        if self.description:
            out["description"] = self.description
        for what in ("capture_deadline_seconds", "score_deadline_seconds"):
            if getattr(self, what) is not None:
                out[what] = getattr(self, what)
        return out

    def capture_config(self, model: str, out: str, model_id: str, run: dict | None = None,
                       progress: bool = False) -> CaptureConfig:
        """The capture of one checkpoint: the set's parameters, then the run's (``device``,
        ``dtype`` given by the deployment or the command). A run parameter the set pins to
        another value is refused: the set's value is part of what its key names."""
        params = self.capture_params()
        for key, value in (run or {}).items():
            if value is None:
                continue
            if key not in RUN_PARAMS:
                raise WorkspaceError(expected("run capture parameter", f"one of {RUN_PARAMS}",
                                              repr(key)))
            if key in params and params[key] != value:
                raise WorkspaceError(expected(
                    f"{key} of this run", f"{params[key]!r} (pinned by calibration set "
                    f"{self.name})", repr(value)))
            params[key] = value
        return CaptureConfig(model=model, out=out, model_id=model_id, progress=progress,
                             **params)

    @property
    def n_traces(self) -> int | None:
        """Responses a capture writes (limit x samples); None without a limit."""
        limit = self.param("limit")
        return None if limit is None else limit * self.param("samples")

    def deadline(self, stage: str) -> float:
        """Seconds a stage run may take before it is given up (and left for the next scan):
        the set's ``<stage>_deadline_seconds``, else STARTUP_SECONDS plus the capture's
        token budget at DEADLINE_TOKENS_PER_SECOND (limit x samples x max_new_tokens) or
        SCORE_SECONDS_PER_TRACE per trace; UNBOUNDED_DEADLINE_SECONDS without a limit."""
        explicit = {"capture": self.capture_deadline_seconds,
                    "score": self.score_deadline_seconds}.get(stage)
        if explicit is not None:
            return float(explicit)
        traces = self.n_traces
        if traces is None:
            return UNBOUNDED_DEADLINE_SECONDS
        if stage == "capture":
            work = traces * self.param("max_new_tokens") / DEADLINE_TOKENS_PER_SECOND
        else:
            work = traces * SCORE_SECONDS_PER_TRACE
        return STARTUP_SECONDS + math.ceil(work)


def shipped_calibration_sets() -> list[str]:
    """Names of the shipped calibration sets."""
    return sorted(p.stem for p in CALIBRATION_SET_DIR.glob("*.yaml"))


def load_calibration_set(source: str | os.PathLike | dict | CalibrationSet) -> CalibrationSet:
    """A calibration set from a mapping, a YAML file, or the name of a shipped one
    (``gsm8k``, ``arithmetic``)."""
    if isinstance(source, CalibrationSet):
        return source
    if isinstance(source, dict):
        data = dict(source)
    else:
        path = Path(source)
        if not path.suffix and not path.exists():
            path = CALIBRATION_SET_DIR / f"{source}.yaml"
        if not path.is_file():
            raise WorkspaceError(expected("calibration set",
                                          f"a YAML file or one of {shipped_calibration_sets()}",
                                          repr(str(source))))
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise WorkspaceError(expected(f"calibration set {path}", "valid YAML",
                                          str(err).splitlines()[0])) from None
        if not isinstance(data, dict):
            raise WorkspaceError(expected(f"calibration set {path}", "a mapping",
                                          type(data).__name__))
        data.setdefault("name", path.stem)
    if "name" not in data:
        raise WorkspaceError(expected("calibration set", "a 'name' key", "none"))
    unknown = sorted(set(data) - set(SET_KEYS) - set(SET_FIELDS))
    if unknown:
        raise WorkspaceError(expected("calibration set keys",
                                      f"some of {sorted(SET_KEYS + SET_FIELDS)}",
                                      f"unknown {unknown}"))
    capture = tuple(sorted((k, v) for k, v in data.items() if k in SET_FIELDS))
    return CalibrationSet(capture=capture, **{k: v for k, v in data.items() if k in SET_KEYS})


__all__ = ["CALIBRATION_SET_DIR", "CalibrationSet", "load_calibration_set", "shipped_calibration_sets"]
