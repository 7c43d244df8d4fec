"""The engine-independent core of ``nex score``: pure functions over batches of traces.

A store is planned into :class:`WorkUnit` values (consecutive traces of one part, about
``batch_entries`` row entries each). Every engine runs the same two steps per unit and
the same merges:

1. :func:`analyse_unit`: read the unit, run the NEX analysis per calibration key (the
   model id for per-model calibration, :data:`GLOBAL_KEY` otherwise) and return a
   :class:`UnitResult`: one :class:`~nex_transforms.CreditAccumulator` per key, per-trace
   statistics (kept rows, cycles, baselines from the per-token statistics) and,
   optionally, per-row phases.
2. :func:`merge_credit` over all units (any order, any tree), :func:`finalize_weights`,
   then :func:`score_unit` per unit with the broadcast weights: the unit's response rows.

Model rows come from :class:`ModelTally` values (a mergeable monoid too) and the
neuron rows from the merged credit. Nothing here imports an engine; the store (zarr) is
read through :class:`~pipelines.store.ActivationStore`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from nex_transforms import (Aggregates, CreditAccumulator, NexError, NexParams, RowCorpus,
                            analyse, good_mass_fraction, log_gap)
from nex_transforms.params import KEY_SPACE, UNIT_BITS
from nex_transforms.segments import ranges, segment_sums

from ..records import TOKEN_STAT_NAMES

#: Row entries per work unit by default (a unit never splits a trace). About 2 M entries
#: is ~0.1 s of work and a few hundred MB of temporaries: large enough that per-unit and
#: per-task costs stay small (measured faster than 1 M on every engine), small enough to
#: balance work over many workers.
DEFAULT_BATCH_ENTRIES = 1 << 21
#: Calibration modes: per-model self-calibration, one global weight vector, given weights.
CALIBRATIONS = ("per-model", "global", "weights")
#: Calibration key of global calibration and of given weights (``model_id`` column of the
#: neurons table in those modes).
GLOBAL_KEY = "*"
#: DeepConf lowest-group window, in tokens (METHOD.md section 8).
DEEPCONF_WINDOW = 2048
#: Per-response baseline columns, in table order.
BASELINES = ("mean_entropy", "mean_self_certainty", "mean_token_logprob",
             "deepconf_mean_confidence", "deepconf_lowest_group_confidence")
_STAT_OF_BASELINE = {"mean_entropy": "entropy", "mean_self_certainty": "self_certainty",
                     "mean_token_logprob": "token_logprob",
                     "deepconf_mean_confidence": "topk_confidence"}


class EngineError(NexError):
    """A scoring run cannot proceed (bad options, an engine failure)."""


class BatchReadError(EngineError):
    """A work unit of the store cannot be read: a missing part, chunk or shard, a corrupt
    chunk, or arrays that disagree with the manifest. The message names the part and the
    traces."""


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


@dataclass(frozen=True)
class SparseWeights:
    """Non-zero neuron weights of one calibration key (keys ascending)."""

    keys: np.ndarray
    values: np.ndarray

    @classmethod
    def from_dense(cls, weights: np.ndarray) -> "SparseWeights":
        keys = np.flatnonzero(weights).astype(np.uint32)
        return cls(keys, weights[keys].astype(np.float32))

    def dense(self) -> np.ndarray:
        """The dense float32 vector over the 2^22 key space (a fresh array)."""
        weights = np.zeros(KEY_SPACE, np.float32)
        weights[self.keys] = self.values
        return weights

    def token(self) -> str:
        """A digest of the keys and values (equal weights give equal tokens)."""
        digest = hashlib.blake2b(digest_size=16)
        digest.update(np.ascontiguousarray(self.keys, np.uint32).tobytes())
        digest.update(np.ascontiguousarray(self.values, np.float32).tobytes())
        return digest.hexdigest()

    @property
    def n_nonzero(self) -> int:
        return int(np.count_nonzero(self.values))

    @property
    def n_positive(self) -> int:
        return int((self.values > 0).sum())

    @property
    def n_negative(self) -> int:
        return int((self.values < 0).sum())


#: Dense weight vectors built in this process, by :meth:`SparseWeights.token` (a few
#: models' worth: 16 MiB each).
_DENSE_CACHE: dict[str, np.ndarray] = {}
_DENSE_CACHE_SIZE = 8


def dense_weights(weights: SparseWeights) -> np.ndarray:
    """The dense vector of ``weights``, built once per process (treat as read-only)."""
    token = weights.token()
    dense = _DENSE_CACHE.pop(token, None)
    if dense is None:
        dense = weights.dense()
    _DENSE_CACHE[token] = dense  # most recent last
    while len(_DENSE_CACHE) > _DENSE_CACHE_SIZE:
        _DENSE_CACHE.pop(next(iter(_DENSE_CACHE)))
    return dense


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


@dataclass(frozen=True)
class UnitResult:
    """What :func:`analyse_unit` returns for one unit.

    Attributes:
        unit: the work unit.
        credit: calibration key -> credit of the unit's traces of that key.
        stats: per-trace columns (unit order): identity, counts, cycles, baselines.
        phases: per kept row columns, or None when phases were not asked for.
        aggregates: the unit's whole-response aggregates, kept for scoring (about a
            sixth of the unit's row data; None: :func:`score_unit` reads them again).
    """

    unit: WorkUnit
    credit: dict
    stats: dict
    phases: dict | None
    aggregates: Aggregates | None = None


# --------------------------------------------------------------------------- planning
@lru_cache(maxsize=4)
def open_store(path: str):
    """The store at ``path``, opened once per process (read-only)."""
    from ..store import ActivationStore

    return ActivationStore.open(path)


def _split_part(entries: np.ndarray, batch_entries: int) -> list[tuple[int, int]]:
    """Consecutive ``[a, b)`` ranges of traces holding about ``batch_entries`` entries."""
    bounds = np.concatenate([[0], np.cumsum(entries)])
    out, start = [], 0
    while start < entries.size:
        stop = int(np.searchsorted(bounds, bounds[start] + batch_entries, side="right")) - 1
        stop = min(max(stop, start + 1), entries.size)
        out.append((start, stop))
        start = stop
    return out


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
        node = store.part_dir(part) / "zarr.json"
        try:
            checksums[part] = json.loads(node.read_text()).get("attributes", {}).get("checksums")
        except (OSError, ValueError):
            checksums[part] = None
    digest.update(json.dumps(summaries, sort_keys=True).encode())
    digest.update(json.dumps(checksums, sort_keys=True).encode())
    return "sha256:" + digest.hexdigest(), summaries


def plan_run(config: ScoreConfig) -> RunPlan:
    """Open the store, read its manifest and split it into work units (manifest order)."""
    from ..store import StoreError

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
        for lo, hi in _split_part(entries[a:b], config.batch_entries):
            meta = {name: columns[name][a + lo:a + hi] for name in UNIT_COLUMNS}
            for name in _STRING_COLUMNS:
                meta[name] = [str(v) for v in meta[name]]
            units.append(WorkUnit(len(units), part, int(index[lo]), int(index[lo]) + hi - lo,
                                  whole_part=(hi - lo == b - a and int(index[0]) == 0),
                                  meta=meta))
    fingerprint, summaries = _fingerprint(store, table)
    fixed = None
    if config.calibration == "weights":
        from ..weights_io import load_weights

        fixed = SparseWeights.from_dense(load_weights(config.weights_file))
    models = tuple(sorted(set(table["model_id"].to_pylist())))
    summary = {"path": str(store.path), "traces": table.num_rows, "parts": len(summaries),
               "models": list(models),
               "entries": int(sum(s.get("n_entries", 0) for s in summaries.values()))}
    return RunPlan(config, tuple(units), table.num_rows, models, fingerprint, summary, fixed)


# --------------------------------------------------------------------------- reading
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
        from ..store import StoreError

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
        from ..store.store import checksum

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


# --------------------------------------------------------------------------- baselines
def _finite_means(values: np.ndarray, ptr: np.ndarray) -> np.ndarray:
    """Mean of the finite values of each segment; NaN where a segment has none."""
    finite = np.isfinite(values)
    sums = segment_sums(np.where(finite, values, 0.0).astype(np.float64), ptr)
    counts = segment_sums(finite.astype(np.float64), ptr)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def lowest_group_means(values: np.ndarray, ptr: np.ndarray,
                       window: int = DEEPCONF_WINDOW) -> np.ndarray:
    """DeepConf lowest group confidence: per segment, the lowest mean over sliding windows
    of ``window`` tokens (the whole segment when shorter); NaN for an empty segment or
    where no window has a finite value. Non-finite values are left out of window means."""
    n_seg = ptr.size - 1
    lengths = np.diff(ptr)
    out = np.full(n_seg, np.nan)
    if values.size == 0:
        return out
    finite = np.isfinite(values)
    csum = np.concatenate([[0.0], np.cumsum(np.where(finite, values, 0.0), dtype=np.float64)])
    ccount = np.concatenate([[0], np.cumsum(finite, dtype=np.int64)])
    width = np.minimum(lengths, window)
    n_windows = np.where(lengths > 0, lengths - width + 1, 0)
    starts = ranges(ptr[:-1], ptr[:-1] + n_windows)
    seg = np.repeat(np.arange(n_seg), n_windows)
    stops = starts + width[seg]
    counts = ccount[stops] - ccount[starts]
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, (csum[stops] - csum[starts]) / np.maximum(counts, 1),
                         np.nan)
    has = n_windows > 0
    if has.any():
        first = np.concatenate([[0], np.cumsum(n_windows)])[:-1][has]
        out[has] = np.fmin.reduceat(means, first)
    return out


def response_baselines(token_stats: dict) -> dict:
    """Per-response baselines (METHOD.md section 8) from per-token statistics."""
    out = {}
    for column, stat in _STAT_OF_BASELINE.items():
        ptr, values = token_stats[stat]
        out[column] = _finite_means(values, ptr)
    ptr, values = token_stats["topk_confidence"]
    out["deepconf_lowest_group_confidence"] = lowest_group_means(values, ptr)
    return out


# --------------------------------------------------------------------------- analysis
def _key_groups(config: ScoreConfig, model_ids: list) -> dict:
    """Calibration key -> trace positions (ascending), keys in first-seen order."""
    groups: dict[str, list[int]] = {}
    for position, model in enumerate(model_ids):
        groups.setdefault(config.key_of(model), []).append(position)
    return {key: np.asarray(idx, np.int64) for key, idx in groups.items()}


def analyse_unit(store, unit: WorkUnit, config: ScoreConfig) -> UnitResult:
    """Read and analyse one unit: credit per calibration key, per-trace statistics and
    (optionally) phases. Pure apart from reading the store."""
    corpus, token_stats = read_unit(store, unit)
    n = unit.n_traces
    counts = {name: np.zeros(n, np.int64) for name in
              ("n_kept_rows", "n_explore_rows", "n_cycles", "n_effective_cycles",
               "n_redundant_cycles")}
    credit = {}
    phase_parts = []
    for key, positions in _key_groups(config, unit.meta["model_id"]).items():
        sub = corpus if positions.size == n else corpus.select(positions)
        analysis = analyse(sub, config.params)
        c = analysis.credit
        counts["n_kept_rows"][positions] = analysis.kept_row_counts
        counts["n_explore_rows"][positions] = c.trace_explore_rows
        counts["n_cycles"][positions] = c.trace_cycles
        counts["n_effective_cycles"][positions] = c.trace_effective
        counts["n_redundant_cycles"][positions] = c.trace_redundant
        if config.calibration != "weights":
            credit[key] = CreditAccumulator.empty().add_analysis(analysis)
        if config.phases:
            rows = analysis.rows
            row_trace = rows.row_trace()
            phase_parts.append((positions[row_trace],
                                rows.row_index - sub.trace_row_ptr[row_trace],
                                analysis.novelty.slopes, analysis.segmentation.z,
                                analysis.segmentation.explore))
    stats = {name: unit.meta[name] for name in ("trace_id", "prompt_id", "model_id")}
    stats["sample_index"] = np.asarray(unit.meta["sample_index"], np.int64)
    stats["n_rows"] = np.asarray(unit.meta["n_rows"], np.int64)
    stats["response_tokens"] = np.asarray(unit.meta["response_tokens"], np.int64)
    stats.update(counts)
    stats.update(response_baselines(token_stats))
    phases = None
    if config.phases:
        phases = _phase_columns(unit, phase_parts)
    return UnitResult(unit, credit, stats, phases, corpus.aggregates)


def _phase_columns(unit: WorkUnit, parts: list) -> dict:
    """Per kept row: trace_id, model_id, row, novelty_slope, z, label; in trace order."""
    if parts:
        trace = np.concatenate([p[0] for p in parts])
        row = np.concatenate([p[1] for p in parts])
        order = np.lexsort((row, trace))
        trace, row = trace[order], row[order]
        slope = np.concatenate([p[2] for p in parts])[order]
        z = np.concatenate([p[3] for p in parts])[order]
        explore = np.concatenate([p[4] for p in parts])[order]
    else:
        trace = row = np.zeros(0, np.int64)
        slope = z = np.zeros(0)
        explore = np.zeros(0, bool)
    ids = np.asarray(unit.meta["trace_id"], dtype=object)
    models = np.asarray(unit.meta["model_id"], dtype=object)
    return {"trace_id": ids[trace].tolist(), "model_id": models[trace].tolist(),
            "row": row.astype(np.int64), "novelty_slope": slope.astype(np.float64),
            "z": z.astype(np.float64),
            "label": np.where(explore, "E", "X").tolist()}


def merge_credit(parts) -> dict:
    """Merge per-key credit dicts (from units or earlier merges) into one dict."""
    grouped: dict[str, list[CreditAccumulator]] = {}
    for part in parts:
        for key, acc in part.items():
            grouped.setdefault(key, []).append(acc)
    return {key: CreditAccumulator.merge_all(accs) for key, accs in sorted(grouped.items())}


def finalize_weights(credit: dict, params: NexParams) -> dict:
    """Calibration key -> :class:`SparseWeights` learned from merged credit."""
    out = {}
    for key, acc in sorted(credit.items()):
        values = acc.sparse_weights(params.eps).astype(np.float32)
        out[key] = SparseWeights(acc.keys.astype(np.uint32), values)
    return out


def plan_weights(plan: RunPlan, credit: dict | None) -> dict:
    """The weights every unit is scored with: learned per key, or the given ones.

    A model whose traces gave no credit at all gets all-zero weights (its GMFs are 0)."""
    if plan.fixed_weights is not None:
        return {GLOBAL_KEY: plan.fixed_weights}
    return weights_for_keys(credit or {}, plan.config.params, calibration_keys(plan))


def calibration_keys(plan: RunPlan) -> list[str]:
    """The calibration keys of a run, sorted (model ids, or :data:`GLOBAL_KEY`)."""
    return sorted({plan.config.key_of(m) for m in plan.models})


def weights_for_keys(credit: dict, params: NexParams, keys: list[str]) -> dict:
    """Weights learned from merged credit, with all-zero weights for any key in ``keys``
    that has no credit."""
    weights = finalize_weights(credit, params)
    for key in set(keys) - set(weights):
        weights[key] = SparseWeights(np.zeros(0, np.uint32), np.zeros(0, np.float32))
    return dict(sorted(weights.items()))


def score_unit(store, result: UnitResult, weights: dict, config: ScoreConfig) -> dict:
    """Response rows of one analysed unit: its statistics plus the GMF of every trace,
    scored with the weights of the trace's calibration key (``{key: SparseWeights}``)."""
    unit = result.unit
    aggregates = result.aggregates
    if aggregates is None:
        aggregates, _ = read_unit(store, unit, aggregates_only=True)
    gmf = np.full(unit.n_traces, np.nan)
    for key, positions in _key_groups(config, unit.meta["model_id"]).items():
        if key not in weights:
            raise EngineError(f"weights: expected a vector for calibration key {key!r}, "
                              f"got keys {sorted(weights)[:5]}")
        sub = aggregates if positions.size == unit.n_traces else aggregates.select(positions)
        gmf[positions] = good_mass_fraction(sub, dense_weights(weights[key]))
    rows = dict(result.stats)
    rows["gmf"] = gmf
    return rows


# --------------------------------------------------------------------------- models
@dataclass(frozen=True)
class ModelTally:
    """Per-model sums over response rows (a commutative monoid, like the credit)."""

    n_responses: int = 0
    n_scored: int = 0
    n_skipped: int = 0
    gmf_sum: float = 0.0
    n_cycles: int = 0
    n_effective_cycles: int = 0
    n_redundant_cycles: int = 0
    baseline_sums: tuple = (0.0,) * len(BASELINES)
    baseline_counts: tuple = (0,) * len(BASELINES)

    def merge(self, other: "ModelTally") -> "ModelTally":
        return ModelTally(
            self.n_responses + other.n_responses, self.n_scored + other.n_scored,
            self.n_skipped + other.n_skipped, self.gmf_sum + other.gmf_sum,
            self.n_cycles + other.n_cycles, self.n_effective_cycles + other.n_effective_cycles,
            self.n_redundant_cycles + other.n_redundant_cycles,
            tuple(a + b for a, b in zip(self.baseline_sums, other.baseline_sums)),
            tuple(a + b for a, b in zip(self.baseline_counts, other.baseline_counts)))

    @property
    def nex(self) -> float:
        return self.gmf_sum / self.n_scored if self.n_scored else float("nan")

    def baseline_means(self) -> dict:
        return {name: (s / c if c else float("nan"))
                for name, s, c in zip(BASELINES, self.baseline_sums, self.baseline_counts)}


def tally_responses(rows: dict, min_rows: int) -> dict:
    """Model id -> :class:`ModelTally` of a batch of response rows."""
    models = np.asarray(rows["model_id"], dtype=object)
    out = {}
    for model in sorted(set(models.tolist())):
        sel = models == model
        gmf = rows["gmf"][sel]
        finite = np.isfinite(gmf)
        sums, counts = [], []
        for name in BASELINES:
            values = rows[name][sel]
            ok = np.isfinite(values)
            sums.append(float(values[ok].sum()))
            counts.append(int(ok.sum()))
        out[model] = ModelTally(
            n_responses=int(sel.sum()), n_scored=int(finite.sum()),
            n_skipped=int((rows["n_kept_rows"][sel] < min_rows).sum()),
            gmf_sum=float(gmf[finite].sum()),
            n_cycles=int(rows["n_cycles"][sel].sum()),
            n_effective_cycles=int(rows["n_effective_cycles"][sel].sum()),
            n_redundant_cycles=int(rows["n_redundant_cycles"][sel].sum()),
            baseline_sums=tuple(sums), baseline_counts=tuple(counts))
    return out


def merge_tallies(parts) -> dict:
    """Merge ``{model: ModelTally}`` dicts."""
    out: dict[str, ModelTally] = {}
    for part in parts:
        for model, tally in part.items():
            out[model] = out[model].merge(tally) if model in out else tally
    return dict(sorted(out.items()))


def model_columns(tallies: dict, weights: dict, config: ScoreConfig) -> dict:
    """Columns of the models table (one row per model id, sorted)."""
    names = sorted(tallies)
    cols: dict[str, list] = {k: [] for k in (
        "model_id", "calibration", "calibration_key", "nex", "log_gap", "n_responses",
        "n_scored", "n_skipped", "n_cycles", "n_effective_cycles", "n_redundant_cycles",
        *BASELINES, "n_nonzero_weights", "n_positive_weights", "n_negative_weights")}
    for model in names:
        tally = tallies[model]
        key = config.key_of(model)
        w = weights[key]
        nex = tally.nex
        cols["model_id"].append(model)
        cols["calibration"].append(config.calibration)
        cols["calibration_key"].append(key)
        cols["nex"].append(nex)
        cols["log_gap"].append(log_gap(nex) if math.isfinite(nex) else float("nan"))
        for name in ("n_responses", "n_scored", "n_skipped", "n_cycles",
                     "n_effective_cycles", "n_redundant_cycles"):
            cols[name].append(getattr(tally, name))
        for name, value in tally.baseline_means().items():
            cols[name].append(value)
        cols["n_nonzero_weights"].append(w.n_nonzero)
        cols["n_positive_weights"].append(w.n_positive)
        cols["n_negative_weights"].append(w.n_negative)
    return cols


def neuron_columns(key: str, weights: SparseWeights, credit: CreditAccumulator | None) -> dict:
    """Columns of the neurons table for one calibration key: every credited key (or,
    for given weights, every non-zero weight, with NaN credit)."""
    if credit is not None:
        keys, eff, red = credit.keys, credit.effective, credit.redundant
        values = weights.values
    else:
        keys, values = weights.keys, weights.values
        eff = red = np.full(keys.size, np.nan)
    keys = np.asarray(keys, np.uint32)
    return {"model_id": [key] * keys.size, "key": keys,
            "layer": (keys >> UNIT_BITS).astype(np.int32),
            "unit": (keys & ((1 << UNIT_BITS) - 1)).astype(np.int32),
            "eff": np.asarray(eff, np.float64), "red": np.asarray(red, np.float64),
            "weight": np.asarray(values, np.float32)}


def concat_columns(parts: list[dict]) -> dict:
    """Concatenate column dicts with the same names (lists and arrays)."""
    if not parts:
        return {}
    out = {}
    for name in parts[0]:
        values = [p[name] for p in parts]
        if isinstance(values[0], np.ndarray):
            out[name] = np.concatenate(values)
        else:
            out[name] = [v for chunk in values for v in chunk]
    return out


def write_results(staging: Path, plan: RunPlan, response_parts: list, credit: dict | None,
                  weights: dict, phase_parts: list | None) -> dict:
    """Write the tables of an in-memory run (local and Dask engines) with pyarrow.

    ``response_parts`` and ``phase_parts`` are column dicts in unit order. Returns
    counts for the run summary.
    """
    from .. import tables

    config = plan.config
    responses = concat_columns(response_parts)
    tables.write_table(tables.table_path(staging, "responses"),
                       tables.to_table("responses", responses))
    tallies = merge_tallies([tally_responses(responses, config.params.min_rows)])
    tables.write_table(tables.table_path(staging, "models"),
                       tables.to_table("models", model_columns(tallies, weights, config)))
    neuron_parts = [neuron_columns(key, weights[key], (credit or {}).get(key))
                    for key in sorted(weights)]
    tables.write_table(tables.table_path(staging, "neurons"),
                       tables.to_table("neurons", concat_columns(neuron_parts)))
    if phase_parts is not None:
        tables.write_table(tables.table_path(staging, "phases"),
                           tables.to_table("phases", concat_columns(phase_parts)))
    return {"responses": int(len(responses.get("trace_id", []))),
            "neurons": int(sum(len(p["key"]) for p in neuron_parts))}


__all__ = [
    "BASELINES", "BatchReadError", "CALIBRATIONS", "calibration_keys", "DEEPCONF_WINDOW", "DEFAULT_BATCH_ENTRIES",
    "EngineError", "GLOBAL_KEY", "ModelTally", "RunPlan", "ScoreConfig", "SparseWeights",
    "UnitResult", "WorkUnit", "analyse_unit", "concat_columns", "dense_weights", "finalize_weights",
    "lowest_group_means", "merge_credit", "merge_tallies", "model_columns", "neuron_columns",
    "open_store", "plan_run", "plan_weights", "read_unit", "response_baselines", "score_unit",
    "tally_responses", "weights_for_keys", "write_results",
]
