"""The activation store: a Zarr v3 group of parts (sharded sparse CSR arrays) + Parquet manifests.

Writers append whole *parts*: a part's arrays go into a zarr group, which the location's
commit protocol puts in place, then the part's manifest ``manifests/<part>.parquet`` is
written whole, its completion marker. Readers only ever look at parts that have a
manifest, so a crash at any point leaves either a complete part or nothing. Writers never
share a shard or a metadata file: the root metadata is created once, exclusively.

:class:`ActivationStore` is the public facade; the jobs behind it live in their own
modules: :mod:`~pipelines.store.root` (creating, opening and checking a store, per-model
capture records), :mod:`~pipelines.store.writer` (a part encoded into a zarr group),
:mod:`~pipelines.store.commit` (the local-disk and object-store commit protocols behind
one interface), :mod:`~pipelines.store.manifests` (part and consolidated manifests),
:mod:`~pipelines.store.reader` (the checked reader) and :mod:`~pipelines.store.info`
(what ``nex store info`` reports).
"""

from __future__ import annotations

import json

from nex_transforms import RowCorpus
from nex_transforms.errors import expected

from ..records import TraceRecord
from .commit import LEASE_SECONDS, STALE_SECONDS, commit_for
from .encode import decode_records, encode_part
from .fs import Location, group_node
from .info import store_info
from .manifests import (concat_manifests, consolidated_summaries, manifest_rel, put_consolidated,
                        put_part_manifest, read_manifest, read_part_summary)
from .reader import read_part_arrays, read_selection, read_token_ids
from .root import capture_metadata, captures, check_append, new_root, normalise, read_root
from .schema import (CONSOLIDATED_MANIFEST, MANIFESTS_DIR, PARTS_DIR, StoreError,
                     check_part_name, check_storage)
from .writer import write_group


class ActivationStore:
    """A chunked, sharded Zarr v3 store of captured traces with a Parquet manifest.

    Use :meth:`create` to create a store or open one for appending, :meth:`open` to read.
    """

    def __init__(self, path, attributes: dict, writable: bool,
                 location: Location | None = None) -> None:
        self.loc = location if location is not None else Location(path)
        #: a Path for a local store, the URL (str) for an object store
        self.path = self.loc.path
        self._commit = commit_for(self.loc)
        #: part summaries read once (where the commit protocol allows, see caches_summaries)
        self._summaries: dict[str, dict] = {}
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
        given, explicit_storage, attributes = new_root(metadata)
        commit = commit_for(loc)
        commit.check_create()
        loc.create("zarr.json", group_node(attributes))
        store = cls._load(loc, writable=True)
        check_append(loc, store.metadata, given, explicit_storage, store.path)
        loc.create(f"{PARTS_DIR}/zarr.json", group_node({}))
        commit.prepare_writers()
        return store

    @classmethod
    def open(cls, path, storage_options: dict | None = None) -> "ActivationStore":
        """Open an existing store read-only; StoreError if missing, not a store, or another
        schema version. ``path`` may be an fsspec URL (see :meth:`create`)."""
        return cls._load(Location(path, storage_options), writable=False)

    @classmethod
    def _load(cls, loc: Location, writable: bool) -> "ActivationStore":
        commit_for(loc).check_open()
        return cls(loc.url, read_root(loc), writable, loc)

    def capture_metadata(self, model_id: str | None = None) -> dict | None:
        """The capture parameters recorded for ``model_id`` (None: those given at the store's
        creation); None when the store holds no record of that model."""
        return capture_metadata(self.loc, self.metadata, model_id)

    @property
    def captures(self) -> dict:
        """``{model_id: capture parameters}`` for every model recorded in the store."""
        return captures(self.loc, self.metadata)

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

    def _check_writable(self) -> None:
        if not self._writable:
            raise StoreError(expected(f"store {self.path}", "opened for writing (create)",
                                      "a read-only store (open)"))

    def _manifest_path(self, part: str):
        """The part's manifest: its local path, or its key on object storage."""
        return self._commit.manifest_path(manifest_rel(part))

    def part_rel(self, part: str) -> str:
        """The part's group, relative to the store root: ``parts/<part>`` on local disk;
        on object storage the writer's unique group named by the part's manifest."""
        return self._commit.group_rel(part, self._group_of)

    def _group_of(self, part: str) -> str | None:
        """The group the part's manifest names (None when none, or the part is missing)."""
        if part in self._summaries:
            return self._summaries[part].get("group")
        return self.part_summary(part).get("group") if self.has_part(part) else None

    def part_dir(self, part: str):
        """Local path (or URL) of the part's group."""
        return self.loc.path_of(self.part_rel(part))

    def has_part(self, part: str) -> bool:
        """True only for completed parts (their manifest exists)."""
        check_part_name(part)
        return self.loc.isfile(manifest_rel(part))

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
        :meth:`info` sums its numbers over the parts. How the part is put in place is the
        location's commit protocol (:mod:`pipelines.store.commit`).
        """
        check_part_name(part)
        self._check_writable()
        if self.has_part(part):
            return
        extra = normalise(extra_metadata or {}, "extra_metadata")
        if not isinstance(extra, dict):
            raise StoreError(expected("extra_metadata", "a dict", type(extra).__name__))
        encoded = encode_part(part, records, self.storage)
        summary = dict(encoded.counts, part=part, extra_metadata=extra)
        self._commit.commit(
            part, summary,
            write_group=lambda rel, s: write_group(self.loc, rel, part, encoded, s,
                                                   self.schema_version, self.storage),
            write_manifest=lambda s: put_part_manifest(self.loc, part, encoded, s),
            has_part=self.has_part, lease_seconds=lease_seconds)

    def remove_part(self, part: str) -> None:
        """Remove a completed part: its manifest first (the part stops being visible at
        once), then its arrays. Used to recapture a part (``nex capture --overwrite``)."""
        check_part_name(part)
        self._check_writable()
        rel = self.part_rel(part)
        self._summaries.pop(part, None)
        self._commit.remove(part, rel, manifest_rel(part))

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
        self._check_writable()
        parts = self.parts()
        self._commit.clean(parts, stale_after, self.part_rel)
        if len(parts) <= 1:
            self.loc.remove_file(CONSOLIDATED_MANIFEST)
            return
        table = concat_manifests(self.loc, parts)
        put_consolidated(self.loc, table, {p: self.part_summary(p) for p in parts})

    # ----------------------------------------------------------------- reading
    def part_summary(self, part: str) -> dict:
        """Counts and extra metadata of a completed part (from its manifest)."""
        if part in self._summaries:
            return json.loads(json.dumps(self._summaries[part]))
        if not self.has_part(part):
            raise StoreError(expected(f"store {self.path} part", "a completed part", part))
        try:
            summary = read_part_summary(self.loc, part)
        except (OSError, ValueError) as err:
            raise StoreError(expected(f"part {part} manifest {self._manifest_path(part)}",
                                      "a readable Parquet manifest", err)) from None
        if self._commit.caches_summaries:
            self._summaries[part] = summary
        return json.loads(json.dumps(summary))

    def part_summaries(self) -> dict:
        """``{part: summary}`` of the completed parts (from the consolidated manifest when
        it is current, else from each part's manifest)."""
        parts = self.parts()
        try:
            covered = consolidated_summaries(self.loc) or {}
        except (OSError, ValueError):
            covered = {}
        if covered and sorted(covered) == parts:
            return covered
        return {p: self.part_summary(p) for p in parts}

    def consolidated_manifest(self):
        """The manifest written by :meth:`finalize`, or None (absent or stale)."""
        covered = consolidated_summaries(self.loc)
        if covered is None or sorted(covered) != self.parts():
            return None
        return read_manifest(self.loc, CONSOLIDATED_MANIFEST)

    def manifest(self, parts: list[str] | None = None):
        """The manifest (a pyarrow Table): one row per trace of the completed parts,
        parts in name order, traces in write order."""
        if parts is None:
            table = self.consolidated_manifest()
            return table if table is not None else concat_manifests(self.loc, self.parts())
        return concat_manifests(self.loc, [self._check_known(p) for p in parts])

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
        """Counts, sizes and per-model trace counts of the completed parts
        (:func:`pipelines.store.info.store_info`)."""
        return store_info(self)


__all__ = ["ActivationStore"]
