"""The neuron-contexts job: for chosen neurons, the rows of the store where each fires most.

For every neuron of a :class:`ContextsJob` (a calibration key and a neuron key, usually
the most positive and most negative weights of a ``neurons`` table) the job finds the
``per_neuron`` rows of the whole store with the largest mass of that neuron, among the
traces of that calibration key (the model's own traces with per-model calibration, every
trace otherwise). One streaming pass over the store's work units:

1. :func:`unit_contexts` (pure apart from reading the store): the unit's top rows per
   neuron, as a :class:`TopContexts` value;
2. :meth:`TopContexts.merge` over all units, in any order and any tree (a commutative
   monoid, like the credit accumulator): the store's top rows per neuron.

A row's mass for a neuron is the sum of the row's entries of that key, sanitised like
the method's (non-finite -> 0, clipped at 0); rows where it is 0 never count. Rows are
ordered by mass (descending), then trace id, then row index (ascending): a total order,
so every engine and every split of the store into units gives the same table. Memory is
bounded by the number of neurons times ``per_neuron`` (plus one unit's hits), not by
the corpus. Engines wrap the two steps (``contexts`` in each adapter); nothing here
imports an engine library.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from nex_transforms import DEFAULT_BATCH_ENTRIES
from nex_transforms.corpus import clean_masses
from nex_transforms.params import KEY_SPACE, UNIT_BITS

from .. import tables
from ..store.reader import WorkUnit, read_unit
from . import load_adapter
from .plan import GLOBAL_KEY, EngineError, ScoreConfig, plan_run

#: Contexts kept per neuron by default, and neurons of each sign per calibration key.
DEFAULT_PER_NEURON = 20
DEFAULT_NEURONS_PER_SIGN = 50


@dataclass(frozen=True)
class ContextsJob:
    """What the contexts job looks for (engine-independent; pickles to workers).

    Attributes:
        store: path or URL of the activation store.
        neurons: ``(calibration key, neuron key)`` pairs, sorted and unique; a neuron's
            position in this tuple is its id in :class:`TopContexts`.
        per_model: the traces of calibration key ``k`` are those of model ``k``
            (per-model calibration); otherwise every trace belongs to :data:`GLOBAL_KEY`.
        per_neuron: rows kept per neuron.
        batch_entries: row entries per work unit (about; a unit holds whole traces).
    """

    store: str
    neurons: tuple
    per_model: bool = True
    per_neuron: int = DEFAULT_PER_NEURON
    batch_entries: int = DEFAULT_BATCH_ENTRIES

    def __post_init__(self) -> None:
        object.__setattr__(self, "store", str(self.store))
        pairs = tuple((str(k), int(n)) for k, n in self.neurons)
        if list(pairs) != sorted(set(pairs)):
            raise EngineError("contexts neurons: expected sorted, unique (calibration key, "
                              f"neuron key) pairs, got {list(pairs[:4])} ...")
        bad = [n for _, n in pairs if not 0 <= n < KEY_SPACE]
        if bad:
            raise EngineError(f"contexts neurons: expected keys below 2^22, got {bad[0]}")
        object.__setattr__(self, "neurons", pairs)
        for name in ("per_neuron", "batch_entries"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise EngineError(f"contexts {name}: expected an integer >= 1, got {value!r}")

    def key_of(self, model_id: str) -> str:
        """The calibration key of a model's traces."""
        return model_id if self.per_model else GLOBAL_KEY

    @cached_property
    def calibration_keys(self) -> tuple:
        """The calibration keys with at least one neuron, sorted."""
        return tuple(sorted({k for k, _ in self.neurons}))

    @cached_property
    def _lookup(self) -> tuple:
        """``(mask, combined)``: a bool mask over the key space (plus one cell for keys
        beyond it) of the keys any neuron has, and per neuron ``calibration key index <<
        32 | key`` (ascending, since the neurons are sorted)."""
        index = {k: i for i, k in enumerate(self.calibration_keys)}
        mask = np.zeros(KEY_SPACE + 1, bool)
        combined = np.zeros(len(self.neurons), np.uint64)
        for position, (calibration, key) in enumerate(self.neurons):
            mask[key] = True
            combined[position] = (np.uint64(index[calibration]) << np.uint64(32)) | np.uint64(key)
        return mask, combined

    def __getstate__(self) -> dict:
        # the fields only: the lookup tables are rebuilt where they are used (4 MiB)
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def to_dict(self) -> dict:
        return {"store": self.store, "n_neurons": len(self.neurons), "per_model": self.per_model,
                "per_neuron": self.per_neuron, "batch_entries": self.batch_entries}


# --------------------------------------------------------------------------- the value
def _empty_strings() -> np.ndarray:
    return np.zeros(0, "<U1")


@dataclass(frozen=True)
class TopContexts:
    """The top rows per neuron of some traces: a commutative monoid under :meth:`merge`.

    Parallel arrays, sorted by neuron, then mass (descending), trace id and row; at most
    ``per_neuron`` entries per neuron.

    Attributes:
        per_neuron: rows kept per neuron.
        neuron: int32 neuron id (position in :attr:`ContextsJob.neurons`).
        mass: float64 mass of the neuron in the row.
        trace_id: the row's trace (a numpy unicode array).
        row: int64 index of the row in its response.
        token_start, token_stop: int64 the row's tokens ``[start, stop)`` in its response.
    """

    per_neuron: int
    neuron: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    mass: np.ndarray = field(default_factory=lambda: np.zeros(0))
    trace_id: np.ndarray = field(default_factory=_empty_strings)
    row: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    token_start: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    token_stop: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @classmethod
    def empty(cls, per_neuron: int) -> "TopContexts":
        return cls(int(per_neuron))

    @classmethod
    def top(cls, per_neuron: int, neuron, mass, trace_id, row, token_start,
            token_stop) -> "TopContexts":
        """The best ``per_neuron`` candidates of each neuron among the given ones (a
        (trace, row) must not repeat for a neuron)."""
        neuron = np.asarray(neuron, np.int32)
        mass = np.asarray(mass, np.float64)
        trace_id = np.asarray(trace_id, dtype=str) if len(trace_id) else _empty_strings()
        row = np.asarray(row, np.int64)
        order = np.lexsort((row, trace_id, -mass, neuron))
        sorted_neuron = neuron[order]
        starts = np.flatnonzero(np.r_[True, sorted_neuron[1:] != sorted_neuron[:-1]]) \
            if order.size else np.zeros(0, np.int64)
        counts = np.diff(np.r_[starts, order.size])
        rank = np.arange(order.size) - np.repeat(starts, counts)
        keep = order[rank < per_neuron]
        return cls(int(per_neuron), neuron[keep], mass[keep], trace_id[keep], row[keep],
                   np.asarray(token_start, np.int64)[keep],
                   np.asarray(token_stop, np.int64)[keep])

    def __len__(self) -> int:
        return int(self.neuron.size)

    def merge(self, other: "TopContexts") -> "TopContexts":
        return TopContexts.merge_all([self, other])

    @classmethod
    def merge_all(cls, parts) -> "TopContexts":
        """Merge any number of values (all with the same ``per_neuron``)."""
        parts = list(parts)
        if not parts:
            raise EngineError("contexts merge: expected at least one value, got none")
        per_neuron = {p.per_neuron for p in parts}
        if len(per_neuron) != 1:
            raise EngineError(f"contexts merge: expected one per_neuron, got {sorted(per_neuron)}")
        parts = [p for p in parts if len(p)] or parts[:1]
        if len(parts) == 1:
            return parts[0]
        columns = [np.concatenate([getattr(p, name) for p in parts]) for name in
                   ("neuron", "mass", "trace_id", "row", "token_start", "token_stop")]
        return cls.top(per_neuron.pop(), *columns)

    def ranks(self) -> np.ndarray:
        """1-based rank of each entry within its neuron."""
        if not len(self):
            return np.zeros(0, np.int64)
        starts = np.flatnonzero(np.r_[True, self.neuron[1:] != self.neuron[:-1]])
        counts = np.diff(np.r_[starts, self.neuron.size])
        return np.arange(self.neuron.size) - np.repeat(starts, counts) + 1

    def columns(self, job: ContextsJob) -> dict:
        """Columns of the ``neuron_contexts`` table (rows in this value's order)."""
        neurons = job.neurons
        keys = np.asarray([neurons[i][1] for i in self.neuron], np.uint32)
        return {"model_id": [neurons[i][0] for i in self.neuron], "key": keys,
                "layer": (keys >> UNIT_BITS).astype(np.int32),
                "unit": (keys & ((1 << UNIT_BITS) - 1)).astype(np.int32),
                "rank": self.ranks(), "trace_id": self.trace_id.tolist(),
                "row": self.row, "mass": self.mass, "token_start": self.token_start,
                "token_stop": self.token_stop}


# --------------------------------------------------------------------------- the step
def corpus_contexts(corpus, trace_ids, trace_keys, job: ContextsJob) -> TopContexts:
    """The top rows per neuron of ``job`` in a :class:`~nex_transforms.RowCorpus` whose
    traces have ids ``trace_ids`` and calibration keys ``trace_keys`` (pure numpy)."""
    empty = TopContexts.empty(job.per_neuron)
    index = {k: i for i, k in enumerate(job.calibration_keys)}
    trace_index = np.asarray([index.get(k, -1) for k in trace_keys], np.int64)
    if not len(job.neurons) or not (trace_index >= 0).any() or corpus.n_entries == 0:
        return empty
    mask, combined = job._lookup
    keys = corpus.keys
    hit = np.flatnonzero(mask[np.minimum(keys, KEY_SPACE)])
    if hit.size == 0:
        return empty
    row = np.searchsorted(corpus.row_entry_ptr, hit, side="right") - 1
    trace = np.searchsorted(corpus.trace_row_ptr, row, side="right") - 1
    calibration = trace_index[trace]
    wanted = (np.maximum(calibration, 0).astype(np.uint64) << np.uint64(32)) | \
        keys[hit].astype(np.uint64)
    position = np.minimum(np.searchsorted(combined, wanted), combined.size - 1)
    found = (calibration >= 0) & (combined[position] == wanted)
    neuron = position[found].astype(np.int64)
    row = row[found]
    mass = clean_masses(corpus.masses[hit[found]].astype(np.float64))
    # a key repeated within a row counts once, with its masses summed (entry order)
    pair = row * len(job.neurons) + neuron
    pairs, inverse = np.unique(pair, return_inverse=True)
    if pairs.size < pair.size:
        mass = np.bincount(inverse, weights=mass, minlength=pairs.size)
        row, neuron = pairs // len(job.neurons), pairs % len(job.neurons)
    positive = mass > 0
    row, neuron, mass = row[positive], neuron[positive], mass[positive]
    trace = np.searchsorted(corpus.trace_row_ptr, row, side="right") - 1
    first_row = corpus.trace_row_ptr[trace]
    token_ptr = np.concatenate([[0], np.cumsum(corpus.row_tokens)])
    token_start = token_ptr[row] - token_ptr[first_row]
    token_stop = token_start + corpus.row_tokens[row]
    ids = np.asarray([str(t) for t in trace_ids], dtype=str)
    return TopContexts.top(job.per_neuron, neuron, mass, ids[trace] if trace.size else
                           _empty_strings(), row - first_row, token_start, token_stop)


def unit_contexts(store, unit: WorkUnit, job: ContextsJob) -> TopContexts:
    """The top rows per neuron of one work unit (read through the checked reader)."""
    keys = [job.key_of(m) for m in unit.meta["model_id"]]
    if not set(keys) & set(job.calibration_keys):
        return TopContexts.empty(job.per_neuron)
    corpus, _ = read_unit(store, unit)
    return corpus_contexts(corpus, unit.meta["trace_id"], keys, job)


def contexts_table(value: TopContexts, job: ContextsJob):
    """The ``neuron_contexts`` table (pyarrow) of a merged value."""
    return tables.to_table("neuron_contexts", value.columns(job))


# --------------------------------------------------------------------------- running
def run_contexts(engine: str, job: ContextsJob, out_folder, engine_options: dict | None = None,
                 expected_fingerprint: str | None = None) -> dict:
    """Run the job with ``engine`` and write ``neuron_contexts.parquet`` (a file, or a
    folder of part files with Beam) into the existing folder ``out_folder``.

    ``expected_fingerprint`` (a tables folder's ``store_fingerprint``): refuse a store
    whose fingerprint differs, before any unit is read. Returns a summary (units, traces,
    rows written, engine information, seconds).
    """
    adapter = load_adapter(engine)
    started = time.perf_counter()
    plan = plan_run(ScoreConfig(store=job.store, batch_entries=job.batch_entries))
    if expected_fingerprint is not None and plan.fingerprint != expected_fingerprint:
        raise EngineError(f"store {plan.config.store}: expected the store the tables were "
                          f"scored from (fingerprint {expected_fingerprint[:23]}...), got "
                          f"fingerprint {plan.fingerprint[:23]}... (another or a changed store)")
    job = dataclasses.replace(job, store=plan.config.store)
    info = adapter.contexts(plan, job, out_folder, dict(engine_options or {}))
    return {"engine": engine, "engine_info": info, "n_units": len(plan.units),
            "n_traces": plan.n_traces, "n_neurons": len(job.neurons),
            "store_fingerprint": plan.fingerprint,
            "seconds": time.perf_counter() - started}


__all__ = ["ContextsJob", "DEFAULT_NEURONS_PER_SIGN", "DEFAULT_PER_NEURON", "TopContexts",
           "contexts_table", "corpus_contexts", "run_contexts", "unit_contexts"]
