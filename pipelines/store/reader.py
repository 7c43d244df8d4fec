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
from pathlib import Path

import numpy as np

from nex_transforms import Aggregates, NexError, RowCorpus
from nex_transforms.segments import segment_sums

from ..records import TOKEN_STAT_NAMES
from .schema import StoreError


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
        if trace is not None:
            return f"part {self.part}, trace {ids[trace]}"
        if len(ids) == 1:
            return f"part {self.part}, trace {ids[0]}"
        return f"part {self.part}, traces {ids[0]} .. {ids[-1]} ({len(ids)} traces)"


def _check_shards(group_path: Path, name: str, array, a: int, b: int, unit: WorkUnit) -> None:
    """Raise when a shard file covering elements ``[a, b)`` is missing (zarr would read it
    back as fill values)."""
    if b <= a:
        return
    length = (array.shards or array.chunks)[0]
    folder = group_path / name / "c"
    for shard in range(a // length, (b - 1) // length + 1):
        if not (folder / str(shard)).is_file():
            raise BatchReadError(f"{unit.where()}: array {name} shard {shard}: expected "
                                 f"{folder / str(shard)}, got a missing file")


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
    """Reads slices of one part's arrays for a unit, turning any failure into a
    :class:`BatchReadError` that names the part and traces."""

    def __init__(self, store, unit: WorkUnit) -> None:
        self.unit = unit
        self.path = store.part_dir(unit.part)
        self.read_whole: dict[str, np.ndarray] = {}
        try:
            if not self.path.is_dir():
                raise BatchReadError(f"{unit.where()}: part arrays: expected a folder "
                                     f"{self.path}, got none (missing part)")
            self.group = store.open_part(unit.part)
            self.names = set(self.group.array_keys())
        except BatchReadError:
            raise
        except (StoreError, OSError, ValueError, KeyError) as err:
            raise BatchReadError(f"{unit.where()}: part: expected a readable part, "
                                 f"got {_one_line(err)}") from None

    def has(self, name: str) -> bool:
        return name in self.names

    def read(self, name: str, a: int, b: int) -> np.ndarray:
        unit = self.unit
        if name not in self.names:
            raise BatchReadError(f"{unit.where()}: array {name}: expected it in part "
                                 f"{unit.part}, got none")
        try:
            array = self.group[name]
            _check_shards(self.path, name, array, a, b, unit)
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

    def verify_checksums(self) -> None:
        """Check the CRC-32 of every array read whole against the part's record."""
        from .store import checksum

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
    reader = _UnitReader(store, unit)
    meta, t0, t1 = unit.meta, unit.start, unit.stop
    agg_ptr = reader.read("agg_ptr", t0, t1 + 1)
    _check_pointer(unit, "aggregate pointer", agg_ptr, meta["agg_start"], meta["agg_stop"])
    a0, a1 = int(agg_ptr[0]), int(agg_ptr[-1])
    aggregates = Aggregates(agg_ptr - a0, reader.read("agg_keys", a0, a1),
                            reader.read("agg_masses", a0, a1))
    if aggregates_only:
        return aggregates, None
    row_ptr = reader.read("trace_row_ptr", t0, t1 + 1)
    _check_pointer(unit, "row pointer", row_ptr, meta["row_start"], meta["row_stop"])
    r0, r1 = int(row_ptr[0]), int(row_ptr[-1])
    entry_ptr = reader.read("row_entry_ptr", r0, r1 + 1)
    _check_pointer(unit, "entry pointer", entry_ptr[row_ptr - r0], meta["entry_start"],
                   meta["entry_stop"])
    e0, e1 = int(entry_ptr[0]), int(entry_ptr[-1])
    row_tokens = reader.read("row_tokens", r0, r1).astype(np.int64)
    tokens = segment_sums(row_tokens, row_ptr - r0).astype(np.int64)
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
    keys, masses = reader.read("keys", e0, e1), reader.read("masses", e0, e1)
    try:
        corpus = RowCorpus(row_ptr - r0, entry_ptr - e0, row_tokens, keys, masses, aggregates)
    except NexError as err:
        raise BatchReadError(f"{unit.where()}: rows: expected consistent arrays, got "
                             f"{_one_line(err)}") from None
    if unit.whole_part:
        reader.read("token_ids", k0, k1)  # read whole so its checksum is verified too
        reader.verify_checksums()
    return corpus, stats


__all__ = ["BatchReadError", "UNIT_COLUMNS", "WorkUnit", "read_unit"]
