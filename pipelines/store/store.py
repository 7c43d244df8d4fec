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
from datetime import datetime, timezone
from importlib import metadata as importlib_metadata
from pathlib import Path

import numpy as np

from nex_transforms import RowCorpus
from nex_transforms.errors import expected

from ..crashsafe import (LEASE_FILE, Lease, atomic_write, create_exclusive, fault_point,
                         lease_live)
from ..records import TraceRecord
from .encode import EncodedPart, checksum, decode_records, encode_part
from .fs import Location, group_node
from .layout import AGGREGATES_DERIVED, AGGREGATES_STORED, aggregate_residuals, pack
from .reader import read_part_arrays, read_selection, read_token_ids
from .schema import (CONSOLIDATED_MANIFEST, MANIFESTS_DIR, PARQUET_OPTIONS, PARTS_DIR,
                     READABLE_SCHEMAS, SCHEMA_VERSION, STAGING_DIR, STORE_KIND, StoreError,
                     check_part_name, check_storage, chunk_codecs, chunking, compact_metadata,
                     manifest_schema)

PART_META_KEY = b"nex_store_part"
PARTS_META_KEY = b"nex_store_parts"
#: Arrays holding what the row-cache layout holds (sparse rows, aggregates, pointers;
#: schema 3's ``pointers`` also holds the per-trace token pointer, a few bytes a trace).
ROW_CACHE_CONTENT = ("trace_row_ptr", "row_entry_ptr", "row_tokens", "keys", "masses",
                     "agg_ptr", "agg_keys", "agg_masses", "pointers", "agg_residuals")
#: Seconds after which finalize treats staging leftovers as abandoned by a crashed writer.
STALE_SECONDS = 600.0
#: Seconds without a heartbeat after which a writer's staging lease has expired.
LEASE_SECONDS = 60.0
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


def _differing_keys(stored: dict, given: dict) -> list[str]:
    keys = sorted(set(stored) | set(given))
    return [k for k in keys if stored.get(k, "<missing>") != given.get(k, "<missing>")]


class ActivationStore:
    """A chunked, sharded Zarr v3 store of captured traces with a Parquet manifest.

    Use :meth:`create` to create a store or open one for appending, :meth:`open` to read.
    """

    def __init__(self, path, attributes: dict, writable: bool,
                 location: Location | None = None) -> None:
        self.loc = location if location is not None else Location(path)
        #: a Path for a local store, the URL (str) for an object store
        self.path = self.loc.local if self.loc.is_local else self.loc.url
        self._summaries: dict[str, dict] = {}  # object storage: part summaries read once
        self._attributes = attributes
        self._writable = writable

    def __repr__(self) -> str:
        mode = "writable" if self._writable else "read-only"
        return f"ActivationStore({str(self.path)!r}, {mode})"

    # ----------------------------------------------------------------- open / create
    @classmethod
    def create(cls, path, metadata: dict,
               storage_options: dict | None = None) -> "ActivationStore":
        """Create a store at ``path``, or open an existing one for appending.

        ``metadata`` is a JSON-serialisable dict; ``metadata["capture"]`` holds the
        capture parameters (model, revision, dtype, layers, top-K, row size, ...) and
        ``metadata["storage"]`` optionally the mass dtypes (``float16`` by default). When
        the store exists its schema version must be one of :data:`READABLE_SCHEMAS` (parts
        are appended in its own layout) and its
        capture parameters must equal the given ones; otherwise :class:`StoreError`.
        Safe when several processes create the same fresh path at once. ``path`` may be
        an fsspec URL (``s3://bucket/store``) with ``storage_options`` (credentials,
        endpoint; by default from the environment).
        """
        loc = Location(path, storage_options)
        if not isinstance(metadata, dict):
            raise StoreError(expected("store metadata", "a dict", type(metadata).__name__))
        given = _normalise(metadata, "store metadata")
        given["capture"] = given.get("capture") or {}
        if not isinstance(given["capture"], dict):
            raise StoreError(expected("metadata['capture']", "a dict of capture parameters",
                                      type(given["capture"]).__name__))
        explicit_storage = "storage" in metadata
        given["storage"] = check_storage(given.get("storage"))
        attributes = {"schema_version": SCHEMA_VERSION, "store_kind": STORE_KIND,
                      "metadata": given, "packages": package_versions(),
                      "created_at": datetime.now(timezone.utc).isoformat()}
        if not loc.is_local:
            loc.put_exclusive("zarr.json", group_node(attributes))
            store = cls._load(loc, writable=True)
            store._check_append(given, explicit_storage)
            loc.put_exclusive(f"{PARTS_DIR}/zarr.json", group_node({}))
            return store
        path = loc.local
        if path.exists() and not path.is_dir():
            raise StoreError(expected("store path", "a directory", f"a file {path}"))
        if path.is_dir() and not (path / "zarr.json").exists():
            stray = sorted(e.name for e in path.iterdir()
                           if e.name not in _KNOWN_ENTRIES and not e.name.startswith(".zarr.json."))
            if stray:
                raise StoreError(expected(f"store {path}", "an empty directory or a NEX store",
                                          f"a directory holding {stray[:3]}"))
        path.mkdir(parents=True, exist_ok=True)
        create_exclusive(path / "zarr.json", group_node(attributes))
        store = cls._load(loc, writable=True)
        store._check_append(given, explicit_storage)
        create_exclusive(path / PARTS_DIR / "zarr.json", group_node({}))
        (path / MANIFESTS_DIR).mkdir(exist_ok=True)
        (path / STAGING_DIR).mkdir(exist_ok=True)
        return store

    @classmethod
    def open(cls, path, storage_options: dict | None = None) -> "ActivationStore":
        """Open an existing store read-only; StoreError if missing, not a store, or another
        schema version. ``path`` may be an fsspec URL (see :meth:`create`)."""
        return cls._load(Location(path, storage_options), writable=False)

    @classmethod
    def _load(cls, loc: Location, writable: bool) -> "ActivationStore":
        path = loc.url
        if loc.is_local and not loc.local.is_dir():
            raise StoreError(expected("activation store", "an existing directory", str(path)))
        try:
            node = loc.read_json("zarr.json")
        except OSError as err:
            raise StoreError(expected(f"activation store {path}", "a readable zarr.json",
                                      " ".join(str(err).split())[:300])) from None
        attributes = (node or {}).get("attributes") or {}
        if node is None or attributes.get("store_kind") != STORE_KIND:
            raise StoreError(expected(f"activation store {path}",
                                      f"a zarr.json with store_kind {STORE_KIND!r}",
                                      "none" if node is None else "another zarr hierarchy"))
        version = attributes.get("schema_version")
        if version not in READABLE_SCHEMAS:
            raise StoreError(expected(f"activation store {path} schema_version",
                                      " or ".join(map(str, READABLE_SCHEMAS))
                                      + f" (this code's schemas, {SCHEMA_VERSION} for new stores)",
                                      f"{version} (written by another version)"))
        return cls(path, attributes, writable, loc)

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
                self.loc.create(f"{MODELS_DIR}/zarr.json", group_node({}))
                self.loc.create(record_path, group_node({"model_id": model_id,
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
        if record_path is not None and not self.loc.exists(record_path):
            # the store's first model (recorded in the root attributes): record it per model too
            self.loc.create(f"{MODELS_DIR}/zarr.json", group_node({}))
            self.loc.create(record_path, group_node({"model_id": model_id, "capture": recorded}))
        if explicit_storage and given["storage"] != stored.get("storage"):
            raise StoreError(expected(f"store {self.path} storage options",
                                      stored.get("storage"), given["storage"]))

    def _model_capture_path(self, model_id: str) -> str:
        """The per-model record, relative to the store root."""
        return f"{MODELS_DIR}/{model_dir_name(model_id)}/zarr.json"

    def capture_metadata(self, model_id: str | None = None) -> dict | None:
        """The capture parameters recorded for ``model_id`` (None: those given at the store's
        creation); None when the store holds no record of that model."""
        root = self.metadata.get("capture") or {}
        if model_id is None:
            return root
        node = self.loc.read_json(self._model_capture_path(model_id))
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
        for name in self.loc.listdir(MODELS_DIR):
            if name == "zarr.json":
                continue
            attributes = (self.loc.read_json(f"{MODELS_DIR}/{name}/zarr.json") or {}) \
                .get("attributes") or {}
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
    def schema_version(self) -> int:
        """The store's schema version (its parts are written in that layout)."""
        return int(self._attributes["schema_version"])

    @property
    def writable(self) -> bool:
        return self._writable

    def _manifest_path(self, part: str):
        return self.path / MANIFESTS_DIR / f"{part}.parquet" if self.loc.is_local else \
            self._manifest_rel(part)

    @staticmethod
    def _manifest_rel(part: str) -> str:
        return f"{MANIFESTS_DIR}/{part}.parquet"

    def part_rel(self, part: str) -> str:
        """The part's group, relative to the store root: ``parts/<part>`` on local disk;
        on object storage the writer's unique group named by the part's manifest."""
        if self.loc.is_local:
            return f"{PARTS_DIR}/{part}"
        if part in self._summaries:
            return f"{PARTS_DIR}/{self._summaries[part].get('group') or part}"
        group = self.part_summary(part).get("group") if self.has_part(part) else None
        return f"{PARTS_DIR}/{group or part}"

    def part_dir(self, part: str):
        """Local path (or URL) of the part's group."""
        if self.loc.is_local:
            return self.path / PARTS_DIR / part
        return self.loc.url_of(self.part_rel(part))

    def has_part(self, part: str) -> bool:
        """True only for completed parts (their manifest exists)."""
        check_part_name(part)
        if self.loc.is_local:
            return self._manifest_path(part).is_file()
        return self.loc.isfile(self._manifest_rel(part))

    def parts(self) -> list[str]:
        """Names of the completed parts, sorted (the manifest order)."""
        return sorted(n[:-len(".parquet")] for n in self.loc.listdir(MANIFESTS_DIR)
                      if n.endswith(".parquet") and not n.startswith("."))

    # ----------------------------------------------------------------- writing
    def write_part(self, part: str, records: list[TraceRecord],
                   extra_metadata: dict | None = None,
                   lease_seconds: float = LEASE_SECONDS) -> None:
        """Write ``records`` as one part, atomically; a no-op when the part is complete.

        A crash at any point leaves a complete part or nothing visible; a half-written
        part left by a crash is replaced. The staging folder carries a lease (see
        :class:`~pipelines.crashsafe.Lease`): a second writer of the same part never
        removes a live writer's staging, only one whose lease expired
        (``lease_seconds`` without a heartbeat, or its process dead on this host). ``extra_metadata``
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
        if not self.loc.is_local:
            self._write_part_object_store(part, encoded, summary)
            return
        staging_root = self.path / STAGING_DIR
        staging_root.mkdir(exist_ok=True)
        for other in staging_root.iterdir():  # left by a crashed writer of this part
            if other.name.split(STAGING_SEP)[0] == part and not lease_live(other, lease_seconds):
                shutil.rmtree(other, ignore_errors=True)
        token = uuid.uuid4().hex
        staging = staging_root / f"{part}{STAGING_SEP}{token}"
        lease = Lease(staging, lease_seconds)
        try:
            try:
                self._write_group(f"{STAGING_DIR}/{staging.name}", part, encoded, summary)
                fault_point("staged", part)
                if not self._claim(staging, part, token, lease_seconds):
                    return  # another writer completed the part meanwhile
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            lease.moved(self.part_dir(part))
            fault_point("renamed", part)
            self._write_part_manifest(part, encoded, summary)
        finally:
            lease.release()

    def remove_part(self, part: str) -> None:
        """Remove a completed part: its manifest first (the part stops being visible at
        once), then its arrays. Used to recapture a part (``nex capture --overwrite``)."""
        check_part_name(part)
        if not self._writable:
            raise StoreError(expected(f"store {self.path}", "opened for writing (create)",
                                      "a read-only store (open)"))
        if not self.loc.is_local:
            rel = self.part_rel(part)
            self._summaries.pop(part, None)
            self.loc.remove_file(self._manifest_rel(part))
            self.loc.remove_file(CONSOLIDATED_MANIFEST)
            self.loc.remove_tree(rel)
            return
        self._manifest_path(part).unlink(missing_ok=True)
        trash = self.path / STAGING_DIR / f"{part}{STAGING_SEP}{uuid.uuid4().hex}{STAGING_SEP}trash"
        try:
            self.part_dir(part).rename(trash)
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def _claim(self, staging: Path, part: str, token: str, lease_seconds: float) -> bool:
        """Rename ``staging`` to ``parts/<part>``; False (staging removed) when another
        writer completed the part first.

        The rename is exclusive (it fails onto a non-empty folder). A group already there
        without a manifest is another writer's, between its rename and its manifest: it
        is waited for while its lease is live, replaced once the lease expired.
        """
        target = self.part_dir(part)
        while True:
            try:
                os.rename(staging, target)
                return True
            except OSError:
                if not target.exists():
                    raise
            if self.has_part(part):
                shutil.rmtree(staging, ignore_errors=True)
                return False
            if lease_live(target, lease_seconds):
                time.sleep(0.05)
                continue
            trash = self.path / STAGING_DIR / f"{part}{STAGING_SEP}{token}{STAGING_SEP}trash"
            try:
                target.rename(trash)
            except OSError:
                continue  # another writer moved it first
            shutil.rmtree(trash, ignore_errors=True)

    def _write_part_object_store(self, part: str, encoded: EncodedPart, summary: dict) -> None:
        """Object storage has no rename: each writer writes its own group
        ``parts/<part>~<token>``, then the part's manifest (naming that group) with one
        put, the completion marker. A writer that finds the part complete first removes
        its group; groups no manifest names are removed by :meth:`finalize`."""
        group = f"{part}{STAGING_SEP}{uuid.uuid4().hex}"
        summary = dict(summary, group=group)
        rel = f"{PARTS_DIR}/{group}"
        try:
            self._write_group(rel, part, encoded, summary)
            fault_point("staged", part)
            if self.has_part(part):
                self.loc.remove_tree(rel)
                return
        except BaseException:
            self.loc.remove_tree(rel)
            raise
        fault_point("renamed", part)
        self._write_part_manifest(part, encoded, summary)

    def _write_group(self, rel: str, part: str, encoded: EncodedPart, summary: dict) -> None:
        import zarr

        version = self.schema_version
        arrays = encoded.arrays
        if version == 2:
            attributes = dict(summary, schema_version=version)
        else:  # the manifest's part summary keeps extra_metadata; no second copy here
            attributes = {k: v for k, v in summary.items() if k != "extra_metadata"}
            attributes["schema_version"] = version
            res = aggregate_residuals(arrays, self.storage)
            attributes["aggregates"] = AGGREGATES_STORED if res is None else AGGREGATES_DERIVED
            if res is not None:
                arrays = dict(arrays, agg_residuals=res)
        arrays = pack(arrays, attributes)
        checksums = {name: checksum(values) for name, values in arrays.items()}
        attributes = dict(attributes, storage=self.storage, checksums=checksums)
        # A local staging folder already holds the writer's lease: write the node directly.
        if self.loc.is_local:
            (self.path / rel / "zarr.json").write_bytes(group_node(attributes))
        else:
            self.loc.put(f"{rel}/zarr.json", group_node(attributes))
        group = zarr.open_group(store=self.loc.zarr_store(rel, read_only=False), mode="r+",
                                use_consolidated=False)
        names = list(arrays)
        for index, name in enumerate(names):
            values = arrays[name]
            chunk, shard = chunking(values.size, encoded.counts["n_tokens"]
                                    if name == "token_stats" else None)
            # schema 3: no sharding codec (and its metadata) for arrays of one chunk
            shards = (shard,) if version == 2 or shard > chunk else None
            with compact_metadata():  # zarr.json without indentation
                array = group.create_array(
                    name, shape=values.shape, dtype=values.dtype, chunks=(chunk,),
                    shards=shards, compressors=chunk_codecs(), fill_value=0,
                    config={"write_empty_chunks": True})
            if values.size:
                array[:] = values
            if index == len(names) // 2:
                fault_point("staging", part)

    def _write_part_manifest(self, part: str, encoded: EncodedPart, summary: dict) -> None:
        import pyarrow as pa

        schema = manifest_schema()
        table = pa.table({name: encoded.columns[name] for name in schema.names}, schema=schema)
        meta = {PART_META_KEY: json.dumps(summary)}
        if self.loc.is_local:
            write_manifest(self._manifest_path(part), table, meta)
        else:
            self.loc.put(self._manifest_rel(part), manifest_bytes(table, meta))

    def finalize(self, stale_after: float = STALE_SECONDS) -> None:
        """Consolidate: one ``manifest.parquet``; idempotent. A store of one part gets
        none (it would repeat that part's manifest byte for byte; a stale one is
        removed): readers read the part's manifest. (No consolidated zarr metadata:
        readers open each part's group, so it would only add bytes.)

        Call when writers are done; rerun after appending. It also removes what crashed
        writers left behind (staging directories, part groups without a manifest, temp
        files) once untouched for ``stale_after`` seconds, so a writer still at work is
        never disturbed.
        """
        if not self._writable:
            raise StoreError(expected(f"store {self.path}", "opened for writing (create)",
                                      "a read-only store (open)"))
        parts = self.parts()
        if self.loc.is_local:
            self._remove_leftovers(parts, stale_after)
        else:
            self._remove_orphan_groups(parts, stale_after)
        if len(parts) <= 1:
            if self.loc.is_local:
                (self.path / CONSOLIDATED_MANIFEST).unlink(missing_ok=True)
            else:
                self.loc.remove_file(CONSOLIDATED_MANIFEST)
            return
        table = self._per_part_manifest(parts)
        summaries = {p: self.part_summary(p) for p in parts}
        meta = {PARTS_META_KEY: json.dumps(summaries)}
        if self.loc.is_local:
            write_manifest(self.path / CONSOLIDATED_MANIFEST, table, meta)
        else:
            self.loc.put(CONSOLIDATED_MANIFEST, manifest_bytes(table, meta))

    def _remove_orphan_groups(self, parts: list[str], stale_after: float) -> None:
        """Object storage: remove groups no manifest names, once untouched for
        ``stale_after`` seconds (another writer may still be writing one)."""
        named = {self.part_rel(p).split("/", 1)[1] for p in parts}
        cutoff = time.time() - stale_after
        for name in self.loc.listdir(PARTS_DIR):
            if name == "zarr.json" or name in named:
                continue
            stamp = self.loc.mtime(f"{PARTS_DIR}/{name}/zarr.json")
            if stamp is None or stamp <= cutoff:
                self.loc.remove_tree(f"{PARTS_DIR}/{name}")

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
            if not lease_live(entry, stale_after):
                shutil.rmtree(entry, ignore_errors=True)
        for folder in (self.path, parts_dir, self.path / MANIFESTS_DIR):
            for tmp in folder.glob(".*.tmp"):  # temp files of crashed atomic writes
                if stale(tmp):
                    tmp.unlink(missing_ok=True)

    # ----------------------------------------------------------------- reading
    def part_summary(self, part: str) -> dict:
        """Counts and extra metadata of a completed part (from its manifest)."""
        if part in self._summaries:
            return json.loads(json.dumps(self._summaries[part]))
        if not self.has_part(part):
            raise StoreError(expected(f"store {self.path} part", "a completed part", part))
        path = self._manifest_path(part)
        try:
            meta = self._schema_metadata(self._manifest_rel(part)) or {}
            summary = json.loads(meta.get(PART_META_KEY, b"{}"))
            if not self.loc.is_local:
                self._summaries[part] = summary
            return json.loads(json.dumps(summary))
        except (OSError, ValueError) as err:
            raise StoreError(expected(f"part {part} manifest {path}",
                                      "a readable Parquet manifest", err)) from None

    def _schema_metadata(self, rel: str) -> dict | None:
        """Footer key-value metadata of a Parquet file of the store; None when missing."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.loc.is_local:
            path = self.path / rel
            return (pq.read_schema(path).metadata or {}) if path.is_file() else None
        data = self.loc.read_bytes(rel)
        if data is None:
            return None
        return pq.read_schema(pa.BufferReader(data)).metadata or {}

    def part_summaries(self) -> dict:
        """``{part: summary}`` of the completed parts (from the consolidated manifest when
        it is current, else from each part's manifest)."""
        parts = self.parts()
        try:
            meta = self._schema_metadata(CONSOLIDATED_MANIFEST)
            covered = json.loads(meta.get(PARTS_META_KEY, b"{}")) if meta is not None else {}
        except (OSError, ValueError):
            covered = {}
        if covered and sorted(covered) == parts:
            return covered
        return {p: self.part_summary(p) for p in parts}

    def _per_part_manifest(self, parts: list[str]):
        import pyarrow as pa

        tables = [self._read_manifest(self._manifest_rel(p)) for p in parts]
        if not tables:
            return manifest_schema().empty_table()
        return pa.concat_tables(tables)

    def consolidated_manifest(self):
        """The manifest written by :meth:`finalize`, or None (absent or stale)."""
        meta = self._schema_metadata(CONSOLIDATED_MANIFEST)
        if meta is None:
            return None
        covered = json.loads(meta.get(PARTS_META_KEY, b"{}"))
        if sorted(covered) != self.parts():
            return None
        return self._read_manifest(CONSOLIDATED_MANIFEST)

    def _read_manifest(self, rel: str):
        if self.loc.is_local:
            return _read_manifest(self.path / rel)
        import pyarrow as pa

        data = self.loc.read_bytes(rel)
        if data is None:
            raise StoreError(expected(f"manifest {self.loc.url_of(rel)}",
                                      "a readable Parquet manifest", "none"))
        return _read_manifest(pa.BufferReader(data), self.loc.url_of(rel))

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
            return zarr.open_group(store=self.loc.zarr_store(self.part_rel(part), read_only=True),
                                   mode="r", use_consolidated=False)
        except FileNotFoundError:
            raise StoreError(expected(f"store {self.path} part {part}",
                                      f"its arrays under {PARTS_DIR}/{part}", "none")) from None

    def read_arrays(self, part: str, names: list[str] | None = None) -> dict:
        """Whole arrays of a part (all stored arrays by default), read through the checked
        reader (shards present, dtypes, pointers against the manifest, checksums)."""
        return read_part_arrays(self, part, self.manifest([part]), names)

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

    def read_corpus(self, parts: list[str] | None = None,
                    trace_ids: list[str] | None = None) -> RowCorpus:
        """The sparse rows (with their stored aggregates) of the selected traces, in
        manifest order. ``parts`` and ``trace_ids`` narrow the selection. Every slice goes
        through the checked reader (:mod:`pipelines.store.reader`): a missing, empty or
        corrupt shard, a wrong dtype or a pointer that disagrees with the manifest raises
        :class:`~pipelines.store.reader.BatchReadError` naming the part and traces."""
        return read_selection(self, self._selection(parts, trace_ids), token_stats=False)[0]

    def read_token_stats(self, parts: list[str] | None = None,
                         trace_ids: list[str] | None = None) -> dict:
        """Per-token arrays of the selected traces, in manifest order (checked reader).

        Returns ``{name: (ptr, values)}`` for ``"token_ids"`` (int32) and every name of
        ``TOKEN_STAT_NAMES`` (float32, NaN where a trace has no such statistic); trace
        ``t`` owns ``values[ptr[t]:ptr[t+1]]``.
        """
        table = self._selection(parts, trace_ids)
        _, stats = read_selection(self, table)
        return {"token_ids": read_token_ids(self, table), **stats}

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
        on_disk = self.loc.tree_bytes()
        entries = total["n_entries"]
        array_bytes = self._array_bytes()
        sparse = sum(v for k, v in array_bytes.items() if k in ROW_CACHE_CONTENT)
        return {
            "schema_version": self.schema_version,
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
            # one manifest file covers every part: the consolidated one, or the only part's
            "finalized": len(summaries) <= 1 or self.consolidated_manifest() is not None,
            "extra_metadata": aggregate_extras([s.get("extra_metadata", {})
                                                for s in summaries.values()]),
            "capture": self.metadata.get("capture", {}),
            "captures": self.captures,
        }

    def _array_bytes(self) -> dict:
        """Bytes on disk per array name, summed over parts (metadata files included)."""
        out: dict[str, int] = {}
        for part in self.parts():
            rel = self.part_rel(part)
            for name in self.loc.listdir(rel):
                if name in ("zarr.json", LEASE_FILE):
                    continue
                out[name] = out.get(name, 0) + self.loc.tree_bytes(f"{rel}/{name}")
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


def manifest_bytes(table, metadata: dict) -> bytes:
    """A manifest as Parquet bytes (one put on object storage)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, table.schema, **PARQUET_OPTIONS) as writer:
        writer.write_table(table)
        writer.add_key_value_metadata(metadata)
    return sink.getvalue().to_pybytes()


def _read_manifest(path, name=None):
    """A manifest file as a table of :func:`manifest_schema` (no file metadata)."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
        return table.replace_schema_metadata(None).cast(manifest_schema())
    except (OSError, ValueError) as err:
        raise StoreError(expected(f"manifest {name or path}", "a readable Parquet manifest",
                                  err)) from None


def aggregate_extras(extras: list[dict]) -> dict:
    """Sum numeric extra metadata over parts; other values become sorted distinct lists
    (per-part mappings, such as the capture's per-trace inputs, are left out)."""
    numbers: dict[str, float] = {}
    others: dict[str, list] = {}
    for extra in extras:
        for key, value in extra.items():
            if isinstance(value, dict):
                continue
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


__all__ = ["ActivationStore", "aggregate_extras", "write_manifest"]
