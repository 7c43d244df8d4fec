"""``verify``: check every invariant of a store and name the first violation (part and trace)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from nex_transforms import KEY_SPACE, RESERVED_LAYER, UNIT_BITS
from nex_transforms.segments import segment_ids

from .encode import checksum
from .layout import derive_part_aggregates, physical_dtype, physical_lengths, sections, unpack
from .manifests import concat_manifests
from .schema import (PART_ARRAYS, READABLE_SCHEMAS, STATUS_COMPLETE, TOKEN_STATS, StoreError,
                     check_storage)
from .store import ActivationStore


@dataclass
class VerifyReport:
    """Problems found (empty when the store is sound) and what was checked."""

    problems: list[str] = field(default_factory=list)
    parts: int = 0
    traces: int = 0
    rows: int = 0
    entries: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


class _Stop(Exception):
    """Stop checking a part: later checks would only repeat an earlier problem."""


def verify_store(store: ActivationStore, max_problems: int = 20) -> VerifyReport:
    """Check the store's invariants; collect up to ``max_problems`` problems.

    Checked: schema versions; every manifest part has its group and arrays (lengths
    match the recorded counts, no shard file missing, checksums match); pointers start
    at 0, never decrease and end at the length they index; keys below 2^22 or layer 255;
    token counts; manifest offsets match the arrays; aggregates equal the per-key sums
    of the rows within float16 tolerance; no trace id twice; the consolidated manifest
    (if current) equals the per-part manifests.
    """
    report = VerifyReport()
    parts = store.parts()
    report.parts = len(parts)
    seen: dict[str, str] = {}
    for part in parts:
        table = store.manifest([part]).to_pydict()
        for trace_id in table["trace_id"]:
            if trace_id in seen:
                report.problems.append(f"part {part}, trace {trace_id}: duplicate trace id: "
                                       f"expected unique ids, got it also in part {seen[trace_id]}")
            seen.setdefault(trace_id, part)
        try:
            _check_part(store, part, table, report)
        except _Stop:
            pass
        if len(report.problems) >= max_problems:
            return report
    _check_consolidated(store, report)
    return report


def _fail(report: VerifyReport, part: str, trace: object, message: str, stop: bool = True):
    where = f"part {part}" + (f", trace {trace}" if trace is not None else "")
    report.problems.append(f"{where}: {message}")
    if stop:
        raise _Stop


def _check_part(store: ActivationStore, part: str, table: dict, report: VerifyReport) -> None:
    summary = store.part_summary(part)
    folder, rel = store.part_dir(part), store.part_rel(part)
    node = store.loc.read_json(f"{rel}/zarr.json")
    if node is None:
        _fail(report, part, None, f"part arrays: expected a group at {folder}, got none")
    attrs = node.get("attributes", {})
    if attrs.get("schema_version") != store.schema_version or \
            attrs.get("schema_version") not in READABLE_SCHEMAS:
        _fail(report, part, None, f"schema_version: expected {store.schema_version} (the "
                                  f"store's), got {attrs.get('schema_version')}")
    physical = _load_arrays(store, part, summary, attrs, report)
    arrays = unpack(physical, attrs, check_storage(attrs.get("storage") or {}), derive=False)
    ids = table["trace_id"]
    report.traces += len(ids)
    report.rows += int(summary["n_rows"])
    report.entries += int(summary["n_entries"])
    _check_pointers(part, ids, arrays, report)
    _check_keys(part, ids, arrays, report)
    _check_tokens(part, ids, arrays, table, report)
    _check_manifest(part, ids, arrays, table, report)
    if "agg_residuals" in arrays:  # schema 3: aggregates derived from the (checked) rows
        try:
            arrays = derive_part_aggregates(arrays, check_storage(attrs.get("storage") or {}))
        except StoreError as err:
            _fail(report, part, None, str(err))
    _check_aggregates(part, ids, arrays, report)
    _check_checksums(part, physical, attrs, report)


def _lengths(summary: dict) -> dict:
    return {"traces+1": summary["n_traces"] + 1, "rows+1": summary["n_rows"] + 1,
            "rows": summary["n_rows"], "entries": summary["n_entries"],
            "aggregate_entries": summary["n_aggregate_entries"], "tokens": summary["n_tokens"]}


def _load_arrays(store, part, summary, attrs, report) -> dict:
    """The part's physical arrays (see :mod:`pipelines.store.layout`), each checked for
    presence, shape, dtype, shard files and chunk checksums."""
    for key in ("n_traces", "n_rows", "n_entries", "n_aggregate_entries", "n_tokens"):
        if attrs.get(key) != summary.get(key):
            _fail(report, part, None, f"part attribute {key}: expected {summary.get(key)} "
                                      f"(manifest), got {attrs.get(key)}")
    if list(attrs.get("token_stats") or []) != list(summary.get("token_stats") or []):
        _fail(report, part, None, f"part attribute token_stats: expected "
                                  f"{summary.get('token_stats')} (manifest), got "
                                  f"{attrs.get('token_stats')}")
    storage = check_storage(attrs.get("storage") or {})
    version = int(attrs["schema_version"])
    lengths = _lengths(summary)
    try:
        where = sections(attrs)
        wanted = physical_lengths(attrs)
    except StoreError as err:
        _fail(report, part, None, str(err))
    # pointers first: a bad chunk of a later array is then named with its trace
    order = sorted(wanted, key=lambda n: (n not in ("pointers", "trace_row_ptr",
                                                    "row_entry_ptr", "agg_ptr", "token_ptr"), n))
    group = store.open_part(part)
    present = set(group.array_keys())
    arrays: dict = {}
    for name in order:
        length = wanted[name]
        if name not in present:
            _fail(report, part, None, f"array {name}: expected it in {store.part_dir(part)}, "
                                      "got none")
        array = group[name]
        if array.shape != (length,):
            _fail(report, part, None, f"array {name}: expected shape ({length},), "
                                      f"got {array.shape}")
        dtype = physical_dtype(name, storage, version)
        if array.dtype != dtype:
            _fail(report, part, None, f"array {name}: expected dtype {dtype}, got {array.dtype}")
        shard = array.shards[0] if array.shards else array.chunks[0]
        for index in range(-(-length // shard)):
            path = f"{store.part_dir(part)}/{name}/c/{index}"
            size = store.loc.size(f"{store.part_rel(part)}/{name}/c/{index}")
            if size is None:
                _fail(report, part, None, f"array {name} shard {index}: expected shard file "
                                          f"{path}, got none")
            if size == 0:
                _fail(report, part, None, f"array {name} shard {index}: expected a shard "
                                          f"with its chunks and index, got an empty file {path}")
        try:
            arrays[name] = array[...]
        except Exception as err:  # crc32c mismatches and undecodable chunks
            a, b = _first_bad_chunk(array)
            logical = {n: arrays[p][o:o + k] for n, (p, o, k) in where.items() if p in arrays}
            trace = _physical_owner(logical, lengths, where, name, a)
            ids = store.manifest([part])["trace_id"].to_pylist()
            _fail(report, part, ids[trace] if trace is not None and trace < len(ids) else None,
                  f"array {name} elements [{a}, {b}): expected chunks that decode and pass "
                                      f"their crc32c checksums, got {type(err).__name__}: "
                                      f"{' '.join(str(err).split())[:300]}")
    return arrays


def _physical_owner(logical: dict, lengths: dict, where: dict, name: str,
                    element: int) -> int | None:
    """The trace owning element ``element`` of the physical array ``name``, when the
    pointers read so far tell."""
    for section, (physical, offset, length) in where.items():
        if physical == name and offset <= element < offset + max(length, 1):
            counts = PART_ARRAYS.get(section, (None, "tokens"))[1]
            if section == "agg_residuals":
                counts = "aggregate_entries"
            return _owner(logical, lengths, counts, element - offset)
    return None


def _first_bad_chunk(array) -> tuple[int, int]:
    """Elements of the first chunk of ``array`` that cannot be read (whole array if none)."""
    chunk, length = array.chunks[0], array.shape[0]
    for a in range(0, length, chunk):
        try:
            array[a:min(a + chunk, length)]
        except Exception:
            return a, min(a + chunk, length)
    return 0, length


def _owner(arrays: dict, lengths: dict, counts: str, element: int) -> int | None:
    """The trace owning position ``element`` of an array of ``counts`` elements, when the
    pointers read so far tell."""
    ptr_of = {"rows": "trace_row_ptr", "rows+1": "trace_row_ptr",
              "aggregate_entries": "agg_ptr", "tokens": "token_ptr"}
    if counts == "traces+1":
        return min(element, lengths["traces+1"] - 2)
    if counts == "entries":
        if "row_entry_ptr" not in arrays or "trace_row_ptr" not in arrays:
            return None
        row = int(np.searchsorted(arrays["row_entry_ptr"], element, side="right")) - 1
        return _owner(arrays, lengths, "rows", row)
    ptr = arrays.get(ptr_of.get(counts, ""))
    if ptr is None:
        return None
    return max(int(np.searchsorted(ptr, element, side="right")) - 1, 0)


def _check_checksums(part, arrays, attrs, report) -> None:
    """Last, so that structural checks name a corrupted pointer or key precisely first."""
    for name, values in arrays.items():
        recorded = attrs.get("checksums", {}).get(name)
        if recorded is None or checksum(values) != recorded:
            _fail(report, part, None, f"array {name}: expected CRC-32 {recorded} (recorded "
                                      f"at write), got {checksum(values)} (corrupted)")


def _trace_of(ptr: np.ndarray, index: int) -> int:
    return max(0, int(np.searchsorted(ptr, index, side="right")) - 1)


def _check_pointer(part, ids, name, ptr, n_items, owner, report) -> None:
    """``owner(i)`` gives the trace index of position ``i`` of ``ptr``."""
    if ptr[0] != 0:
        _fail(report, part, ids[0] if ids else None, f"{name}[0]: expected 0, got {int(ptr[0])}")
    steps = np.diff(ptr)
    if steps.size and steps.min() < 0:
        bad = int(np.argmax(steps < 0))
        trace = owner(bad)
        _fail(report, part, ids[trace] if trace < len(ids) else None,
              f"{name}: expected non-decreasing values, got {int(ptr[bad])} then "
              f"{int(ptr[bad + 1])} at index {bad}")
    if ptr[-1] != n_items:
        _fail(report, part, ids[-1] if ids else None,
              f"{name}[-1]: expected {n_items} (the length it indexes), got {int(ptr[-1])}")


def _check_pointers(part, ids, arrays, report) -> None:
    trace_row = arrays["trace_row_ptr"]
    by_trace = lambda i: i  # noqa: E731 - position i of a per-trace pointer is trace i
    _check_pointer(part, ids, "trace_row_ptr", trace_row, arrays["row_tokens"].size,
                   by_trace, report)
    _check_pointer(part, ids, "row_entry_ptr", arrays["row_entry_ptr"], arrays["keys"].size,
                   lambda i: _trace_of(trace_row, i), report)
    n_aggregates = arrays["agg_keys" if "agg_keys" in arrays else "agg_residuals"].size
    _check_pointer(part, ids, "agg_ptr", arrays["agg_ptr"], n_aggregates, by_trace, report)
    _check_pointer(part, ids, "token_ptr", arrays["token_ptr"], arrays["token_ids"].size,
                   by_trace, report)


def _bad_keys(keys: np.ndarray) -> np.ndarray:
    return ((keys >> UNIT_BITS) != RESERVED_LAYER) & (keys >= KEY_SPACE)


def _check_keys(part, ids, arrays, report) -> None:
    entry_trace = segment_ids(arrays["trace_row_ptr"])[segment_ids(arrays["row_entry_ptr"])]
    for name, owner in (("keys", entry_trace), ("agg_keys", segment_ids(arrays["agg_ptr"]))):
        if name not in arrays:  # derived aggregate keys are row keys
            continue
        bad = _bad_keys(arrays[name])
        if bad.any():
            first = int(np.argmax(bad))
            key = int(arrays[name][first])
            _fail(report, part, ids[owner[first]],
                  f"{name}: expected keys below 2^22 or layer {RESERVED_LAYER}, "
                  f"got key {key} (layer {key >> UNIT_BITS}) at entry {first}")


def _check_tokens(part, ids, arrays, table, report) -> None:
    row_tokens = arrays["row_tokens"].astype(np.int64)
    if row_tokens.size and row_tokens.min() < 0:
        row = int(np.argmin(row_tokens))
        _fail(report, part, ids[_trace_of(arrays["trace_row_ptr"], row)],
              f"row_tokens: expected counts >= 0, got {int(row_tokens[row])} at row {row}")
    per_trace = np.bincount(segment_ids(arrays["trace_row_ptr"]), weights=row_tokens,
                            minlength=len(ids)).astype(np.int64)
    tokens = np.diff(arrays["token_ptr"])
    stated = np.asarray(table["response_tokens"], dtype=np.int64)
    for what, got in (("tokens of its rows", per_trace), ("token_ptr range", tokens)):
        bad = got != stated
        if bad.any():
            t = int(np.argmax(bad))
            _fail(report, part, ids[t], f"{what}: expected {int(stated[t])} response tokens "
                                        f"(manifest), got {int(got[t])}")


def _check_manifest(part, ids, arrays, table, report) -> None:
    trace_row, entry_ptr = arrays["trace_row_ptr"], arrays["row_entry_ptr"]
    expected_columns = {
        "trace_index": np.arange(len(ids)),
        "row_start": trace_row[:-1], "row_stop": trace_row[1:],
        "entry_start": entry_ptr[trace_row[:-1]], "entry_stop": entry_ptr[trace_row[1:]],
        "agg_start": arrays["agg_ptr"][:-1], "agg_stop": arrays["agg_ptr"][1:],
        "token_start": arrays["token_ptr"][:-1], "token_stop": arrays["token_ptr"][1:],
        "n_rows": np.diff(trace_row),
        "n_entries": entry_ptr[trace_row[1:]] - entry_ptr[trace_row[:-1]],
    }
    for column, wanted in expected_columns.items():
        got = np.asarray(table[column], dtype=np.int64)
        bad = got != wanted
        if bad.any():
            t = int(np.argmax(bad))
            _fail(report, part, ids[t], f"manifest {column}: expected {int(wanted[t])} "
                                        f"(from the arrays), got {int(got[t])}")
    for column, wanted in (("part", part), ("status", STATUS_COMPLETE)):
        for t, value in enumerate(table[column]):
            if value != wanted:
                _fail(report, part, ids[t], f"manifest {column}: expected {wanted!r}, "
                                            f"got {value!r}")
    for t, names in enumerate(table["token_stats"]):
        unknown = [n for n in names if n not in TOKEN_STATS or n not in arrays]
        if unknown:
            _fail(report, part, ids[t], f"manifest token_stats: expected stored statistics, "
                                        f"got {unknown}")


def _check_aggregates(part, ids, arrays, report) -> None:
    """Aggregate = per-key sum of the rows, within float16 tolerance."""
    entry_trace = segment_ids(arrays["trace_row_ptr"])[segment_ids(arrays["row_entry_ptr"])]
    row_comb = (entry_trace.astype(np.int64) << 32) | arrays["keys"].astype(np.int64)
    uniq, inverse = np.unique(row_comb, return_inverse=True)
    masses = arrays["masses"].astype(np.float64)
    sums = np.bincount(inverse, weights=masses, minlength=uniq.size)
    abs_sums = np.bincount(inverse, weights=np.abs(masses), minlength=uniq.size)
    counts = np.bincount(inverse, minlength=uniq.size)
    agg_trace = segment_ids(arrays["agg_ptr"])
    agg_comb = (agg_trace.astype(np.int64) << 32) | arrays["agg_keys"].astype(np.int64)
    agg_uniq, first, agg_counts = np.unique(agg_comb, return_index=True, return_counts=True)
    if (agg_counts > 1).any():
        dup = int(agg_uniq[np.argmax(agg_counts > 1)])
        _fail(report, part, ids[dup >> 32], f"agg_keys: expected each key once per trace, "
                                            f"got key {dup & 0xFFFFFFFF} twice")
    agg = arrays["agg_masses"].astype(np.float64)
    keys = np.union1d(uniq, agg_comb)
    row_sum = _lookup(uniq, sums, keys)
    row_abs = _lookup(uniq, abs_sums, keys)
    n_terms = _lookup(uniq, counts.astype(np.float64), keys)
    agg_val = _lookup(agg_uniq, agg[first], keys)
    limit = float(np.finfo(np.float16).max)
    tol = 2.0 ** -10 * (row_abs + np.abs(agg_val)) + 6e-8 * (n_terms + 1)
    diff = np.abs(row_sum - agg_val)
    saturated = (np.abs(agg_val) >= limit * (1 - 2 ** -10)) & \
        (np.abs(row_sum) >= np.abs(agg_val) * (1 - 2 ** -10))
    bad = np.isfinite(row_sum) & np.isfinite(agg_val) & (diff > tol) & ~saturated
    if bad.any():
        k = int(np.argmax(bad))
        comb = int(keys[k])
        _fail(report, part, ids[comb >> 32],
              f"aggregate of key {comb & 0xFFFFFFFF}: expected the sum of its row masses "
              f"{row_sum[k]:.6g} (within float16 tolerance {tol[k]:.3g}), got {agg_val[k]:.6g}")


def _lookup(sorted_keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    """``values`` at the positions of ``query`` in ``sorted_keys``; 0 where absent."""
    if sorted_keys.size == 0:
        return np.zeros(query.size)
    pos = np.minimum(np.searchsorted(sorted_keys, query), sorted_keys.size - 1)
    return np.where(sorted_keys[pos] == query, values[pos], 0.0)


def _check_consolidated(store: ActivationStore, report: VerifyReport) -> None:
    table = store.consolidated_manifest()
    if table is None:
        return
    per_part = concat_manifests(store.loc, store.parts())
    if not table.equals(per_part):
        report.problems.append("manifest.parquet: expected the concatenated per-part manifests "
                               "(rerun finalize), got different rows")
