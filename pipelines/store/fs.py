"""Small filesystem helpers of the store: JSON nodes, sizes, locations (local or fsspec URL)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..crashsafe import atomic_write, create_exclusive
from .schema import StoreError


def json_bytes(payload: dict) -> bytes:
    return (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode()


def group_node(attributes: dict) -> bytes:
    """The ``zarr.json`` of a zarr v3 group with these attributes (compact JSON: the
    part groups' attributes are a fixed cost of every part)."""
    return json.dumps({"zarr_format": 3, "node_type": "group", "attributes": attributes},
                      sort_keys=True, separators=(",", ":")).encode()


def tree_bytes(root: Path) -> int:
    """Total size of the regular files under ``root``."""
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            try:
                total += os.stat(os.path.join(folder, name), follow_symlinks=False).st_size
            except FileNotFoundError:
                continue
    return total


# --------------------------------------------------------------------------- locations
def is_url(target: object) -> bool:
    """True for an fsspec URL (``s3://...``, ``memory://...``); False for local paths."""
    text = str(target)
    return "://" in text and not text.startswith("file://")


def storage_options_from_env(options: dict | None = None) -> dict:
    """Storage options of an object store: the given ones, else from the environment.

    ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_ENDPOINT_URL`` are read by
    s3fs (botocore) itself; ``NEX_STORAGE_OPTIONS`` (JSON) adds options for any fsspec
    protocol. Explicit options win.
    """
    merged: dict = {}
    env = os.environ.get("NEX_STORAGE_OPTIONS")
    if env:
        merged.update(json.loads(env))
    merged.update(options or {})
    return merged


class Location:
    """Where a store lives: a local directory or an fsspec URL (object storage).

    Local stores keep POSIX semantics (hard links, renames); object stores use plain puts
    (visible whole or not at all), exclusive puts where the protocol has them, and unique
    keys per writer instead of renames. Methods that only differ in how bytes are put or
    read (:meth:`put`, :meth:`put_atomic`, :meth:`create`, :meth:`parquet_metadata`, ...)
    do the right thing on both kinds, so callers need no branch; the part commit protocols
    that differ in more than that are :mod:`pipelines.store.commit`.
    """

    def __init__(self, target, storage_options: dict | None = None) -> None:
        self.url = str(target)
        self.is_local = not is_url(target)
        self.storage_options = dict(storage_options or {})
        if self.is_local:
            self.local = Path(str(target)[7:] if str(target).startswith("file://") else target)
            self.fs = None
            self.root = str(self.local)
            #: how the store names its location: a Path here, the URL on object storage
            self.path = self.local
        else:
            import fsspec

            protocol = self.url.split("://", 1)[0]
            options = storage_options_from_env(self.storage_options)
            if protocol in ("s3", "s3a"):
                options.setdefault("asynchronous", True)
            self.fs = fsspec.filesystem(protocol, **options)
            self.root = self.fs._strip_protocol(self.url).rstrip("/")
            self.local = None
            self.path = self.url
            self.protocol = protocol
            self._sync = None

    def __repr__(self) -> str:
        return self.url

    def __str__(self) -> str:
        return self.url

    # The async S3 filesystem (zarr's FsspecStore needs one) is driven through a sync
    # twin that shares options; plain file operations use the twin.
    @property
    def sfs(self):
        if self._sync is None:
            import fsspec

            options = storage_options_from_env(self.storage_options)
            options.pop("asynchronous", None)
            self._sync = fsspec.filesystem(self.protocol, **options)
        return self._sync

    def key(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def url_of(self, rel: str) -> str:
        return f"{self.protocol}://{self.key(rel)}"

    def path_of(self, rel: str):
        """``rel`` as a Path under a local location, as a URL under an object store."""
        return self.local / rel if self.is_local else self.url_of(rel)

    def exists(self, rel: str) -> bool:
        if self.is_local:
            return (self.local / rel).exists()
        return self.sfs.exists(self.key(rel))

    def isfile(self, rel: str) -> bool:
        if self.is_local:
            return (self.local / rel).is_file()
        return self.sfs.isfile(self.key(rel))

    def size(self, rel: str) -> int | None:
        """Size in bytes of a file; None when missing."""
        if self.is_local:
            try:
                return (self.local / rel).stat().st_size
            except OSError:
                return None
        try:
            return int(self.sfs.info(self.key(rel))["size"])
        except FileNotFoundError:
            return None

    def read_bytes(self, rel: str) -> bytes | None:
        if self.is_local:
            try:
                return (self.local / rel).read_bytes()
            except OSError:
                return None
        try:
            return self.sfs.cat_file(self.key(rel))
        except FileNotFoundError:
            return None

    def read_json(self, rel: str) -> dict | None:
        data = self.read_bytes(rel)
        try:
            payload = json.loads(data) if data is not None else None
        except ValueError:
            return None
        return payload if isinstance(payload, dict) else None

    def put(self, rel: str, data: bytes) -> None:
        """Write a whole object (object stores: visible whole or not at all; local: a plain
        write into an existing folder, for files only their writer sees until it is done)."""
        if self.is_local:
            (self.local / rel).write_bytes(data)
            return
        self.sfs.pipe_file(self.key(rel), data)

    def put_atomic(self, rel: str, data: bytes) -> None:
        """Write a file that readers see whole or not at all: locally a temporary sibling
        (mode 0644, readable by workers of other users) renamed into place, on object
        storage one put."""
        if not self.is_local:
            self.put(rel, data)
            return

        def write(tmp: Path) -> None:
            os.chmod(tmp, 0o644)
            tmp.write_bytes(data)

        atomic_write(self.local / rel, write)

    def put_exclusive(self, rel: str, data: bytes) -> bool:
        """Create an object unless it exists; True when this call created it."""
        if self.sfs.exists(self.key(rel)):
            return False
        try:
            self.sfs.pipe_file(self.key(rel), data, mode="create")
        except (FileExistsError, TypeError, NotImplementedError, ValueError):
            if self.sfs.exists(self.key(rel)):
                return False
            self.sfs.pipe_file(self.key(rel), data)
        except OSError as err:  # a precondition failure: another writer created it
            if "Precondition" in str(err) or "412" in str(err):
                return False
            raise
        return True

    def create(self, rel: str, data: bytes) -> bool:
        """Create ``rel`` with ``data`` unless it exists, on either kind of location (local:
        :func:`create_exclusive`; object stores: :meth:`put_exclusive`)."""
        if self.is_local:
            return create_exclusive(self.local / rel, data)
        return self.put_exclusive(rel, data)

    def listdir(self, rel: str) -> list[str]:
        """Names directly under ``rel`` (files and folders); empty when missing."""
        if self.is_local:
            folder = self.local / rel
            return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        try:
            entries = self.sfs.ls(self.key(rel), detail=False, refresh=True)
        except FileNotFoundError:
            return []
        return sorted(e.rstrip("/").rsplit("/", 1)[-1] for e in entries)

    def remove_tree(self, rel: str) -> None:
        if self.is_local:
            import shutil

            shutil.rmtree(self.local / rel, ignore_errors=True)
            return
        try:
            self.sfs.rm(self.key(rel), recursive=True)
        except FileNotFoundError:
            pass

    def remove_file(self, rel: str) -> None:
        if self.is_local:
            (self.local / rel).unlink(missing_ok=True)
            return
        try:
            self.sfs.rm_file(self.key(rel))
        except FileNotFoundError:
            pass

    def mtime(self, rel: str) -> float | None:
        if self.is_local:
            try:
                return (self.local / rel).stat().st_mtime
            except OSError:
                return None
        try:
            info = self.sfs.info(self.key(rel))
        except FileNotFoundError:
            return None
        stamp = info.get("LastModified") or info.get("mtime") or info.get("created")
        return stamp.timestamp() if hasattr(stamp, "timestamp") else \
            (float(stamp) if stamp is not None else None)

    def tree_bytes(self, rel: str = "") -> int:
        if self.is_local:
            return tree_bytes(self.local / rel)
        try:
            return int(self.sfs.du(self.key(rel), total=True))
        except FileNotFoundError:
            return 0

    def zarr_store(self, rel: str, read_only: bool):
        """A zarr v3 store rooted at ``rel``."""
        if self.is_local:
            from zarr.storage import LocalStore

            return LocalStore(str(self.local / rel), read_only=read_only)
        from zarr.storage import FsspecStore

        fs = self.fs
        if not getattr(fs, "async_impl", False):  # e.g. memory://: zarr needs an async API
            from fsspec.implementations.asyn_wrapper import AsyncFileSystemWrapper

            fs = AsyncFileSystemWrapper(fs, asynchronous=True)
        return FsspecStore(fs, read_only=read_only, path=self.key(rel))

    def parquet_file(self, rel: str):
        """What :mod:`pyarrow.parquet` reads for the Parquet file ``rel``: its local path
        (pyarrow reports a missing file), or the object's bytes in a buffer (None when the
        object is missing)."""
        if self.is_local:
            return self.local / rel
        import pyarrow as pa

        data = self.read_bytes(rel)
        return None if data is None else pa.BufferReader(data)

    def parquet_metadata(self, rel: str) -> dict | None:
        """The footer key-value metadata of the Parquet file ``rel`` ({} when it has none);
        None when the file is missing."""
        import pyarrow.parquet as pq

        if self.is_local and not self.isfile(rel):
            return None
        source = self.parquet_file(rel)
        return None if source is None else (pq.read_schema(source).metadata or {})

    def arrow_filesystem(self):
        """(pyarrow filesystem or None, path) for reading Parquet under this location."""
        if self.is_local:
            return None
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        return PyFileSystem(FSSpecHandler(self.sfs))


def apply_storage_options(text: str | None) -> dict:
    """Parse ``--storage-options JSON`` and make it the default of every object-store
    :class:`Location` of this process and of the processes it starts (engine workers),
    through ``NEX_STORAGE_OPTIONS``. Returns the options."""
    if text is None:
        return {}
    try:
        options = json.loads(text)
    except ValueError as err:
        raise StoreError(f"--storage-options: expected a JSON object, got {text!r} ({err})") \
            from None
    if not isinstance(options, dict):
        raise StoreError(f"--storage-options: expected a JSON object, got {text!r}")
    os.environ["NEX_STORAGE_OPTIONS"] = json.dumps(options)
    return options


def add_storage_options_flag(parser) -> None:
    """The ``--storage-options JSON`` flag of every command that opens a store."""
    parser.add_argument("--storage-options", default=None, metavar="JSON",
                        help="fsspec options of an object-store URL (s3://...), e.g. "
                             "'{\"key\": ..., \"secret\": ..., \"endpoint_url\": ...}'; "
                             "default: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
                             "AWS_ENDPOINT_URL from the environment")
