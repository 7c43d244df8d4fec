"""The activation store: a Zarr v3 group of parts (sharded sparse CSR arrays) + Parquet manifests.

Writers append whole *parts*. Each part is written into a staging directory, renamed into
``parts/<part>`` and then made visible by writing its manifest ``manifests/<part>.parquet``
atomically. Readers only ever look at parts that have a manifest, so a crash at any point
leaves either a complete part or nothing. Writers never share a shard or a metadata file:
the root metadata is created once, with an exclusive hard link.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import time
import uuid
import warnings
import zlib
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np

from nex_transforms import Aggregates, RowCorpus, concat_corpora
from nex_transforms.errors import expected
from nex_transforms.segments import ranges

from ..atomic import atomic_write
from ..records import TraceRecord
from .encode import EncodedPart, decode_records, encode_part
from .fs import create_exclusive, fault_point, group_node, read_json, tree_bytes
from .schema import (CONSOLIDATED_MANIFEST, MANIFESTS_DIR, PARQUET_OPTIONS, PARTS_DIR,
                     SCHEMA_VERSION, STAGING_DIR, STORE_KIND, TOKEN_STATS, StoreError,
                     check_part_name, check_storage, chunking, compressor, manifest_schema)

PART_META_KEY = b"nex_store_part"
PARTS_META_KEY = b"nex_store_parts"
#: Arrays holding what the row-cache layout holds (sparse rows, aggregates, pointers).
ROW_CACHE_CONTENT = ("trace_row_ptr", "row_entry_ptr", "row_tokens", "keys", "masses",
                     "agg_ptr", "agg_keys", "agg_masses")
#: Seconds after which finalize treats staging leftovers as abandoned by a crashed writer.
STALE_SECONDS = 600.0
#: Separates the part name in staging directory names ("~" is not allowed in part names).
STAGING_SEP = "~"
#: Group holding one child group per model id whose attributes record that model's capture
#: parameters (``models/<model dir>/zarr.json``, created once per model, never modified).
MODELS_DIR = "models"
_KNOWN_ENTRIES = {"zarr.json", PARTS_DIR, MANIFESTS_DIR, STAGING_DIR, CONSOLIDATED_MANIFEST,
                  MODELS_DIR}


def model_dir_name(model_id: str) -> str:
    """The folder name of a model id under ``models/``: the id itself when it is a safe
    name, otherwise a safe slug plus a hash of the id (ids like ``org/name`` stay distinct)."""
    slug = re.sub(r"[^A-Za-z0-9._-]", "_", model_id).lstrip(".")
    if slug == model_id and slug not in ("", "zarr.json"):
        return slug
    return f"{slug or 'model'}-{hashlib.sha256(model_id.encode()).hexdigest()[:12]}"


def _normalise(value: object, what: str) -> object:
    """A JSON round trip (tuples become lists); StoreError if not JSON-serialisable."""
    try:
        return json.loads(json.dumps(value, sort_keys=True))
    except (TypeError, ValueError) as err:
        raise StoreError(expected(what, "JSON-serialisable values", err)) from None


def package_versions() -> dict:
    """Versions of the packages that shape the stored bytes."""
    out = {"python": sys.version.split()[0]}
    for name in ("nex-pipeline", "zarr", "numcodecs", "numpy", "pyarrow"):
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            out[name] = None
    return out


def checksum(array: np.ndarray) -> int:
    """CRC-32 of an array's little-endian bytes (recorded per array, checked by verify)."""
    data = np.ascontiguousarray(array)
    return zlib.crc32(data.astype(data.dtype.newbyteorder("<"), copy=False).tobytes())


def _differing_keys(stored: dict, given: dict) -> list[str]:
    keys = sorted(set(stored) | set(given))
    return [k for k in keys if stored.get(k, "<missing>") != given.get(k, "<missing>")]


class ActivationStore:
    """A chunked, sharded Zarr v3 store of captured traces with a Parquet manifest.

    Use :meth:`create` to create a store or open one for appending, :meth:`open` to read.
    """

    def __init__(self, path: Path, attributes: dict, writable: bool) -> None:
        self.path = path
        self._attributes = attributes
        self._writable = writable

    def __repr__(self) -> str:
        mode = "writable" if self._writable else "read-only"
        return f"ActivationStore({str(self.path)!r}, {mode})"

    # ----------------------------------------------------------------- open / create
    @classmethod
    def create(cls, path, metadata: dict) -> "ActivationStore":
        """Create a store at ``path``, or open an existing one for appending.

        ``metadata`` is a JSON-serialisable dict; ``metadata["capture"]`` holds the
        capture parameters (model, revision, dtype, layers, top-K, row size, ...) and
        ``metadata["storage"]`` optionally the mass dtypes (``float16`` by default). When
        the store exists its schema version must be :data:`SCHEMA_VERSION` and its
        capture parameters must equal the given ones; otherwise :class:`StoreError`.
        Safe when several processes create the same fresh path at once.
        """
        path = Path(path)
        if not isinstance(metadata, dict):
            raise StoreError(expected("store metadata", "a dict", type(metadata).__name__))
        given = _normalise(metadata, "store metadata")
        given["capture"] = given.get("capture") or {}
        if not isinstance(given["capture"], dict):
            raise StoreError(expected("metadata['capture']", "a dict of capture parameters",
                                      type(given["capture"]).__name__))
        explicit_storage = "storage" in metadata
        given["storage"] = check_storage(given.get("storage"))
        if path.exists() and not path.is_dir():
            raise StoreError(expected("store path", "a directory", f"a file {path}"))
        if path.is_dir() and not (path / "zarr.json").exists():
            stray = sorted(e.name for e in path.iterdir()
                           if e.name not in _KNOWN_ENTRIES and not e.name.startswith(".zarr.json."))
            if stray:
                raise StoreError(expected(f"store {path}", "an empty directory or a NEX store",
                                          f"a directory holding {stray[:3]}"))
        attributes = {"schema_version": SCHEMA_VERSION, "store_kind": STORE_KIND,
                      "metadata": given, "packages": package_versions(),
                      "created_at": datetime.now(timezone.utc).isoformat()}
        path.mkdir(parents=True, exist_ok=True)
        create_exclusive(path / "zarr.json", group_node(attributes))
        store = cls._load(path, writable=True)
        store._check_append(given, explicit_storage)
        create_exclusive(path / PARTS_DIR / "zarr.json", group_node({}))
        (path / MANIFESTS_DIR).mkdir(exist_ok=True)
        (path / STAGING_DIR).mkdir(exist_ok=True)
        return store

    @classmethod
    def open(cls, path) -> "ActivationStore":
        """Open an existing store read-only; StoreError if missing, not a store, or another
        schema version."""
        return cls._load(Path(path), writable=False)

    @classmethod
    def _load(cls, path: Path, writable: bool) -> "ActivationStore":
        if not path.is_dir():
            raise StoreError(expected("activation store", "an existing directory", str(path)))
        node = read_json(path / "zarr.json")
        attributes = (node or {}).get("attributes") or {}
        if node is None or attributes.get("store_kind") != STORE_KIND:
            raise StoreError(expected(f"activation store {path}",
                                      f"a zarr.json with store_kind {STORE_KIND!r}",
                                      "none" if node is None else "another zarr hierarchy"))
        version = attributes.get("schema_version")
        if version != SCHEMA_VERSION:
            raise StoreError(expected(f"activation store {path} schema_version",
                                      f"{SCHEMA_VERSION} (this code's schema)",
                                      f"{version} (written by another version)"))
        return cls(path, attributes, writable)

    def _check_append(self, given: dict, explicit_storage: bool) -> None:
        """Capture parameters are recorded per model id: a model already in the store must
        be appended with equal parameters; a new model id records its own (created once,
        exclusively, so concurrent appenders of one new model agree on one record)."""
        stored = self.metadata
        model_id = given["capture"].get("model_id")
        if isinstance(model_id, str) and model_id:
            recorded = self.capture_metadata(model_id)
            record_path = self._model_capture_path(model_id)
            if recorded is None:  # a new model in this store: record its parameters first
                create_exclusive(self.path / MODELS_DIR / "zarr.json", group_node({}))
                create_exclusive(record_path, group_node({"model_id": model_id,
                                                          "capture": given["capture"]}))
                recorded = self.capture_metadata(model_id)
            what = f"store {self.path} capture parameters of model {model_id!r}"
        else:
            recorded, record_path = stored.get("capture") or {}, None
            what = f"store {self.path} capture parameters"
        differing = _differing_keys(recorded, given["capture"])
        if differing:
            detail = "; ".join(f"{k}: stored {recorded.get(k, '<missing>')!r}, "
                               f"given {given['capture'].get(k, '<missing>')!r}"
                               for k in differing[:5])
            raise StoreError(expected(what, "the stored ones",
                                      f"different keys {differing} ({detail})"))
        if record_path is not None and not record_path.exists():
            # the store's first model (recorded in the root attributes): record it per model too
            create_exclusive(self.path / MODELS_DIR / "zarr.json", group_node({}))
            create_exclusive(record_path, group_node({"model_id": model_id, "capture": recorded}))
        if explicit_storage and given["storage"] != stored.get("storage"):
            raise StoreError(expected(f"store {self.path} storage options",
                                      stored.get("storage"), given["storage"]))

    def _model_capture_path(self, model_id: str) -> Path:
        return self.path / MODELS_DIR / model_dir_name(model_id) / "zarr.json"

    def capture_metadata(self, model_id: str | None = None) -> dict | None:
        """The capture parameters recorded for ``model_id`` (None: those given at the store's
        creation); None when the store holds no record of that model."""
        root = self.metadata.get("capture") or {}
        if model_id is None:
            return root
        node = read_json(self._model_capture_path(model_id))
        if node is not None and isinstance((node.get("attributes") or {}).get("capture"), dict):
            return node["attributes"]["capture"]
        return root if root.get("model_id") == model_id else None

    @property
    def captures(self) -> dict:
        """``{model_id: capture parameters}`` for every model recorded in the store."""
        out: dict = {}
        root = self.metadata.get("capture") or {}
        if isinstance(root.get("model_id"), str):
            out[root["model_id"]] = root
        folder = self.path / MODELS_DIR
        for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
            attributes = (read_json(entry / "zarr.json") or {}).get("attributes") or {}
            if isinstance(attributes.get("model_id"), str) and \
                    isinstance(attributes.get("capture"), dict):
                out[attributes["model_id"]] = attributes["capture"]
        return dict(sorted(out.items()))

    # ----------------------------------------------------------------- properties
    @property
    def metadata(self) -> dict:
        """The metadata given at creation (``capture``, ``storage``, ...)."""
        return json.loads(json.dumps(self._attributes["metadata"]))

    @property
    def attributes(self) -> dict:
        """The root attributes: schema_version, metadata, packages, created_at."""
        return json.loads(json.dumps(self._attributes))

    @property
    def storage(self) -> dict:
        return check_storage(self._attributes["metadata"].get("storage"))

    @property
    def writable(self) -> bool:
        return self._writable

    def _manifest_path(self, part: str) -> Path:
        return self.path / MANIFESTS_DIR / f"{part}.parquet"

    def part_dir(self, part: str) -> Path:
        return self.path / PARTS_DIR / part

    def has_part(self, part: str) -> bool:
        """True only for completed parts (their manifest exists)."""
        return self._manifest_path(check_part_name(part)).is_file()

    def parts(self) -> list[str]:
        """Names of the completed parts, sorted (the manifest order)."""
        folder = self.path / MANIFESTS_DIR
        if not folder.is_dir():
            return []
        return sorted(p.name[:-len(".parquet")] for p in folder.iterdir()
                      if p.name.endswith(".parquet") and not p.name.startswith("."))

    # ----------------------------------------------------------------- writing
    def write_part(self, part: str, records: list[TraceRecord],
                   extra_metadata: dict | None = None) -> None:
        """Write ``records`` as one part, atomically; a no-op when the part is complete.

        One writer per part. A crash at any point leaves a complete part or nothing
        visible; a half-written part left by a crash is replaced. ``extra_metadata``
        (JSON-serialisable, e.g. ``{"nan_activations": 3}``) is stored with the part;
        :meth:`info` sums its numbers over the parts.
        """
        check_part_name(part)
        if not self._writable:
            raise StoreError(expected(f"store {self.path}", "opened for writing (create)",
                                      "a read-only store (open)"))
        if self.has_part(part):
            return
        extra = _normalise(extra_metadata or {}, "extra_metadata")
        if not isinstance(extra, dict):
            raise StoreError(expected("extra_metadata", "a dict", type(extra).__name__))
        encoded = encode_part(part, records, self.storage)
        summary = dict(encoded.counts, part=part, extra_metadata=extra)
        staging_root = self.path / STAGING_DIR
        staging_root.mkdir(exist_ok=True)
        for stale in staging_root.iterdir():  # left by a crashed writer of this part
            if stale.name.split(STAGING_SEP)[0] == part:
                shutil.rmtree(stale, ignore_errors=True)
        token = uuid.uuid4().hex
        staging = staging_root / f"{part}{STAGING_SEP}{token}"
        try:
            self._write_group(staging, part, encoded, summary)
            target = self.part_dir(part)
            if target.exists():  # left by a crash after the rename, before the manifest
                trash = staging_root / f"{part}{STAGING_SEP}{token}{STAGING_SEP}trash"
                target.rename(trash)
                shutil.rmtree(trash, ignore_errors=True)
            staging.rename(target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        fault_point("renamed", part)
        self._write_part_manifest(part, encoded, summary)

    def _write_group(self, folder: Path, part: str, encoded: EncodedPart, summary: dict) -> None:
        import zarr

        checksums = {name: checksum(values) for name, values in encoded.arrays.items()}
        attributes = dict(summary, schema_version=SCHEMA_VERSION, storage=self.storage,
                          checksums=checksums)
        group = zarr.open_group(str(folder), mode="w", attributes=attributes)
        names = list(encoded.arrays)
        for index, name in enumerate(names):
            values = encoded.arrays[name]
            chunk, shard = chunking(values.size)
            array = group.create_array(
                name, shape=values.shape, dtype=values.dtype, chunks=(chunk,), shards=(shard,),
                compressors=compressor(), fill_value=0,
                config={"write_empty_chunks": True})
            if values.size:
                array[:] = values
            if index == len(names) // 2:
                fault_point("staging", part)

    def _write_part_manifest(self, part: str, encoded: EncodedPart, summary: dict) -> None:
        import pyarrow as pa

        schema = manifest_schema()
        table = pa.table({name: encoded.columns[name] for name in schema.names}, schema=schema)
        write_manifest(self._manifest_path(part), table, {PART_META_KEY: json.dumps(summary)})

    def finalize(self, stale_after: float = STALE_SECONDS) -> None:
        """Consolidate: one ``manifest.parquet`` and consolidated zarr metadata; idempotent.

        Call when writers are done; rerun after appending. It also removes what crashed
        writers left behind (staging directories, part groups without a manifest, temp
        files) once untouched for ``stale_after`` seconds, so a writer still at work is
        never disturbed.
        """
        import zarr

        if not self._writable:
            raise StoreError(expected(f"store {self.path}", "opened for writing (create)",
                                      "a read-only store (open)"))
        parts = self.parts()
        self._remove_leftovers(parts, stale_after)
        table = self._per_part_manifest(parts)
        summaries = {p: self.part_summary(p) for p in parts}
        write_manifest(self.path / CONSOLIDATED_MANIFEST, table,
                       {PARTS_META_KEY: json.dumps(summaries)})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            zarr.consolidate_metadata(str(self.path))

    def _remove_leftovers(self, parts: list[str], stale_after: float) -> None:
        cutoff = time.time() - stale_after

        def stale(entry: Path) -> bool:
            try:
                return entry.stat().st_mtime <= cutoff
            except FileNotFoundError:
                return False

        staging = list((self.path / STAGING_DIR).glob("*"))
        parts_dir = self.path / PARTS_DIR
        orphans = [f for f in (parts_dir.iterdir() if parts_dir.is_dir() else [])
                   if f.is_dir() and f.name not in parts]
        for entry in staging + orphans:
            if stale(entry):
                shutil.rmtree(entry, ignore_errors=True)
        for folder in (self.path, parts_dir, self.path / MANIFESTS_DIR):
            for tmp in folder.glob(".*.tmp"):  # temp files of crashed atomic writes
                if stale(tmp):
                    tmp.unlink(missing_ok=True)

    # ----------------------------------------------------------------- reading
    def part_summary(self, part: str) -> dict:
        """Counts and extra metadata of a completed part (from its manifest)."""
        import pyarrow.parquet as pq

        if not self.has_part(part):
            raise StoreError(expected(f"store {self.path} part", "a completed part", part))
        path = self._manifest_path(part)
        try:
            meta = pq.read_schema(path).metadata or {}
            return json.loads(meta.get(PART_META_KEY, b"{}"))
        except (OSError, ValueError) as err:
            raise StoreError(expected(f"part {part} manifest {path}",
                                      "a readable Parquet manifest", err)) from None

    def part_summaries(self) -> dict:
        """``{part: summary}`` of the completed parts (from the consolidated manifest when
        it is current, else from each part's manifest)."""
        import pyarrow.parquet as pq

        parts = self.parts()
        path = self.path / CONSOLIDATED_MANIFEST
        if path.is_file():
            try:
                meta = pq.read_schema(path).metadata or {}
                covered = json.loads(meta.get(PARTS_META_KEY, b"{}"))
            except (OSError, ValueError):
                covered = {}
            if sorted(covered) == parts:
                return covered
        return {p: self.part_summary(p) for p in parts}

    def _per_part_manifest(self, parts: list[str]):
        import pyarrow as pa

        tables = [_read_manifest(self._manifest_path(p)) for p in parts]
        if not tables:
            return manifest_schema().empty_table()
        return pa.concat_tables(tables)

    def consolidated_manifest(self):
        """The manifest written by :meth:`finalize`, or None (absent or stale)."""
        import pyarrow.parquet as pq

        path = self.path / CONSOLIDATED_MANIFEST
        if not path.is_file():
            return None
        meta = pq.read_schema(path).metadata or {}
        covered = json.loads(meta.get(PARTS_META_KEY, b"{}"))
        if sorted(covered) != self.parts():
            return None
        return _read_manifest(path)

    def manifest(self, parts: list[str] | None = None):
        """The manifest (a pyarrow Table): one row per trace of the completed parts,
        parts in name order, traces in write order."""
        if parts is None:
            table = self.consolidated_manifest()
            return table if table is not None else self._per_part_manifest(self.parts())
        return self._per_part_manifest([self._check_known(p) for p in parts])

    def _check_known(self, part: str) -> str:
        if not self.has_part(part):
            raise StoreError(expected(f"store {self.path} part", f"one of {self.parts()[:10]}",
                                      repr(part)))
        return part

    def open_part(self, part: str):
        """The zarr group of a completed part (read-only)."""
        import zarr

        self._check_known(part)
        try:
            return zarr.open_group(str(self.part_dir(part)), mode="r", use_consolidated=False)
        except FileNotFoundError:
            raise StoreError(expected(f"store {self.path} part {part}",
                                      f"its arrays under {PARTS_DIR}/{part}", "none")) from None

    def read_arrays(self, part: str, names: list[str] | None = None) -> dict:
        """Whole arrays of a part (all stored arrays by default)."""
        group = self.open_part(part)
        names = names if names is not None else [n for n in group.array_keys()]
        out = {}
        for name in names:
            try:
                out[name] = group[name][...]
            except KeyError:
                raise StoreError(expected(f"store {self.path} part {part}",
                                          f"an array {name!r}", "none")) from None
        return out

    def _selection(self, parts, trace_ids):
        table = self.manifest(parts)
        if trace_ids is not None:
            import pyarrow as pa
            import pyarrow.compute as pc

            wanted = pa.array([str(t) for t in trace_ids], pa.string())
            mask = pc.is_in(table["trace_id"], value_set=wanted)
            found = set(table.filter(mask)["trace_id"].to_pylist())
            missing = [t for t in wanted.to_pylist() if t not in found]
            if missing:
                raise StoreError(expected(f"store {self.path} trace ids", "ids in the manifest",
                                          f"unknown {missing[:5]}"))
            table = table.filter(mask)
        return table

    def _groups(self, table) -> list[tuple[str, np.ndarray]]:
        """(part, trace indices within the part) in manifest order."""
        part_col = np.asarray(table["part"].to_pylist(), dtype=object)
        index = table["trace_index"].to_numpy()
        out, start = [], 0
        for stop in list(np.flatnonzero(part_col[1:] != part_col[:-1]) + 1) + [len(part_col)]:
            if stop > start:
                out.append((part_col[start], index[start:stop]))
            start = stop
        return out

    def read_corpus(self, parts: list[str] | None = None,
                    trace_ids: list[str] | None = None) -> RowCorpus:
        """The sparse rows (with their stored aggregates) of the selected traces, in
        manifest order. ``parts`` and ``trace_ids`` narrow the selection."""
        table = self._selection(parts, trace_ids)
        corpora = [self._part_corpus(part, traces) for part, traces in self._groups(table)]
        if not corpora:
            empty = np.zeros(0)
            return RowCorpus(np.zeros(1, np.int64), np.zeros(1, np.int64), empty.astype(np.int64),
                             empty.astype(np.uint32), empty.astype(np.float16),
                             Aggregates(np.zeros(1, np.int64), empty.astype(np.uint32),
                                        empty.astype(np.float16)))
        return corpora[0] if len(corpora) == 1 else concat_corpora(corpora)

    def _part_corpus(self, part: str, traces: np.ndarray) -> RowCorpus:
        group = self.open_part(part)
        trace_row = group["trace_row_ptr"][...]
        agg_ptr = group["agg_ptr"][...]
        t0, t1 = int(traces.min()), int(traces.max()) + 1
        r0, r1 = int(trace_row[t0]), int(trace_row[t1])
        entry_ptr = group["row_entry_ptr"][r0:r1 + 1]
        e0, e1 = int(entry_ptr[0]), int(entry_ptr[-1])
        a0, a1 = int(agg_ptr[t0]), int(agg_ptr[t1])
        span = RowCorpus(
            trace_row_ptr=trace_row[t0:t1 + 1] - r0, row_entry_ptr=entry_ptr - e0,
            row_tokens=group["row_tokens"][r0:r1].astype(np.int64),
            keys=group["keys"][e0:e1], masses=group["masses"][e0:e1],
            aggregates=Aggregates(agg_ptr[t0:t1 + 1] - a0, group["agg_keys"][a0:a1],
                                  group["agg_masses"][a0:a1]))
        local = traces - t0
        if local.size == span.n_traces and np.array_equal(local, np.arange(span.n_traces)):
            return span
        return span.select(local)

    def read_token_stats(self, parts: list[str] | None = None,
                         trace_ids: list[str] | None = None) -> dict:
        """Per-token arrays of the selected traces, in manifest order.

        Returns ``{name: (ptr, values)}`` for ``"token_ids"`` (int32) and every name of
        ``TOKEN_STAT_NAMES`` (float32, NaN where a trace has no such statistic); trace
        ``t`` owns ``values[ptr[t]:ptr[t+1]]``.
        """
        table = self._selection(parts, trace_ids)
        names = ["token_ids", *TOKEN_STATS]
        chunks: dict[str, list[np.ndarray]] = {n: [] for n in names}
        lengths: list[np.ndarray] = []
        for part, traces in self._groups(table):
            group = self.open_part(part)
            token_ptr = group["token_ptr"][...]
            stored = set(group.array_keys())
            starts, stops = token_ptr[traces], token_ptr[traces + 1]
            lengths.append(stops - starts)
            k0, k1 = int(starts.min()), int(stops.max())
            idx = ranges(starts, stops) - k0
            for name in names:
                if name in stored:
                    chunks[name].append(group[name][k0:k1][idx])
                else:
                    chunks[name].append(np.full(idx.size, np.nan, np.float32))
        ptr = np.concatenate([[0], np.cumsum(np.concatenate(lengths))]).astype(np.int64) \
            if lengths else np.zeros(1, np.int64)
        dtypes = {"token_ids": np.int32}
        return {n: (ptr, np.concatenate(chunks[n]).astype(dtypes.get(n, np.float32))
                    if chunks[n] else np.zeros(0, dtypes.get(n, np.float32)))
                for n in names}

    def read_records(self, part: str) -> list[TraceRecord]:
        """The records of a completed part, as written (masses in the storage dtype)."""
        table = self.manifest([part])
        arrays = self.read_arrays(part)
        return decode_records(arrays, table.to_pydict())

    # ----------------------------------------------------------------- summary
    def info(self) -> dict:
        """Counts, sizes and per-model trace counts of the completed parts."""
        table = self.manifest()
        summaries = self.part_summaries()
        total = {k: int(sum(s.get(k, 0) for s in summaries.values()))
                 for k in ("n_rows", "n_entries", "n_aggregate_entries", "n_tokens",
                           "saturated_masses", "saturated_aggregate_masses")}
        models: dict[str, int] = {}
        for model in table["model_id"].to_pylist():
            models[model] = models.get(model, 0) + 1
        on_disk = tree_bytes(self.path)
        entries = total["n_entries"]
        array_bytes = self._array_bytes()
        sparse = sum(v for k, v in array_bytes.items() if k in ROW_CACHE_CONTENT)
        return {
            "schema_version": SCHEMA_VERSION,
            "path": str(self.path),
            "traces": table.num_rows,
            "rows": total["n_rows"],
            "entries": entries,
            "aggregate_entries": total["n_aggregate_entries"],
            "tokens": total["n_tokens"],
            "parts": len(summaries),
            "part_names": sorted(summaries),
            "models": dict(sorted(models.items())),
            "bytes_on_disk": on_disk,
            "bytes_per_entry": on_disk / entries if entries else None,
            "sparse_bytes_per_entry": sparse / entries if entries else None,
            "array_bytes": array_bytes,
            "saturated_masses": total["saturated_masses"],
            "saturated_aggregate_masses": total["saturated_aggregate_masses"],
            "storage": self.storage,
            "finalized": self.consolidated_manifest() is not None,
            "extra_metadata": aggregate_extras([s.get("extra_metadata", {})
                                                for s in summaries.values()]),
            "capture": self.metadata.get("capture", {}),
            "captures": self.captures,
        }

    def _array_bytes(self) -> dict:
        """Bytes on disk per array name, summed over parts (metadata files included)."""
        out: dict[str, int] = {}
        for part in self.parts():
            folder = self.part_dir(part)
            for array in (folder.iterdir() if folder.is_dir() else []):
                if array.is_dir():
                    out[array.name] = out.get(array.name, 0) + tree_bytes(array)
        return dict(sorted(out.items()))


def write_manifest(path: Path, table, metadata: dict) -> None:
    """Write a manifest atomically (temp file renamed into place), with footer metadata."""
    import pyarrow.parquet as pq

    def write(tmp: Path) -> None:
        os.chmod(tmp, 0o644)
        with pq.ParquetWriter(tmp, table.schema, **PARQUET_OPTIONS) as writer:
            writer.write_table(table)
            writer.add_key_value_metadata(metadata)

    atomic_write(path, write)


def _read_manifest(path: Path):
    """A manifest file as a table of :func:`manifest_schema` (no file metadata)."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
        return table.replace_schema_metadata(None).cast(manifest_schema())
    except (OSError, ValueError) as err:
        raise StoreError(expected(f"manifest {path}", "a readable Parquet manifest",
                                  err)) from None


def aggregate_extras(extras: list[dict]) -> dict:
    """Sum numeric extra metadata over parts; other values become sorted distinct lists."""
    numbers: dict[str, float] = {}
    others: dict[str, list] = {}
    for extra in extras:
        for key, value in extra.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                numbers[key] = numbers.get(key, 0) + value
            else:
                seen = others.setdefault(key, [])
                if value not in seen:
                    seen.append(value)
    out: dict = dict(numbers)
    for key, values in others.items():
        out.setdefault(key, sorted(values, key=lambda v: json.dumps(v, sort_keys=True)))
    return dict(sorted(out.items()))


__all__ = ["ActivationStore", "aggregate_extras", "checksum", "write_manifest"]
