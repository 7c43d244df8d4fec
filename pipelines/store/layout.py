"""Physical layout of a part: which zarr arrays hold the logical arrays of a part.

Readers and writers work with the *logical* arrays of a part (``trace_row_ptr``,
``row_entry_ptr``, ``row_tokens``, ``keys``, ``masses``, ``agg_ptr``, ``agg_keys``,
``agg_masses``, ``token_ptr``, ``token_ids`` and the per-token statistics, see
``docs/STORE.md``). How they are stored depends on the part's schema version:

* **2**: one zarr array per logical array, same name.
* **3**: fewer array nodes (each node costs a ``zarr.json``):

  - ``pointers`` (int64): the sections ``trace_row_ptr``, ``agg_ptr``, ``token_ptr``
    (``traces + 1`` each), ``row_entry_ptr`` (``rows + 1``), ``row_tokens`` (``rows``);
  - ``keys``, ``masses``, ``token_ids`` as in version 2;
  - ``token_stats``: the statistics named in the part's ``token_stats`` attribute, one
    section of ``tokens`` values each, in that order;
  - aggregates ``derived`` (part attribute ``aggregates``): when every trace's aggregate
    keys are the sorted distinct keys of its rows (what a capture writes), the keys are
    not stored and the masses are stored as ``agg_residuals``: the bits of each stored
    aggregate mass minus the bits of :func:`derive_aggregates`' value (the storage-dtype
    rounding of the per-key sum of the stored row masses), modulo 2^16 (2^32 for
    float32). Adding them back gives the stored masses bit for bit; mostly 0 or +-1,
    they compress to almost nothing. Otherwise (``stored``) ``agg_keys`` and
    ``agg_masses`` are stored as in version 2.
"""

from __future__ import annotations

import numpy as np

from nex_transforms.corpus import trace_key_sums

from .encode import to_storage
from .schema import PART_ARRAYS, TOKEN_STATS, StoreError, array_dtype

#: Sections of the ``pointers`` array (schema 3), in order: name -> what its length counts.
POINTER_SECTIONS = (("trace_row_ptr", "traces+1"), ("agg_ptr", "traces+1"),
                    ("token_ptr", "traces+1"), ("row_entry_ptr", "rows+1"),
                    ("row_tokens", "rows"))
AGGREGATES_DERIVED = "derived"
AGGREGATES_STORED = "stored"
#: Unsigned integer of the width of each float storage dtype (residual bits).
_BITS = {np.dtype(np.float16): np.dtype(np.uint16), np.dtype(np.float32): np.dtype(np.uint32)}


def _lengths(counts: dict) -> dict:
    return {"traces+1": int(counts["n_traces"]) + 1, "rows+1": int(counts["n_rows"]) + 1,
            "rows": int(counts["n_rows"]), "entries": int(counts["n_entries"]),
            "aggregate_entries": int(counts["n_aggregate_entries"]),
            "tokens": int(counts["n_tokens"])}


def sections(attrs: dict) -> dict:
    """``{logical name: (physical name, offset, length)}`` of a part from its group
    attributes (counts, ``token_stats``, ``schema_version``, ``aggregates``). Logical
    aggregate arrays of a ``derived`` part are absent (see :func:`derive_aggregates`);
    their residuals appear as ``agg_residuals``."""
    try:
        lengths = _lengths(attrs)
        names = [str(n) for n in attrs.get("token_stats") or []]
        version = int(attrs.get("schema_version", 0))
    except (KeyError, TypeError, ValueError) as err:
        raise StoreError(f"part attributes: expected counts and token_stats, got {err!r}") \
            from None
    if version == 2:
        out = {name: (name, 0, lengths[spec[1]]) for name, spec in PART_ARRAYS.items()}
        out.update({name: (name, 0, lengths["tokens"]) for name in names})
        return out
    out, offset = {}, 0
    for name, counts in POINTER_SECTIONS:
        out[name] = ("pointers", offset, lengths[counts])
        offset += lengths[counts]
    out["keys"] = ("keys", 0, lengths["entries"])
    out["masses"] = ("masses", 0, lengths["entries"])
    out["token_ids"] = ("token_ids", 0, lengths["tokens"])
    if aggregates_mode(attrs) == AGGREGATES_DERIVED:
        out["agg_residuals"] = ("agg_residuals", 0, lengths["aggregate_entries"])
    else:
        out["agg_keys"] = ("agg_keys", 0, lengths["aggregate_entries"])
        out["agg_masses"] = ("agg_masses", 0, lengths["aggregate_entries"])
    for index, name in enumerate(names):
        out[name] = ("token_stats", index * lengths["tokens"], lengths["tokens"])
    return out


def aggregates_mode(attrs: dict) -> str:
    """``derived`` or ``stored`` (always ``stored`` in schema 2)."""
    if int(attrs.get("schema_version", 0)) == 2:
        return AGGREGATES_STORED
    mode = attrs.get("aggregates", AGGREGATES_STORED)
    if mode not in (AGGREGATES_DERIVED, AGGREGATES_STORED):
        raise StoreError(f"part attribute aggregates: expected {AGGREGATES_DERIVED!r} or "
                         f"{AGGREGATES_STORED!r}, got {mode!r}")
    return mode


def physical_lengths(attrs: dict) -> dict:
    """``{physical name: length}`` of a part's arrays."""
    out: dict[str, int] = {}
    for physical, offset, length in sections(attrs).values():
        out[physical] = max(out.get(physical, 0), offset + length)
    return out


def physical_dtype(name: str, storage: dict, version: int) -> np.dtype:
    """The dtype of a physical array of a part of schema ``version``."""
    if version == 2:
        return array_dtype(name, storage)
    if name == "pointers":
        return np.dtype(np.int64)
    if name == "token_stats":
        return array_dtype(TOKEN_STATS[0], storage)
    if name == "agg_residuals":
        return _BITS[array_dtype("agg_masses", storage)]
    return array_dtype(name, storage)


def derive_aggregates(trace_row_ptr: np.ndarray, row_entry_ptr: np.ndarray, keys: np.ndarray,
                      masses: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(agg_ptr, agg_keys, masses)``: per trace, its distinct row keys in ascending order
    and the per-key sum of the given (stored) row masses, summed in float64 in entry order
    and cast to ``dtype`` like any stored mass (beyond-range values clipped, NaN as the
    one canonical NaN). Deterministic: the same entries give the same bits."""
    trace_row_ptr = np.asarray(trace_row_ptr, np.int64)
    row_entry_ptr = np.asarray(row_entry_ptr, np.int64)
    for name, ptr, n in (("row pointer", trace_row_ptr, row_entry_ptr.size - 1),
                         ("entry pointer", row_entry_ptr, np.asarray(keys).size)):
        if ptr.size == 0 or ptr[0] != 0 or ptr[-1] != n or (np.diff(ptr) < 0).any():
            raise StoreError(f"{name}: expected non-decreasing values from 0 to {n} to derive "
                             "the aggregates, got others")
    agg_ptr, agg_keys, sums = trace_key_sums(trace_row_ptr, row_entry_ptr, keys, masses)
    derived, _ = to_storage(sums, np.dtype(dtype))
    derived[np.isnan(derived)] = np.nan
    return agg_ptr, agg_keys, derived


def residuals(given: np.ndarray, derived: np.ndarray) -> np.ndarray:
    """Bits of ``given`` minus bits of ``derived`` (same float dtype), modulo 2^bits."""
    bits = _BITS[derived.dtype]
    return given.astype(derived.dtype).view(bits) - derived.view(bits)


def apply_residuals(derived: np.ndarray, stored: np.ndarray) -> np.ndarray:
    """The aggregate masses: ``derived`` with the residual bits added back."""
    bits = _BITS[derived.dtype]
    if stored.dtype != bits or stored.shape != derived.shape:
        raise StoreError(f"aggregate residuals: expected {derived.size} {bits} values, got "
                         f"{stored.size} {stored.dtype}")
    return (derived.view(bits) + stored).view(derived.dtype)


def pack(arrays: dict, attrs: dict) -> dict:
    """The physical arrays of a part's logical ``arrays`` (see :func:`sections`);
    ``attrs`` are the part's attributes (counts, token_stats, schema_version,
    aggregates)."""
    where = sections(attrs)
    lengths = physical_lengths(attrs)
    out: dict[str, np.ndarray] = {}
    for logical, (physical, offset, length) in where.items():
        values = arrays[logical]
        if values.size != length:
            raise StoreError(f"array {logical}: expected {length} values, got {values.size}")
        if physical not in out:
            if physical == logical and offset == 0 and length == lengths[physical]:
                out[physical] = values
                continue
            out[physical] = np.zeros(lengths[physical], values.dtype)
        out[physical][offset:offset + length] = values
    return out


def aggregate_residuals(arrays: dict, storage: dict) -> np.ndarray | None:
    """Residuals of the logical ``arrays`` when their aggregates can be derived from the
    rows (keys and pointer equal the derived ones), else None."""
    dtype = array_dtype("agg_masses", storage)
    agg_ptr, agg_keys, derived = derive_aggregates(
        arrays["trace_row_ptr"], arrays["row_entry_ptr"], arrays["keys"], arrays["masses"],
        dtype)
    if not (np.array_equal(agg_ptr, arrays["agg_ptr"])
            and np.array_equal(agg_keys, arrays["agg_keys"])):
        return None
    return residuals(arrays["agg_masses"], derived)


def unpack(physical: dict, attrs: dict, storage: dict, derive: bool = True) -> dict:
    """The logical arrays of a whole part from its physical arrays: aggregates derived and
    checked when the part stores residuals (unless ``derive`` is False: then
    ``agg_residuals`` is returned instead). StoreError on a mismatch."""
    out = {}
    for logical, (name, offset, length) in sections(attrs).items():
        if name in physical:
            out[logical] = physical[name][offset:offset + length]
    if "row_tokens" in out:  # an int64 section of ``pointers`` in schema 3
        out["row_tokens"] = out["row_tokens"].astype(np.int32)
    return derive_part_aggregates(out, storage) if derive else out


def derive_part_aggregates(out: dict, storage: dict) -> dict:
    """Logical arrays with ``agg_residuals`` replaced by ``agg_keys`` and ``agg_masses``
    (derived from the rows, checked against the stored ``agg_ptr``); others unchanged."""
    out = dict(out)
    if "agg_residuals" in out:
        agg_ptr, agg_keys, derived = derive_aggregates(
            out["trace_row_ptr"], out["row_entry_ptr"], out["keys"], out["masses"],
            array_dtype("agg_masses", storage))
        if not np.array_equal(agg_ptr, out["agg_ptr"]):
            bad = int(np.argmax(agg_ptr != out["agg_ptr"])) if agg_ptr.shape == \
                out["agg_ptr"].shape else 0
            raise StoreError(f"aggregate pointer at trace {max(bad - 1, 0)}: expected the "
                             "distinct keys of the rows, got a different count")
        out["agg_keys"] = agg_keys
        out["agg_masses"] = apply_residuals(derived, out.pop("agg_residuals"))
    return out


__all__ = ["AGGREGATES_DERIVED", "AGGREGATES_STORED", "POINTER_SECTIONS", "aggregate_residuals",
           "aggregates_mode", "apply_residuals", "derive_aggregates", "derive_part_aggregates",
           "pack", "physical_dtype",
           "physical_lengths", "residuals", "sections", "unpack"]
