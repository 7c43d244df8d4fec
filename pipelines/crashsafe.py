"""Crash safety shared by the store, the tables, the workspace and the publishers.

Atomic file writes (temporary sibling, then rename), exclusive creation, leases (a
heartbeat file naming host and pid, so a holder that died is recognised) and the test
hooks that kill or pause a process at a named stage.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Callable


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` to ``path`` (same directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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


#: Test hook: ``NEX_STORE_FAULT=<stage>`` (or ``<stage>:<part>``) SIGKILLs the writing
#: process when ``write_part`` reaches that stage ("staging": half the arrays written,
#: "renamed": part group in place but its manifest not yet written).
FAULT_ENV = "NEX_STORE_FAULT"


def fault_point(stage: str, part: str) -> None:
    """Kill this process with SIGKILL if the fault hook names this stage (tests only)."""
    wanted = os.environ.get(FAULT_ENV)
    if wanted and wanted in (stage, f"{stage}:{part}"):
        os.kill(os.getpid(), signal.SIGKILL)


#: Name of the lease file inside a staging (or freshly renamed) part group.
LEASE_FILE = ".nex-lease"
#: Test hook: ``NEX_STORE_PAUSE=<stage>:<part>:<file>`` holds the writer at that stage
#: until ``<file>`` exists (at most 300 s).
PAUSE_ENV = "NEX_STORE_PAUSE"


def pause_point(stage: str, part: str) -> None:
    """Wait while the pause hook names this stage and part (tests of concurrent writers)."""
    wanted = os.environ.get(PAUSE_ENV, "")
    prefix = f"{stage}:{part}:"
    if wanted.startswith(prefix):
        release = Path(wanted[len(prefix):])
        deadline = time.monotonic() + 300
        while not release.exists() and time.monotonic() < deadline:
            time.sleep(0.02)


class Lease:
    """A writer's claim on a folder: a lease file whose mtime a heartbeat thread refreshes.

    The file holds the writer's host name and process id, so a writer on the same host
    that died (even by SIGKILL) is recognised at once; otherwise a lease is live while
    its file was touched within ``seconds``. Follows the folder when it is renamed
    (:meth:`moved`).
    """

    def __init__(self, folder: Path, seconds: float) -> None:
        self.folder = folder
        self.seconds = float(seconds)
        self._stop = threading.Event()
        folder.mkdir(parents=True, exist_ok=False)
        (folder / LEASE_FILE).write_text(json.dumps(
            {"host": _host(), "pid": os.getpid(), "seconds": self.seconds}))
        self._thread = threading.Thread(target=self._beat, daemon=True, name="nex-lease")
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(max(self.seconds / 4, 0.05)):
            try:
                os.utime(self.folder / LEASE_FILE)
            except OSError:
                pass  # renamed just now, or removed with its folder

    def moved(self, folder: Path) -> None:
        self.folder = folder

    def release(self) -> None:
        """Stop the heartbeat and remove the lease file (the folder stays)."""
        self._stop.set()
        self._thread.join()
        try:
            (self.folder / LEASE_FILE).unlink()
        except OSError:
            pass


def _host() -> str:
    return socket.gethostname()


def lease_live(folder: Path, seconds: float) -> bool:
    """True while a writer may still use ``folder`` (see :class:`Lease`).

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
    holder = read_json(lease) or {}
    if holder.get("host") == _host() and isinstance(holder.get("pid"), int):
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return False  # the writer died on this host
        except PermissionError:
            pass
    return time.time() - stamp < seconds
