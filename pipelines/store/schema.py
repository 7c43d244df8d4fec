"""The activation store's on-disk schema (version :data:`SCHEMA_VERSION`): names, dtypes, codecs.

Layout of a store directory (see ``docs/STORE.md``)::

    zarr.json                     root group; attributes: schema_version, metadata, packages
    parts/zarr.json               group of the parts
    parts/<part>/zarr.json        one part's group; attributes: counts, checksums
    parts/<part>/<array>/...      chunked 1-D arrays (``layout.py``: which holds what)
    manifests/<part>.parquet      the part's manifest, written last: its completion marker
    manifest.parquet              consolidated manifest (``finalize``, stores of 2+ parts)
    models/<model>/zarr.json      capture parameters of one model id
    .staging/                     parts being written (never read)
"""

from __future__ import annotations

import re

import numpy as np

from nex_transforms.errors import NexError, expected

from ..records import TOKEN_STAT_NAMES

#: Version of the layout below; bumped on any incompatible change. 2: every chunk carries
#: a crc32c checksum in its codec chain, and per-token statistics are stored as
#: ``token_stat_dtype`` (float16 by default; float32 in 1). 3: fewer array nodes per part
#: (pointers and token statistics packed into one array each, no sharding codec for
#: arrays of one chunk) and aggregates derived from the rows plus residual bits (see
#: ``layout.py``). New stores are written with this version.
SCHEMA_VERSION = 3
#: Versions this code reads (and appends to, in their own layout). Version 1 is refused.
READABLE_SCHEMAS = (2, 3)

#: Marker attribute naming the kind of zarr hierarchy.
STORE_KIND = "nex-activation-store"

PART_NAME = re.compile(r"^[A-Za-z0-9._-]+$")

PARTS_DIR = "parts"
MANIFESTS_DIR = "manifests"
STAGING_DIR = ".staging"
CONSOLIDATED_MANIFEST = "manifest.parquet"
#: Group holding one child group per model id whose attributes record that model's capture
#: parameters (``models/<model dir>/zarr.json``, created once per model, never modified).
MODELS_DIR = "models"

#: Storage dtypes allowed for row and aggregate masses and for the per-token statistics
#: (chosen at creation).
MASS_DTYPES = ("float16", "float32")
DEFAULT_STORAGE = {"mass_dtype": "float16", "aggregate_dtype": "float16",
                   "token_stat_dtype": "float16"}

#: Elements per chunk, and chunks per shard, of every 1-D array.
CHUNK_ELEMENTS = 1 << 16
CHUNKS_PER_SHARD = 16

#: Logical arrays of a part: name -> (dtype or storage key, what its length counts); the
#: zarr arrays of schema 2 (schema 3 packs them, see ``layout.py``).
PART_ARRAYS = {
    "trace_row_ptr": ("int64", "traces+1"),   # trace t owns rows [p[t], p[t+1])
    "row_entry_ptr": ("int64", "rows+1"),     # row i owns entries [p[i], p[i+1])
    "row_tokens": ("int32", "rows"),          # generated tokens covered by row i
    "keys": ("uint32", "entries"),            # (layer << 16) | unit
    "masses": ("mass_dtype", "entries"),
    "agg_ptr": ("int64", "traces+1"),         # trace t owns aggregate entries [p[t], p[t+1])
    "agg_keys": ("uint32", "aggregate_entries"),
    "agg_masses": ("aggregate_dtype", "aggregate_entries"),
    "token_ptr": ("int64", "traces+1"),       # trace t owns tokens [p[t], p[t+1])
    "token_ids": ("int32", "tokens"),
}
#: Per-token statistics arrays (``token_stat_dtype``, ``tokens`` long); present when any
#: trace has them. In float16 they are stored by running-sum quantisation (see
#: ``encode.quantize_token_stat``): the values of a trace with ``|x| <`` TOKEN_STAT_LIMIT
#: are rounded so that every running sum stays within TOKEN_STAT_STEP / 2 of the exact one
#: (each value within TOKEN_STAT_STEP, and exact in float16); larger values are rounded to
#: the nearest float16 (within ``2^-11 |x|``). The sum of any run of tokens of a trace is
#: then within ``TOKEN_STAT_STEP + 2^-11 * sum(|x| of its large values)`` of the float32
#: sum: a mean over ``n`` tokens within that divided by ``n`` (what the baselines use,
#: METHOD.md section 8), and the coarse grid compresses far better than plain float16.
TOKEN_STAT_STEP = 2.0 ** -6
TOKEN_STAT_LIMIT = 1024 * TOKEN_STAT_STEP
TOKEN_STATS = TOKEN_STAT_NAMES

#: Manifest columns, in order (see :func:`manifest_schema`).
MANIFEST_COLUMNS = (
    "trace_id", "prompt_id", "sample_index", "model_id", "model_revision", "part",
    "trace_index", "row_start", "row_stop", "entry_start", "entry_stop", "agg_start",
    "agg_stop", "token_start", "token_stop", "prompt_tokens", "response_tokens", "n_rows",
    "n_entries", "finish_reason", "text", "reference_answer", "token_stats", "status",
)
STATUS_COMPLETE = "complete"

#: Parquet options of manifests (footer statistics and the embedded arrow schema cost
#: kilobytes per part; readers cast to :func:`manifest_schema`).
#: Dictionary pages cost ~40 bytes per column even for a few rows; zstd already packs the
#: repeated strings (model id, part, status).
PARQUET_OPTIONS = {"compression": "zstd", "compression_level": 9, "write_statistics": False,
                   "store_schema": False, "use_dictionary": False}


class StoreError(NexError):
    """An activation store is missing, inconsistent, or used against its schema."""


def check_part_name(part: object) -> str:
    """Validate a part name (``[A-Za-z0-9._-]+``, not starting with a dot)."""
    if not isinstance(part, str) or not PART_NAME.fullmatch(part) or part.startswith(".") \
            or part == "zarr.json":
        raise StoreError(expected("part name", "letters, digits, '.', '_' or '-' "
                                  "(not starting with '.', not 'zarr.json')", repr(part)))
    return part


def check_storage(storage: object) -> dict:
    """Validate storage options (mass dtypes); returns them with defaults filled in."""
    if storage is None:
        return dict(DEFAULT_STORAGE)
    if not isinstance(storage, dict):
        raise StoreError(expected("metadata['storage']", "a dict", type(storage).__name__))
    unknown = sorted(set(storage) - set(DEFAULT_STORAGE))
    if unknown:
        raise StoreError(expected("metadata['storage']", f"keys {sorted(DEFAULT_STORAGE)}",
                                  unknown))
    out = dict(DEFAULT_STORAGE, **storage)
    for key in DEFAULT_STORAGE:
        if out[key] not in MASS_DTYPES:
            raise StoreError(expected(f"metadata['storage'][{key!r}]", f"one of {MASS_DTYPES}",
                                      out[key]))
    return out


def array_dtype(name: str, storage: dict) -> np.dtype:
    """The storage dtype of a part array (token stats included)."""
    if name in TOKEN_STATS:
        return np.dtype(storage.get("token_stat_dtype", DEFAULT_STORAGE["token_stat_dtype"]))
    spec = PART_ARRAYS[name][0]
    return np.dtype(storage.get(spec, spec))


def chunking(n: int, section: int | None = None) -> tuple[int, int]:
    """(chunk, shard) lengths of a 1-D array of ``n`` elements (shard a multiple of chunk);
    ``section``: chunks no longer than that (schema 3's ``token_stats``: one chunk per
    statistic, each compressed on its own, about 7% smaller than mixed)."""
    chunk = max(1, min(CHUNK_ELEMENTS, n, section or n))
    n_chunks = -(-max(n, 1) // chunk)
    return chunk, chunk * min(CHUNKS_PER_SHARD, n_chunks)


def compact_metadata():
    """A context in which zarr writes its metadata (``zarr.json``) without indentation:
    about 40% smaller, which counts on small stores (6 array nodes per part)."""
    import zarr

    return zarr.config.set({"json_indent": None})


def compressor():
    """Blosc (zstd level 9, byte shuffle): beats raw keys/float16 masses and compresses
    pointers; level 9 takes about 10% less than level 5 on a real capture (keys 0.78
    instead of 0.87 bytes per entry) and chunks are small, so writing stays cheap."""
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="zstd", clevel=9, shuffle="shuffle")


def chunk_codecs() -> list:
    """Bytes-to-bytes codecs of every (inner) chunk: the compressor, then a crc32c checksum.

    The checksum is verified by zarr's codec pipeline as each chunk is decoded, so any read,
    of any slice, fails on a corrupted chunk instead of returning wrong values.
    """
    from zarr.codecs import Crc32cCodec

    return [compressor(), Crc32cCodec()]


def manifest_schema():
    """The pyarrow schema of a manifest (per part and consolidated)."""
    import pyarrow as pa

    int64 = pa.int64()
    types = {
        "trace_id": pa.string(), "prompt_id": pa.string(), "sample_index": int64,
        "model_id": pa.string(), "model_revision": pa.string(), "part": pa.string(),
        "finish_reason": pa.string(), "text": pa.string(), "reference_answer": pa.string(),
        "token_stats": pa.list_(pa.string()), "status": pa.string(),
    }
    return pa.schema([pa.field(name, types.get(name, int64),
                               nullable=name == "reference_answer")
                      for name in MANIFEST_COLUMNS])
