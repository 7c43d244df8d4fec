"""Planning a scoring run: its configuration, and the store split into work units.

A store is planned into :class:`~pipelines.store.reader.WorkUnit` values (consecutive
traces of one part, about ``batch_entries`` row entries each, never splitting a trace:
:func:`nex_transforms.trace_batches`), in manifest order, with a fingerprint of the input
store for ``run.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from nex_transforms import DEFAULT_BATCH_ENTRIES, NexError, NexParams, trace_batches

from ..store import ActivationStore, StoreError
from ..store.fs import is_url
from ..store.reader import UNIT_COLUMNS, BatchReadError, WorkUnit
from ..weights_io import load_weights
from .weights import SparseWeights

#: Calibration modes: per-model self-calibration, one global weight vector, given weights.
CALIBRATIONS = ("per-model", "global", "weights")
#: Calibration key of global calibration and of given weights (``model_id`` column of the
#: neurons table in those modes).
GLOBAL_KEY = "*"


class EngineError(NexError):
    """A scoring run cannot proceed (bad options, an engine failure)."""


# --------------------------------------------------------------------------- values
@dataclass(frozen=True)
class ScoreConfig:
    """What to score and how (engine-independent; pickles to workers).

    Attributes:
        store: path of the activation store.
        params: method parameters.
        calibration: ``per-model``, ``global`` or ``weights`` (score with ``weights_file``).
        weights_file: ``.npz`` (key ``weights``) or ``.npy`` dense weights, for
            ``calibration="weights"``.
        phases: also produce the per-row phases table.
        batch_entries: row entries per work unit (about; a unit holds whole traces).
    """

    store: str
    params: NexParams = field(default_factory=NexParams)
    calibration: str = "per-model"
    weights_file: str | None = None
    phases: bool = False
    batch_entries: int = DEFAULT_BATCH_ENTRIES

    def __post_init__(self) -> None:
        object.__setattr__(self, "store", str(self.store))
        if self.calibration not in CALIBRATIONS:
            raise EngineError(f"calibration: expected one of {CALIBRATIONS}, "
                              f"got {self.calibration!r}")
        if (self.calibration == "weights") != (self.weights_file is not None):
            raise EngineError("weights file: expected one exactly with calibration "
                              f"'weights', got calibration {self.calibration!r} and "
                              f"weights file {self.weights_file!r}")
        if isinstance(self.batch_entries, bool) or not isinstance(self.batch_entries, int) \
                or self.batch_entries < 1:
            raise EngineError(f"batch_entries: expected an integer >= 1, "
                              f"got {self.batch_entries!r}")

    def key_of(self, model_id: str) -> str:
        """The calibration key of a model: its id (per-model) or :data:`GLOBAL_KEY`."""
        return model_id if self.calibration == "per-model" else GLOBAL_KEY

    def to_dict(self) -> dict:
        return {"store": self.store, "params": self.params.to_dict(),
                "calibration": self.calibration, "weights_file": self.weights_file,
                "phases": self.phases, "batch_entries": self.batch_entries}


_STRING_COLUMNS = ("trace_id", "prompt_id", "model_id")


@dataclass(frozen=True)
class RunPlan:
    """A planned run: the config, the work units and a fingerprint of the input store."""

    config: ScoreConfig
    units: tuple
    n_traces: int
    models: tuple
    fingerprint: str
    store_summary: dict
    fixed_weights: SparseWeights | None = None
    hooked_neurons: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- planning
def hooked_neurons(capture: dict | None) -> int | None:
    """Neurons a capture hooked (hooked layers x MLP width), from its recorded parameters;
    None where they do not say (an imported row cache, a synthetic store without them)."""
    capture = capture or {}
    layers, width = capture.get("layers"), capture.get("intermediate_size")
    if not isinstance(layers, list) or not layers or isinstance(width, bool) \
            or not isinstance(width, int) or width < 1:
        return None
    return len(layers) * width


@lru_cache(maxsize=4)
def open_store(path: str):
    """The store at ``path``, opened once per process (read-only)."""
    return ActivationStore.open(path)


def _fingerprint(store, table) -> tuple[str, dict]:
    """SHA-256 of the manifest identity columns, the part summaries and array checksums."""
    digest = hashlib.sha256()
    for name in ("trace_id", "part", "model_id", "trace_index", "n_rows", "n_entries",
                 "response_tokens"):
        column = table[name].to_pylist()
        digest.update(name.encode())
        digest.update(json.dumps(column).encode())
    summaries = store.part_summaries()
    checksums = {}
    for part in sorted(summaries):
        node = store.loc.read_json(f"{store.part_rel(part)}/zarr.json") or {}
        checksums[part] = node.get("attributes", {}).get("checksums")
    digest.update(json.dumps(summaries, sort_keys=True).encode())
    digest.update(json.dumps(checksums, sort_keys=True).encode())
    return "sha256:" + digest.hexdigest(), summaries


def _refuse_duplicate_traces(path: str, table) -> None:
    """Raise when the manifest lists a trace id more than once (its credit and GMF would
    be counted twice), naming the first such id and the parts that hold it."""
    ids = np.asarray(table["trace_id"].to_pylist(), dtype=object)
    unique, counts = np.unique(ids, return_counts=True)
    repeated = unique[counts > 1]
    if repeated.size == 0:
        return
    first = str(repeated[0])
    parts = np.asarray(table["part"].to_pylist(), dtype=object)[ids == first].tolist()
    more = f" (and {repeated.size - 1} more repeated ids)" if repeated.size > 1 else ""
    raise EngineError(f"store {path} manifest trace_id: expected every trace id once, got "
                      f"{first!r} {len(parts)} times, in parts {', '.join(map(str, parts))}"
                      f"{more}")


def plan_run(config: ScoreConfig) -> RunPlan:
    """Open the store, read its manifest and split it into work units (manifest order)."""
    if not is_url(config.store):  # object-store URLs are absolute already
        config = dataclasses.replace(config, store=str(Path(config.store).resolve()))
    store = open_store(config.store)
    try:
        table = store.manifest()
    except StoreError:
        raise
    except (OSError, ValueError) as err:
        raise EngineError(f"store {config.store} manifest: expected a readable manifest, "
                          f"got {err}") from None
    if table.num_rows == 0:
        raise EngineError(f"store {config.store}: expected at least one complete trace, got 0")
    _refuse_duplicate_traces(config.store, table)
    models = tuple(sorted(set(table["model_id"].to_pylist())))
    hooked = {m: hooked_neurons(store.capture_metadata(m)) for m in models}
    columns = {name: table[name].to_numpy(zero_copy_only=False) for name in UNIT_COLUMNS}
    entries = table["n_entries"].to_numpy()
    parts = np.asarray(table["part"].to_pylist(), dtype=object)
    units = []
    bounds = list(np.flatnonzero(parts[1:] != parts[:-1]) + 1)
    for a, b in zip([0] + bounds, bounds + [parts.size]):
        part = str(parts[a])
        index = columns["trace_index"][a:b]
        if not np.array_equal(index, np.arange(index[0], index[0] + index.size)):
            raise BatchReadError(f"part {part} manifest trace_index: expected consecutive "
                                 f"indices, got {index[:5].tolist()} ...")
        for lo, hi in trace_batches(entries[a:b], config.batch_entries):
            meta = {name: columns[name][a + lo:a + hi] for name in UNIT_COLUMNS}
            for name in _STRING_COLUMNS:
                meta[name] = [str(v) for v in meta[name]]
            meta["hooked_neurons"] = np.array([hooked.get(m) or 0 for m in meta["model_id"]],
                                              np.int64)
            units.append(WorkUnit(len(units), part, int(index[lo]), int(index[lo]) + hi - lo,
                                  whole_part=(hi - lo == b - a and int(index[0]) == 0),
                                  meta=meta))
    fingerprint, summaries = _fingerprint(store, table)
    fixed = None
    if config.calibration == "weights":
        fixed = SparseWeights.from_dense(load_weights(config.weights_file))
    summary = {"path": str(store.path), "traces": table.num_rows, "parts": len(summaries),
               "models": list(models),
               "entries": int(sum(s.get("n_entries", 0) for s in summaries.values()))}
    return RunPlan(config, tuple(units), table.num_rows, models, fingerprint, summary, fixed,
                   hooked)


def calibration_keys(plan: RunPlan) -> list[str]:
    """The calibration keys of a run, sorted (model ids, or :data:`GLOBAL_KEY`)."""
    return sorted({plan.config.key_of(m) for m in plan.models})


__all__ = ["CALIBRATIONS", "DEFAULT_BATCH_ENTRIES", "EngineError", "GLOBAL_KEY", "RunPlan",
           "ScoreConfig", "WorkUnit", "calibration_keys", "hooked_neurons", "open_store",
           "plan_run"]
