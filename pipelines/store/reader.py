"""The checked reader of a store: slices of consecutive traces of one part, verified.

A :class:`WorkUnit` names consecutive traces of one part with their manifest rows;
:func:`read_unit` reads its arrays and checks them as it goes: the part folder and every
shard file covering the slice must exist (zarr would read a missing shard back as fill
values), every pointer read from the arrays must equal the manifest's per-trace offsets,
row token counts must add up to the manifest's, and a unit covering a whole part is
verified against the part's recorded array checksums. Any failure is a
:class:`BatchReadError` naming the part and the traces.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nex_transforms import Aggregates, NexError, RowCorpus, concat_corpora
from nex_transforms.segments import segment_sums

from ..records import TOKEN_STAT_NAMES
from .encode import checksum
from .layout import (AGGREGATES_DERIVED, aggregates_mode, apply_residuals, derive_aggregates,
                     physical_dtype, physical_lengths, sections, unpack)
from .schema import StoreError, array_dtype, check_storage


class BatchReadError(StoreError):
    """A work unit of the store cannot be read: a missing part, chunk or shard, a corrupt
    chunk, or arrays that disagree with the manifest. The message names the part and the
    traces."""


#: Manifest columns a work unit carries for its traces.
UNIT_COLUMNS = ("trace_id", "prompt_id", "sample_index", "model_id", "trace_index",
                "row_start", "row_stop", "entry_start", "entry_stop", "agg_start", "agg_stop",
                "token_start", "token_stop", "n_rows", "response_tokens")
_STRING_COLUMNS = ("trace_id", "prompt_id", "model_id")


@dataclass(frozen=True)
class WorkUnit:
    """Consecutive traces ``[start, stop)`` (trace indices) of one part: the unit of work.

    Attributes:
        index: position in the plan (results are put back in this order).
        part: the store part.
        start, stop: trace indices inside the part.
        whole_part: the unit covers the whole part (its array checksums are verified).
        meta: the manifest rows of its traces (columns of :data:`UNIT_COLUMNS`).
    """

    index: int
    part: str
    start: int
    stop: int
    whole_part: bool
    meta: dict

    @property
    def n_traces(self) -> int:
        return self.stop - self.start

    @property
    def n_entries(self) -> int:
        return int(self.meta["entry_stop"][-1] - self.meta["entry_start"][0])

    def where(self, trace: int | None = None) -> str:
        """``part P, trace T`` or ``part P, traces A .. B`` for error messages."""
        ids = self.meta["trace_id"]
        if trace is not None and len(ids):
            return f"part {self.part}, trace {ids[trace]}"
        if not len(ids):
            return f"part {self.part}"
        if len(ids) == 1:
            return f"part {self.part}, trace {ids[0]}"
        return f"part {self.part}, traces {ids[0]} .. {ids[-1]} ({len(ids)} traces)"


def _check_shards(store, rel: str, name: str, array, a: int, b: int, unit: WorkUnit) -> None:
    """Raise when a shard file covering elements ``[a, b)`` is missing or empty (zarr
    would read it back as fill values)."""
    if b <= a:
        return
    length = (array.shards or array.chunks)[0]
    for shard in range(a // length, (b - 1) // length + 1):
        key = f"{rel}/{name}/c/{shard}"
        size = store.loc.size(key)
        if size is None:
            raise BatchReadError(f"{unit.where()}: array {name} shard {shard}: expected "
                                 f"{store.loc.url}/{key}, got a missing file")
        if size == 0:
            raise BatchReadError(f"{unit.where()}: array {name} shard {shard}: expected "
                                 f"its chunks and index in {store.loc.url}/{key}, got an "
                                 "empty file (truncated)")


def _check_pointer(unit: WorkUnit, what: str, got: np.ndarray, starts, stops) -> None:
    """Pointer read from the arrays against the manifest's per-trace offsets."""
    want = np.concatenate([np.asarray(starts, np.int64), np.asarray(stops[-1:], np.int64)])
    got = np.asarray(got, np.int64)
    if got.shape == want.shape and np.array_equal(got, want) and \
            np.array_equal(np.asarray(starts[1:]), np.asarray(stops[:-1])):
        return
    if got.shape != want.shape:
        raise BatchReadError(f"{unit.where()}: {what}: expected {want.size} values, "
                             f"got {got.size}")
    bad = int(np.argmax(got != want))
    trace = min(bad, unit.n_traces - 1)
    raise BatchReadError(f"{unit.where(trace)}: {what}: expected {int(want[bad])} "
                         f"(manifest), got {int(got[bad])}")


class _UnitReader:
    """Reads slices of one part's logical arrays for a unit (through the part's physical
    layout, :mod:`pipelines.store.layout`), turning any failure into a
    :class:`BatchReadError` that names the part and traces. With ``whole``, each physical
    array is read whole once (its recorded checksum can then be verified)."""

    def __init__(self, store, unit: WorkUnit, whole: bool = False) -> None:
        self.unit = unit
        self.store = store
        self.whole = whole
        self.read_whole: dict[str, np.ndarray] = {}
        try:
            self.rel = store.part_rel(unit.part)
            self.path = store.part_dir(unit.part)
            if not store.loc.exists(f"{self.rel}/zarr.json"):
                raise BatchReadError(f"{unit.where()}: part arrays: expected a folder "
                                     f"{self.path}, got none (missing part)")
            self.group = store.open_part(unit.part)
            self.physical = set(self.group.array_keys())
            self.attrs = dict(self.group.attrs)
            self.version = int(self.attrs.get("schema_version", store.schema_version))
            self.storage = check_storage(self.attrs.get("storage") or store.storage)
            # the attributes with the version in force (schema-2 parts may not record it)
            self.versioned = dict(self.attrs, schema_version=self.version)
            self.sections = sections(self.versioned)
            self.derived = aggregates_mode(self.versioned) == AGGREGATES_DERIVED
            self.names = {name for name, where in self.sections.items()
                          if where[0] in self.physical}
            self.lengths = physical_lengths(self.versioned)
        except BatchReadError:
            raise
        except (StoreError, OSError, ValueError, KeyError) as err:
            raise BatchReadError(f"{unit.where()}: part: expected a readable part, "
                                 f"got {_one_line(err)}") from None

    def has(self, name: str) -> bool:
        return name in self.names

    def read(self, name: str, a: int, b: int) -> np.ndarray:
        """Elements ``[a, b)`` of the logical array ``name``."""
        unit = self.unit
        if name not in self.names:
            physical = self.sections.get(name, (name,))[0]
            raise BatchReadError(f"{unit.where()}: array {physical}: expected it in part "
                                 f"{unit.part}, got none")
        physical, offset, length = self.sections[name]
        if not 0 <= a <= b <= length:
            raise BatchReadError(f"{unit.where()}: array {name}: expected elements within "
                                 f"[0, {length}), got [{a}, {b})")
        if self.whole:
            return self._physical(physical)[offset + a:offset + b]
        return self._read(physical, offset + a, offset + b)

    def _physical(self, name: str) -> np.ndarray:
        if name not in self.read_whole:
            self._read(name, 0, None)
        return self.read_whole[name]

    def _read(self, name: str, a: int, b: int | None) -> np.ndarray:
        unit = self.unit
        try:
            array = self.group[name]
            if array.shape != (self.lengths.get(name, -1),):
                raise BatchReadError(f"{unit.where()}: array {name}: expected shape "
                                     f"({self.lengths.get(name)},) (part attributes), got "
                                     f"{array.shape}")
            b = array.shape[0] if b is None else b
            wanted = physical_dtype(name, self.storage, self.version)
            if array.dtype != wanted:
                raise BatchReadError(f"{unit.where()}: array {name}: expected dtype {wanted}, "
                                     f"got {array.dtype}")
            _check_shards(self.store, self.rel, name, array, a, b, unit)
            values = array[a:b]
        except BatchReadError:
            raise
        except Exception as err:  # zarr/codec errors of corrupt chunks have many types
            raise BatchReadError(f"{unit.where()}: array {name} elements [{a}, {b}): "
                                 f"expected readable chunks, got {type(err).__name__}: "
                                 f"{_one_line(err)}") from None
        if a == 0 and b == array.shape[0]:
            self.read_whole[name] = values
        return values

    def aggregates(self, t0: int, t1: int, rows=None) -> Aggregates:
        """The aggregates of traces ``[t0, t1)`` (relative pointer), checked against the
        manifest; derived from ``rows`` (``(row_ptr, entry_ptr, keys, masses)`` of the same
        traces, read when not given) for parts that store residuals."""
        unit, meta = self.unit, self.unit.meta
        agg_ptr = self.read("agg_ptr", t0, t1 + 1)
        _check_pointer(unit, "aggregate pointer", agg_ptr, meta["agg_start"], meta["agg_stop"])
        a0, a1 = int(agg_ptr[0]), int(agg_ptr[-1])
        if not self.derived:
            return Aggregates(agg_ptr - a0, self.read("agg_keys", a0, a1),
                              self.read("agg_masses", a0, a1))
        row_ptr, entry_ptr, keys, masses = rows if rows is not None else self.rows(t0, t1)
        try:
            ptr, keys, derived = derive_aggregates(row_ptr, entry_ptr, keys, masses,
                                                   array_dtype("agg_masses", self.storage))
        except StoreError as err:
            raise BatchReadError(f"{unit.where()}: {err}") from None
        if not np.array_equal(ptr, agg_ptr - a0):
            bad = int(np.argmax(ptr != agg_ptr - a0)) if ptr.shape == agg_ptr.shape else 1
            raise BatchReadError(f"{unit.where(max(bad - 1, 0))}: aggregate pointer: expected "
                                 f"{int(agg_ptr[bad] - a0)} (stored), got {int(ptr[bad])} "
                                 "distinct keys of the rows")
        stored = self.read("agg_residuals", a0, a1)
        try:
            masses = apply_residuals(derived, stored)
        except StoreError as err:
            raise BatchReadError(f"{unit.where()}: {err}") from None
        return Aggregates(ptr, keys, masses)

    def rows(self, t0: int, t1: int):
        """``(row_ptr, entry_ptr, keys, masses)`` of traces ``[t0, t1)``: pointers relative
        to the first row and entry, checked against the manifest."""
        unit, meta = self.unit, self.unit.meta
        row_ptr = self.read("trace_row_ptr", t0, t1 + 1)
        _check_pointer(unit, "row pointer", row_ptr, meta["row_start"], meta["row_stop"])
        r0, r1 = int(row_ptr[0]), int(row_ptr[-1])
        entry_ptr = self.read("row_entry_ptr", r0, r1 + 1)
        _check_pointer(unit, "entry pointer", entry_ptr[row_ptr - r0], meta["entry_start"],
                       meta["entry_stop"])
        e0, e1 = int(entry_ptr[0]), int(entry_ptr[-1])
        return (row_ptr - r0, entry_ptr - e0, self.read("keys", e0, e1),
                self.read("masses", e0, e1))

    def verify_checksums(self) -> None:
        """Check the CRC-32 of every array read whole against the part's record."""
        recorded = dict(self.group.attrs.get("checksums") or {})
        for name, values in self.read_whole.items():
            if name in recorded and checksum(values) != recorded[name]:
                raise BatchReadError(f"{self.unit.where()}: array {name} checksum: expected "
                                     f"{recorded[name]}, got {checksum(values)} "
                                     "(corrupt or missing chunk)")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:500]


def read_unit(store, unit: WorkUnit, aggregates_only: bool = False):
    """Read a unit: ``(corpus, token_stats)``.

    ``corpus`` is a :class:`RowCorpus` with its stored aggregates (or, with
    ``aggregates_only``, an :class:`Aggregates`); ``token_stats`` maps each name of
    :data:`TOKEN_STAT_NAMES` to ``(ptr, values)`` (NaN when not stored), None with
    ``aggregates_only``. Pointers are checked against the manifest, shard files must
    exist, and whole-part units are checked against the recorded checksums.
    """
    reader = _UnitReader(store, unit, whole=unit.whole_part)
    meta, t0, t1 = unit.meta, unit.start, unit.stop
    if aggregates_only:
        return reader.aggregates(t0, t1), None
    rows = reader.rows(t0, t1)
    row_ptr, entry_ptr, keys, masses = rows
    aggregates = reader.aggregates(t0, t1, rows)
    r0 = int(meta["row_start"][0])
    row_tokens = reader.read("row_tokens", r0, r0 + int(row_ptr[-1])).astype(np.int64)
    tokens = segment_sums(row_tokens, row_ptr).astype(np.int64)
    if not np.array_equal(tokens, meta["response_tokens"]):
        bad = int(np.argmax(tokens != meta["response_tokens"]))
        raise BatchReadError(f"{unit.where(bad)}: row token counts: expected a sum of "
                             f"{int(meta['response_tokens'][bad])} (manifest), got "
                             f"{int(tokens[bad])}")
    token_ptr = reader.read("token_ptr", t0, t1 + 1)
    _check_pointer(unit, "token pointer", token_ptr, meta["token_start"], meta["token_stop"])
    k0, k1 = int(token_ptr[0]), int(token_ptr[-1])
    stats = {}
    for name in TOKEN_STAT_NAMES:
        values = (reader.read(name, k0, k1) if reader.has(name)
                  else np.full(k1 - k0, np.nan, np.float32))
        stats[name] = (token_ptr - k0, values)
    try:
        corpus = RowCorpus(row_ptr, entry_ptr, row_tokens, keys, masses, aggregates)
    except NexError as err:
        raise BatchReadError(f"{unit.where()}: rows: expected consistent arrays, got "
                             f"{_one_line(err)}") from None
    if unit.whole_part:
        reader.read("token_ids", k0, k1)  # read whole so its checksum is verified too
        reader.verify_checksums()
    return corpus, stats


def units_of(table, whole: bool = False) -> list[WorkUnit]:
    """One unit per run of consecutive traces of one part in a manifest ``table`` (rows
    in manifest order); ``whole``: each unit covers its part's traces from the first
    stored one on, so that whole-part units verify the recorded checksums."""
    columns = {name: table[name].to_numpy(zero_copy_only=False) for name in UNIT_COLUMNS}
    parts = np.asarray(table["part"].to_pylist(), dtype=object)
    index = columns["trace_index"].astype(np.int64)
    breaks = np.flatnonzero((parts[1:] != parts[:-1]) | (np.diff(index) != 1)) + 1 \
        if parts.size else np.zeros(0, np.int64)
    units = []
    for a, b in zip([0, *breaks.tolist()], [*breaks.tolist(), parts.size]):
        if b <= a:
            continue
        meta = {name: columns[name][a:b] for name in UNIT_COLUMNS}
        for name in _STRING_COLUMNS:
            meta[name] = [str(v) for v in meta[name]]
        units.append(WorkUnit(len(units), str(parts[a]), int(index[a]), int(index[b - 1]) + 1,
                              whole_part=whole, meta=meta))
    return units


def read_selection(store, table, token_stats: bool = True):
    """``(corpus, token_stats)`` of the traces of a manifest ``table`` (in its order),
    every slice read through :func:`read_unit`; ``token_stats`` is None when not asked."""
    corpora, stats = [], []
    for unit in units_of(table):
        corpus, unit_stats = read_unit(store, unit)
        corpora.append(corpus)
        stats.append(unit_stats)
    if not corpora:
        empty = np.zeros(0)
        corpus = RowCorpus(np.zeros(1, np.int64), np.zeros(1, np.int64), empty.astype(np.int64),
                           empty.astype(np.uint32), empty.astype(np.float16),
                           Aggregates(np.zeros(1, np.int64), empty.astype(np.uint32),
                                      empty.astype(np.float16)))
    else:
        corpus = corpora[0] if len(corpora) == 1 else concat_corpora(corpora)
    if not token_stats:
        return corpus, None
    merged = {}
    for name in TOKEN_STAT_NAMES:
        ptrs = [s[name][0] for s in stats]
        merged[name] = (_concat_ptr(ptrs), np.concatenate([s[name][1] for s in stats])
                        .astype(np.float32) if stats else np.zeros(0, np.float32))
    return corpus, merged


def _concat_ptr(ptrs: list) -> np.ndarray:
    lengths = [np.diff(p) for p in ptrs]
    if not lengths:
        return np.zeros(1, np.int64)
    return np.concatenate([[0], np.cumsum(np.concatenate(lengths))]).astype(np.int64)


def read_token_ids(store, table) -> tuple[np.ndarray, np.ndarray]:
    """``(ptr, token_ids)`` of the traces of a manifest ``table``, checked like
    :func:`read_unit` (pointers against the manifest, shards present, dtypes)."""
    ptrs, values = [], []
    for unit in units_of(table):
        reader = _UnitReader(store, unit)
        token_ptr = reader.read("token_ptr", unit.start, unit.stop + 1)
        _check_pointer(unit, "token pointer", token_ptr, unit.meta["token_start"],
                       unit.meta["token_stop"])
        k0, k1 = int(token_ptr[0]), int(token_ptr[-1])
        ptrs.append(token_ptr - k0)
        values.append(reader.read("token_ids", k0, k1))
    return _concat_ptr(ptrs), (np.concatenate(values).astype(np.int32) if values
                               else np.zeros(0, np.int32))


def read_part_arrays(store, part: str, table, names: list[str] | None = None) -> dict:
    """Whole logical arrays of one part (all of them by default), through the checked
    path: every physical array read whole (its recorded checksum verified), aggregates
    derived where the part stores residuals, the part's pointers compared with its
    manifest ``table``."""
    units = units_of(table, whole=True)
    if not units:  # a part without traces: its arrays are pointers of one 0 each
        meta = {name: table[name].to_numpy(zero_copy_only=False) for name in UNIT_COLUMNS}
        units = [WorkUnit(0, part, 0, 0, whole_part=True, meta=meta)]
    (unit,) = units
    if unit.part != part or unit.start != 0:
        raise BatchReadError(f"part {part}: expected its manifest rows, got another table")
    reader = _UnitReader(store, unit, whole=True)
    physical = {name: reader._physical(name) for name in sorted(reader.physical)}
    try:
        logical = unpack(physical, reader.versioned, reader.storage)
    except StoreError as err:
        raise BatchReadError(f"{unit.where()}: {err}") from None
    names = sorted(logical) if names is None else names
    out = {}
    for name in names:
        if name not in logical:
            raise BatchReadError(f"{unit.where()}: array {name}: expected it in part "
                                 f"{unit.part}, got none")
        out[name] = logical[name]
    meta = unit.meta
    checks = {"trace_row_ptr": ("row pointer", "row_start", "row_stop"),
              "agg_ptr": ("aggregate pointer", "agg_start", "agg_stop"),
              "token_ptr": ("token pointer", "token_start", "token_stop")}
    for name, (what, start, stop) in checks.items():
        if name in logical and unit.n_traces:
            _check_pointer(unit, what, logical[name], meta[start], meta[stop])
    if unit.n_traces:
        _check_pointer(unit, "entry pointer",
                       logical["row_entry_ptr"][logical["trace_row_ptr"]],
                       meta["entry_start"], meta["entry_stop"])
    reader.verify_checksums()
    return out


__all__ = ["BatchReadError", "UNIT_COLUMNS", "WorkUnit", "read_part_arrays",
           "read_selection", "read_token_ids", "read_unit", "units_of"]
