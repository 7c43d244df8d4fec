"""How a written part becomes visible: the commit protocols of the two kinds of location.

Readers only look at parts that have a manifest, so every protocol ends with the part's
manifest written whole (its completion marker) and a crash at any point leaves a
complete part or nothing visible. What differs is how a writer gets its group into place
without disturbing another writer of the same part:

* :class:`LocalCommit` (a local directory): the group is written into a staging folder
  ``.staging/<part>~<token>`` holding the writer's lease, renamed exclusively onto
  ``parts/<part>`` (the *claim*), then the manifest is written. Removal renames the group
  into the staging folder as trash; clean-up removes staging folders and orphan groups
  whose lease is not live, and stale temporary files of atomic writes.
* :class:`ObjectStoreCommit` (an fsspec URL): object stores have no rename, so each writer
  writes its own group ``parts/<part>~<token>`` and the manifest's part summary names it
  (``group``); a writer that finds the part complete first removes its group; clean-up
  removes groups no manifest names once untouched for the stale period.

:func:`commit_for` picks one from the :class:`~pipelines.store.fs.Location`, once per
store; :class:`~pipelines.store.store.ActivationStore` calls only this interface.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable

from nex_transforms.errors import expected

from ..crashsafe import Lease, fault_point, lease_live
from .fs import Location
from .schema import (CONSOLIDATED_MANIFEST, MANIFESTS_DIR, MODELS_DIR, PARTS_DIR, STAGING_DIR,
                     StoreError)

#: Seconds after which finalize treats staging leftovers as abandoned by a crashed writer.
STALE_SECONDS = 600.0
#: Seconds without a heartbeat after which a writer's staging lease has expired.
LEASE_SECONDS = 60.0
#: Separates the part name in staging and group names ("~" is not allowed in part names).
STAGING_SEP = "~"
#: Entries of a store's root folder (a folder holding only these may become a store).
KNOWN_ENTRIES = {"zarr.json", PARTS_DIR, MANIFESTS_DIR, STAGING_DIR, CONSOLIDATED_MANIFEST,
                 MODELS_DIR}

#: ``write_group(rel, summary)``: write the encoded part as the group at ``rel`` with the
#: part ``summary`` as its attributes.
WriteGroup = Callable[[str, dict], None]
#: ``write_manifest(summary)``: write the part's manifest (the completion marker).
WriteManifest = Callable[[dict], None]


class PartCommit(ABC):
    """The commit protocol of a store's location: set-up, how a part's group is put in
    place and made visible, removed, and how crashed writers' leftovers are cleaned."""

    #: Whether part summaries may be kept for the store object's lifetime: True where the
    #: group holding a part's arrays is named by its manifest (read it once).
    caches_summaries = False

    def __init__(self, loc: Location) -> None:
        self.loc = loc

    def check_open(self) -> None:
        """Refuse a location that cannot hold a store before its root is read."""

    def check_create(self) -> None:
        """Refuse a location that cannot become a store, and make its root ready for the
        exclusive creation of ``zarr.json``."""

    def prepare_writers(self) -> None:
        """Make what writers of parts need once the store exists."""

    def manifest_path(self, rel: str):
        """How error messages name the manifest at ``rel`` (relative to the store root)."""
        return rel

    @abstractmethod
    def group_rel(self, part: str, group_of: Callable[[str], str | None]) -> str:
        """The group holding a part's arrays, relative to the store root. ``group_of(part)``
        gives the group named by the part's manifest (None when it names none)."""

    @abstractmethod
    def commit(self, part: str, summary: dict, write_group: WriteGroup,
               write_manifest: WriteManifest, has_part: Callable[[str], bool],
               lease_seconds: float) -> None:
        """Write the part's group with ``write_group``, put it in place and write its
        manifest with ``write_manifest``; return early, writing nothing visible, when
        ``has_part(part)`` says another writer completed the part meanwhile. Fault points
        ``staged`` (group written) and ``renamed`` (in place, no manifest yet) fire in
        between."""

    @abstractmethod
    def remove(self, part: str, group_rel: str, manifest_rel: str) -> None:
        """Remove a completed part: its manifest first (it stops being visible at once),
        then its group at ``group_rel``."""

    @abstractmethod
    def clean(self, parts: list[str], stale_after: float,
              group_rel: Callable[[str], str]) -> None:
        """Remove what crashed writers left behind, once untouched (or, locally, its lease
        not live) for ``stale_after`` seconds; ``parts`` are the completed parts and
        ``group_rel(part)`` their groups."""


class LocalCommit(PartCommit):
    """A local directory: staging folder with a lease, exclusive rename, claim."""

    def __init__(self, loc: Location) -> None:
        super().__init__(loc)
        self.root: Path = loc.local

    def check_open(self) -> None:
        if not self.root.is_dir():
            raise StoreError(expected("activation store", "an existing directory",
                                      self.loc.url))

    def check_create(self) -> None:
        path = self.root
        if path.exists() and not path.is_dir():
            raise StoreError(expected("store path", "a directory", f"a file {path}"))
        if path.is_dir() and not (path / "zarr.json").exists():
            stray = sorted(e.name for e in path.iterdir()
                           if e.name not in KNOWN_ENTRIES and not e.name.startswith(".zarr.json."))
            if stray:
                raise StoreError(expected(f"store {path}", "an empty directory or a NEX store",
                                          f"a directory holding {stray[:3]}"))
        path.mkdir(parents=True, exist_ok=True)

    def prepare_writers(self) -> None:
        (self.root / MANIFESTS_DIR).mkdir(exist_ok=True)
        (self.root / STAGING_DIR).mkdir(exist_ok=True)

    def manifest_path(self, rel: str):
        return self.root / rel

    def group_rel(self, part: str, group_of: Callable[[str], str | None]) -> str:
        return f"{PARTS_DIR}/{part}"

    def _trash(self, part: str, token: str) -> Path:
        """A name in the staging folder to rename a group to before removing it (a
        removal never leaves a half-removed group under ``parts/``)."""
        return self.root / STAGING_DIR / f"{part}{STAGING_SEP}{token}{STAGING_SEP}trash"

    def commit(self, part: str, summary: dict, write_group: WriteGroup,
               write_manifest: WriteManifest, has_part: Callable[[str], bool],
               lease_seconds: float) -> None:
        """The staging folder carries a lease (:class:`~pipelines.crashsafe.Lease`): a
        second writer of the same part never removes a live writer's staging, only one
        whose lease expired (``lease_seconds`` without a heartbeat, or its process dead
        on this host)."""
        staging_root = self.root / STAGING_DIR
        staging_root.mkdir(exist_ok=True)
        for other in staging_root.iterdir():  # left by a crashed writer of this part
            if other.name.split(STAGING_SEP)[0] == part and not lease_live(other, lease_seconds):
                shutil.rmtree(other, ignore_errors=True)
        token = uuid.uuid4().hex
        staging = staging_root / f"{part}{STAGING_SEP}{token}"
        lease = Lease(staging, lease_seconds)
        try:
            try:
                write_group(f"{STAGING_DIR}/{staging.name}", summary)
                fault_point("staged", part)
                if not self._claim(staging, part, token, has_part, lease_seconds):
                    return  # another writer completed the part meanwhile
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            lease.moved(self.root / PARTS_DIR / part)
            fault_point("renamed", part)
            write_manifest(summary)
        finally:
            lease.release()

    def _claim(self, staging: Path, part: str, token: str, has_part: Callable[[str], bool],
               lease_seconds: float) -> bool:
        """Rename ``staging`` to ``parts/<part>``; False (staging removed) when another
        writer completed the part first.

        The rename is exclusive (it fails onto a non-empty folder). A group already there
        without a manifest is another writer's, between its rename and its manifest: it
        is waited for while its lease is live, replaced once the lease expired.
        """
        target = self.root / PARTS_DIR / part
        while True:
            try:
                os.rename(staging, target)
                return True
            except OSError:
                if not target.exists():
                    raise
            if has_part(part):
                shutil.rmtree(staging, ignore_errors=True)
                return False
            if lease_live(target, lease_seconds):
                time.sleep(0.05)
                continue
            trash = self._trash(part, token)
            try:
                target.rename(trash)
            except OSError:
                continue  # another writer moved it first
            shutil.rmtree(trash, ignore_errors=True)

    def remove(self, part: str, group_rel: str, manifest_rel: str) -> None:
        self.loc.remove_file(manifest_rel)
        trash = self._trash(part, uuid.uuid4().hex)
        try:
            (self.root / group_rel).rename(trash)
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def clean(self, parts: list[str], stale_after: float,
              group_rel: Callable[[str], str]) -> None:
        """Staging folders and groups without a manifest whose lease is not live, and
        temporary files of crashed atomic writes older than ``stale_after``."""
        cutoff = time.time() - stale_after

        def stale(entry: Path) -> bool:
            try:
                return entry.stat().st_mtime <= cutoff
            except FileNotFoundError:
                return False

        staging = list((self.root / STAGING_DIR).glob("*"))
        parts_dir = self.root / PARTS_DIR
        orphans = [f for f in (parts_dir.iterdir() if parts_dir.is_dir() else [])
                   if f.is_dir() and f.name not in parts]
        for entry in staging + orphans:
            if not lease_live(entry, stale_after):
                shutil.rmtree(entry, ignore_errors=True)
        for folder in (self.root, parts_dir, self.root / MANIFESTS_DIR):
            for tmp in folder.glob(".*.tmp"):  # temp files of crashed atomic writes
                if stale(tmp):
                    tmp.unlink(missing_ok=True)


class ObjectStoreCommit(PartCommit):
    """An object store: a unique group per writer, the manifest put as completion marker."""

    caches_summaries = True

    def group_rel(self, part: str, group_of: Callable[[str], str | None]) -> str:
        return f"{PARTS_DIR}/{group_of(part) or part}"

    def commit(self, part: str, summary: dict, write_group: WriteGroup,
               write_manifest: WriteManifest, has_part: Callable[[str], bool],
               lease_seconds: float) -> None:
        """Each writer writes its own group ``parts/<part>~<token>``, then the part's
        manifest (naming that group) with one put. A writer that finds the part complete
        first removes its group; groups no manifest names are removed by :meth:`clean`."""
        group = f"{part}{STAGING_SEP}{uuid.uuid4().hex}"
        summary = dict(summary, group=group)
        rel = f"{PARTS_DIR}/{group}"
        try:
            write_group(rel, summary)
            fault_point("staged", part)
            if has_part(part):
                self.loc.remove_tree(rel)
                return
        except BaseException:
            self.loc.remove_tree(rel)
            raise
        fault_point("renamed", part)
        write_manifest(summary)

    def remove(self, part: str, group_rel: str, manifest_rel: str) -> None:
        """The consolidated manifest goes too (it would name the removed part's group)."""
        self.loc.remove_file(manifest_rel)
        self.loc.remove_file(CONSOLIDATED_MANIFEST)
        self.loc.remove_tree(group_rel)

    def clean(self, parts: list[str], stale_after: float,
              group_rel: Callable[[str], str]) -> None:
        """Groups no manifest names whose ``zarr.json`` is ``stale_after`` seconds old
        (another writer may still be writing one)."""
        named = {group_rel(p).split("/", 1)[1] for p in parts}
        cutoff = time.time() - stale_after
        for name in self.loc.listdir(PARTS_DIR):
            if name == "zarr.json" or name in named:
                continue
            stamp = self.loc.mtime(f"{PARTS_DIR}/{name}/zarr.json")
            if stamp is None or stamp <= cutoff:
                self.loc.remove_tree(f"{PARTS_DIR}/{name}")


def commit_for(loc: Location) -> PartCommit:
    """The commit protocol of ``loc``: local directory or object store."""
    return LocalCommit(loc) if loc.is_local else ObjectStoreCommit(loc)


__all__ = ["KNOWN_ENTRIES", "LEASE_SECONDS", "STAGING_SEP", "STALE_SECONDS", "LocalCommit",
           "ObjectStoreCommit", "PartCommit", "commit_for"]
