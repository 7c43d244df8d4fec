"""Crash safety shared by the store, the tables, the workspace, the publishers and the flows.

* files: atomic writes (temporary sibling, then rename; group-readable, the umask's mode),
  exclusive creation, :func:`replace_folder` (a folder rebuilt beside its old version and
  swapped in, so readers see the old or the new one, never a mix);
* leases: a small JSON record naming the holder (host, pid, process start time) whose
  file a heartbeat thread touches. A holder that died on this host is recognised at once,
  one on another host when its heartbeat lapses. :class:`Lease` is a writer's lease on a
  folder (the store's staging parts), :class:`Claim` an exclusive lease file (the
  workspace's claims on a checkpoint, the flows' stage heartbeats); both use
  :func:`holder_live`;
* the fault hook (:func:`fault_point`) that tests use to kill or pause a process at a
  named point.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fnmatch
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable


# --------------------------------------------------------------------------- files
def file_mode() -> int:
    """The mode a plain ``open()`` would give a new file: ``0o666`` less the umask (read
    without changing it where /proc allows; 0o644 otherwise)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o644


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` to ``path`` (same directory).

    The file gets the umask's mode (readable by the group and others under the usual
    022), not ``mkstemp``'s 0600: workers of another user on a shared filesystem read it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())
    finally:
        os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | os.PathLike, payload: dict) -> Path:
    text = json.dumps(payload, indent=2, sort_keys=True) + "\n"
    return atomic_write(path, lambda p: p.write_text(text))


def create_exclusive(path: Path, data: bytes) -> bool:
    """Create ``path`` with ``data`` unless it exists; atomic and complete when visible.

    The content goes to a temporary sibling first, then is hard-linked into place: exactly
    one of several concurrent callers wins. Returns True when this call created the file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    tmp.write_bytes(data)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)


def read_json(path: Path) -> dict | None:
    """A JSON object from a file, or None when missing or unreadable."""
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


# --------------------------------------------------------------------------- folders
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _libc():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


_LIBC = _libc()


def exchange_paths(a: Path, b: Path) -> bool:
    """Swap two existing paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``). False
    where the system or filesystem cannot (the caller falls back to two renames)."""
    function = getattr(_LIBC, "renameat2", None)
    if function is None:
        return False
    result = function(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b),
                      ctypes.c_uint(_RENAME_EXCHANGE))
    return result == 0


#: Seconds a staging folder of :func:`replace_folder` stays someone's after its builder
#: stopped heartbeating (its leftovers are removed by the next replace of that folder).
STAGING_LEASE_SECONDS = 60.0


def replace_folder(dest: str | os.PathLike, build: Callable[[Path], None]) -> Path:
    """Build a new version of folder ``dest`` with ``build(staging)`` in a hidden sibling,
    then swap it in.

    Readers see the old folder or the new one, never a mix: the swap is one atomic
    exchange where the filesystem supports it, else two renames (``dest`` aside, the new
    one in), and a crash between them is repaired by the next call (the old folder is put
    back). A failing ``build`` leaves ``dest`` untouched. Staging folders of crashed
    builders (their lease lapsed) are removed.
    """
    dest = Path(dest).absolute()
    parent = dest.parent
    parent.mkdir(parents=True, exist_ok=True)
    _repair_folder(dest)
    token = uuid.uuid4().hex[:12]
    staging = parent / f".{dest.name}.staging-{token}"
    lease = Lease(staging, STAGING_LEASE_SECONDS)
    try:
        try:
            build(staging)
        finally:
            lease.release()
        if dest.exists() and exchange_paths(staging, dest):
            shutil.rmtree(staging, ignore_errors=True)  # holds the old version now
            return dest
        if dest.exists():
            old = parent / f".{dest.name}.old-{token}"
            os.rename(dest, old)
            os.rename(staging, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dest


def _repair_folder(dest: Path) -> None:
    """Put back an old version left aside by a crash between two renames; drop stale
    staging folders and old versions no longer needed."""
    olds = sorted(dest.parent.glob(f".{dest.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if olds and not dest.exists():
        try:
            os.rename(olds.pop(), dest)
        except OSError:
            pass
    for old in olds:
        shutil.rmtree(old, ignore_errors=True)
    for staging in dest.parent.glob(f".{dest.name}.staging-*"):
        if not lease_live(staging, STAGING_LEASE_SECONDS):
            shutil.rmtree(staging, ignore_errors=True)


# --------------------------------------------------------------------------- fault hook
#: Test hook, one variable for every process a test starts:
#: ``NEX_FAULT=kill:POINT:PATTERN`` SIGKILLs the process when it reaches ``POINT`` with a
#: detail matching ``PATTERN`` (fnmatch); ``NEX_FAULT=pause:POINT:PATTERN:FILE`` creates
#: ``FILE.waiting`` there and waits until ``FILE`` exists (at most 300 s). Points: the
#: store's ``staging`` (half a part's arrays written), ``staged`` (the part complete in its
#: staging folder) and ``renamed`` (in place, its manifest not yet written), detail the
#: part name.
FAULT_ENV = "NEX_FAULT"


def fault_point(point: str, detail: str = "") -> None:
    """Kill or pause this process here if :data:`FAULT_ENV` names this point (tests only)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    fields = spec.split(":", 3)
    if len(fields) < 3 or fields[1] != point or not fnmatch.fnmatchcase(detail, fields[2]):
        return
    if fields[0] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif fields[0] == "pause" and len(fields) == 4:
        release = Path(fields[3])
        Path(f"{release}.waiting").write_text(f"{point}:{detail}:{os.getpid()}\n")
        deadline = time.monotonic() + 300
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.02)


# --------------------------------------------------------------------------- leases
#: Name of the lease file inside a staging (or freshly renamed) part group.
LEASE_FILE = ".nex-lease"


def _host() -> str:
    return socket.gethostname()


def process_started(pid: int) -> int | None:
    """Start time of a process (clock ticks since boot, from /proc), so a pid reused by a
    later process is not taken for the holder; None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def holder_record(seconds: float, owner: str = "") -> dict:
    """The record a lease file holds: who holds it (host, pid, process start, a label),
    since when, and the period after which its heartbeat counts as lapsed."""
    pid = os.getpid()
    return {"host": _host(), "pid": pid, "started": process_started(pid),
            "owner": owner or f"{_host()}:{pid}", "seconds": float(seconds),
            "token": uuid.uuid4().hex, "since": datetime.now(timezone.utc).isoformat()}


def holder_dead_here(record: dict) -> bool:
    """True when the holder ran on this host and its process is gone (or its pid now
    belongs to a later process)."""
    pid = record.get("pid")
    if record.get("host") != _host() or not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, another user's
    started = record.get("started")
    return isinstance(started, int) and process_started(pid) not in (None, started)


def holder_live(record: dict, heartbeat: float, seconds: float, now: float | None = None) -> bool:
    """The one liveness rule of every lease: live unless its holder died on this host or
    its heartbeat (the lease file's mtime ``heartbeat``) is ``seconds`` or more old."""
    now = time.time() if now is None else now
    return not holder_dead_here(record) and now - heartbeat < seconds


class _Heartbeat:
    """A daemon thread that touches ``self.path`` every ``seconds / 4``."""

    def __init__(self, path: Path, seconds: float) -> None:
        self.path = path
        self.seconds = float(seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="nex-lease")

    def _beat(self) -> None:
        while not self._stop.wait(max(self.seconds / 4, 0.05)):
            try:
                os.utime(self.path)
            except OSError:
                pass  # renamed just now, or removed with its folder

    def _stop_beating(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


class Lease(_Heartbeat):
    """A writer's lease on a folder it creates: the lease file ``LEASE_FILE`` inside it,
    kept fresh by a heartbeat (see :func:`lease_live`). Follows the folder when it is
    renamed (:meth:`moved`)."""

    def __init__(self, folder: Path, seconds: float) -> None:
        folder.mkdir(parents=True, exist_ok=False)
        super().__init__(folder / LEASE_FILE, seconds)
        self.folder = folder
        self.path.write_text(json.dumps(holder_record(seconds)))
        self._thread.start()

    def moved(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / LEASE_FILE

    def release(self) -> None:
        """Stop the heartbeat and remove the lease file (the folder stays)."""
        self._stop_beating()
        try:
            self.path.unlink()
        except OSError:
            pass


def lease_live(folder: Path, seconds: float) -> bool:
    """True while a writer may still use ``folder`` (see :class:`Lease`): its lease file's
    heartbeat is younger than ``seconds`` and its holder is not dead on this host.

    Without a lease file (a writer between creating the folder and its lease, or an
    older writer) the folder's own mtime stands in for the heartbeat.
    """
    lease = folder / LEASE_FILE
    try:
        stamp = lease.stat().st_mtime
    except OSError:
        try:
            stamp = folder.stat().st_mtime
        except OSError:
            return False
    return holder_live(read_json(lease) or {}, stamp, seconds)


@dataclass(frozen=True)
class Holder:
    """Who holds a claim: its record (host, pid, owner, since, seconds), how long ago its
    heartbeat beat, and whether it is live."""

    record: dict
    age: float
    live: bool

    def describe(self) -> str:
        r = self.record
        return (f"{r.get('owner') or '?'} (pid {r.get('pid')} on {r.get('host')}, since "
                f"{r.get('since', '?')}, heartbeat {self.age:.0f} s ago)")


def read_holder(path: Path, seconds: float, now: float | None = None) -> Holder | None:
    """The holder of the claim file ``path``, or None when there is none. A claim is judged
    by the period its holder recorded (its heartbeat runs at a quarter of it), ``seconds``
    when it recorded none."""
    now = time.time() if now is None else now
    try:
        stamp = path.stat().st_mtime
    except OSError:
        return None
    record = read_json(path) or {}
    window = record.get("seconds") if isinstance(record.get("seconds"), (int, float)) else seconds
    return Holder(record, max(now - stamp, 0.0), holder_live(record, stamp, window, now))


class Claim(_Heartbeat):
    """An exclusive claim: the file ``path`` created by exactly one of its contenders and
    kept fresh by a heartbeat until :meth:`release`.

    A claim whose holder died on this host is taken over at once, one whose heartbeat
    lapsed (``seconds``, recorded in the file) as soon as anyone looks. Use
    :meth:`acquire`; a context manager."""

    def __init__(self, path: Path, record: dict) -> None:
        super().__init__(path, record["seconds"])
        self.record = record
        self._thread.start()

    @classmethod
    def acquire(cls, path: str | os.PathLike, seconds: float, owner: str = "") -> "Claim | None":
        """The claim on ``path``, or None while another live holder has it."""
        path = Path(path)
        for _ in range(5):
            record = holder_record(seconds, owner)
            if create_exclusive(path, json.dumps(record).encode()):
                return cls(path, record)
            holder = read_holder(path, seconds)
            if holder is None:
                continue  # released meanwhile
            if holder.live:
                return None
            if not _remove_stale(path, holder.record.get("token")):
                return None
        return None

    @property
    def lost(self) -> bool:
        """True when the file no longer holds this claim (taken over after a lapse)."""
        return (read_json(self.path) or {}).get("token") != self.record["token"]

    def release(self) -> None:
        """Stop the heartbeat and remove the file if it still holds this claim."""
        self._stop_beating()
        if not self.lost:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"Claim({str(self.path)!r}, owner={self.record['owner']!r})"


def _remove_stale(path: Path, token: str | None) -> bool:
    """Move a stale claim file aside (one of several takers wins the rename). If what was
    moved is not the stale claim but a fresh one another taker made meanwhile, put it
    back. True when the stale claim is gone."""
    grave = path.with_name(f".{path.name}.stale-{uuid.uuid4().hex}")
    try:
        os.rename(path, grave)
    except FileNotFoundError:
        return True
    moved = read_json(grave) or {}
    if token is not None and moved.get("token") not in (None, token):
        try:
            os.link(grave, path)
        except FileExistsError:
            pass
        grave.unlink(missing_ok=True)
        return False
    grave.unlink(missing_ok=True)
    return True


__all__ = ["Claim", "FAULT_ENV", "Holder", "LEASE_FILE", "Lease", "atomic_write",
           "atomic_write_json", "create_exclusive", "exchange_paths", "fault_point",
           "file_mode", "holder_dead_here", "holder_live", "holder_record", "lease_live",
           "process_started", "read_holder", "read_json", "replace_folder"]
