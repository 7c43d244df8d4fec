"""Score tables: atomic output. A run's tables are built in a hidden version folder and
published by one ``rename(2)`` of a link (or, on object storage, by writing the pointer
object last); leftovers of crashed publishes are removed once their writer is gone.
``run.json`` records the run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import tempfile
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from ..store.fs import is_url
from ..versions import package_versions
from .io import _remote, _remote_version, table_path
from .schemas import POINTER, RUN_JSON, TABLE_NAMES, TABLES_SCHEMA_VERSION, TablesError

#: Test hook: ``NEX_TABLES_FAULT=<stage>`` SIGKILLs the scoring process when publishing
#: reaches that stage: ``written`` (every table and run.json complete, nothing published),
#: ``linked`` (the new link made beside ``--out``, not yet swapped in), ``swapped`` (the
#: new tables published, the previous version not yet removed).
FAULT_ENV = "NEX_TABLES_FAULT"
#: Leftovers of a publish by a process on another host count as abandoned after this long.
STALE_SECONDS = 24 * 3600
#: The packages whose versions run.json records: those that shape the scores and the tables.
TABLES_PACKAGES = ("nex-pipeline", "numpy", "pyarrow", "zarr", "apache-beam", "dask",
                   "distributed")


def _fault_point(stage: str) -> None:
    if os.environ.get(FAULT_ENV) == stage:
        os.kill(os.getpid(), signal.SIGKILL)


def _is_previous_output(path: Path) -> bool:
    return (path / RUN_JSON).is_file()


def _version_prefix(out: Path) -> str:
    return f".{out.name}.v-"


def _owner_path(version: Path) -> Path:
    return version.parent / f"{version.name}.owner"


def _writer_alive(info: dict, modified) -> bool:
    """Whether the writer an owner record ``info`` names may still be running: on this
    host, a live pid; on another host, an owner file modified (``modified()``, seconds
    since the epoch, None when unknown) within STALE_SECONDS."""
    if info.get("host") != socket.gethostname():
        stamp = modified()
        return stamp is None or time.time() - stamp < STALE_SECONDS
    try:
        os.kill(int(info.get("pid", -1)), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True
    return True


def _owner_alive(owner: Path) -> bool:
    """Whether the process that wrote ``owner`` (a staging folder's owner file) may still
    be running: same host and a live pid, or another host and a recent file."""
    try:
        info = json.loads(owner.read_text())
    except (OSError, ValueError):
        return False

    def modified():
        try:
            return owner.stat().st_mtime
        except OSError:
            return 0.0  # gone: not alive
    return _writer_alive(info, modified)


def _current_version(out: Path) -> str | None:
    """Name of the version folder ``out`` links to (None when ``out`` is not a link)."""
    try:
        return os.readlink(out) if out.is_symlink() else None
    except OSError:
        return None


def clean_leftovers(out: str | os.PathLike) -> list[str]:
    """Remove what crashed publishes of ``out`` left beside it: version folders that
    ``out`` does not link to and whose writer is gone, temporary links, and folders of
    the earlier two-rename layout. Returns the names removed."""
    out = Path(out).absolute()
    if not out.parent.is_dir():
        return []
    current = _current_version(out)
    prefix = _version_prefix(out)
    removed = []
    for entry in sorted(out.parent.iterdir()):
        name = entry.name
        if not name.startswith(f".{out.name}."):
            continue
        if name.startswith(prefix) and not name.endswith(".owner"):
            if name == current or _owner_alive(_owner_path(entry)):
                continue
            shutil.rmtree(entry, ignore_errors=True)
            _owner_path(entry).unlink(missing_ok=True)
        elif name.startswith(prefix) and name.endswith(".owner"):
            if (out.parent / name[:-len(".owner")]).exists():
                continue
            entry.unlink(missing_ok=True)
        elif name.startswith(f".{out.name}.link-") and entry.is_symlink():
            if _owner_alive(out.parent / f"{prefix}{name.rsplit('-', 1)[-1]}.owner"):
                continue
            entry.unlink(missing_ok=True)
        elif name.startswith((f".{out.name}.staging-", f".{out.name}.old-")) and \
                entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)  # the two-rename layout (no owner)
        else:
            continue
        removed.append(name)
    return removed


@contextmanager
def staged_output(out: str | os.PathLike, storage_options: dict | None = None):
    """Yield a fresh version folder beside ``out``; on success publish it as ``out``.

    ``out`` becomes a symbolic link to a hidden sibling version folder
    (``.OUT.v-TOKEN``); publishing is one ``rename(2)`` of a new link over ``out``, so at
    every instant ``out`` holds either the previous tables or the new ones, complete
    (readers open files through the link). ``out`` must be absent, empty, or an earlier
    tables folder or link (it has a ``run.json``); anything else is refused so no
    unrelated folder is replaced. On error the version folder is removed and ``out`` is
    left as it was. Leftovers of crashed publishes are removed after a publish.

    ``out`` may be an object-storage URL (``s3://bucket/prefix``, any fsspec URL): the
    tables are staged in a local temporary folder, uploaded under ``prefix/v-TOKEN/``, and
    published by writing the small pointer object :data:`POINTER` last (one PUT), which
    readers follow (:func:`read_table`, :func:`read_run`).
    """
    if is_url(out):
        with _remote_staged_output(str(out), storage_options) as staging:
            yield staging
        return
    out = Path(out).absolute()
    if out.is_symlink() and not out.exists():
        pass  # a dangling link: replaced
    elif out.exists():
        if not out.is_dir():
            raise TablesError(f"--out: expected a folder, got a file {out}")
        if any(out.iterdir()) and not _is_previous_output(out):
            raise TablesError(f"--out {out}: expected a new, empty or earlier tables folder "
                              f"(with {RUN_JSON}), got a folder holding other files")
    out.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:12]
    staging = out.parent / f"{_version_prefix(out)}{token}"
    owner = _owner_path(staging)
    owner.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    try:
        staging.mkdir()
        yield staging
        _publish(staging, out, token)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        owner.unlink(missing_ok=True)
        raise
    owner.unlink(missing_ok=True)
    clean_leftovers(out)


@contextmanager
def _remote_staged_output(url: str, storage_options: dict | None):
    fs, root = _remote(url, storage_options)
    fs.invalidate_cache()
    try:
        exists = fs.exists(root)
        entries = fs.ls(root, detail=False) if exists and fs.isdir(root) else []
        has_pointer = fs.exists(f"{root}/{POINTER}")
    except (OSError, ValueError) as err:
        raise TablesError(f"--out {url}: expected reachable object storage, got "
                          f"{type(err).__name__}: {err}") from None
    if entries and not has_pointer:
        raise TablesError(f"--out {url}: expected a new, empty or earlier tables prefix "
                          f"(with {POINTER}), got a prefix holding other objects")
    local = Path(tempfile.mkdtemp(prefix="nex-tables-"))
    try:
        yield local
        _remote_publish(fs, root, url, local)
    finally:
        shutil.rmtree(local, ignore_errors=True)


def _remote_publish(fs, root: str, url: str, local: Path) -> None:
    """Upload ``local`` as a new version under ``root``, then point :data:`POINTER` at it
    (the single atomic step) and remove the previous version and stale leftovers."""
    token = uuid.uuid4().hex[:12]
    version = f"v-{token}"
    owner = f"{root}/{version}.owner"
    try:
        fs.pipe_file(owner, json.dumps({"host": socket.gethostname(),
                                        "pid": os.getpid()}).encode())
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            fs.put_file(str(path), f"{root}/{version}/{path.relative_to(local).as_posix()}")
        _fault_point("written")
        previous = None
        if fs.exists(f"{root}/{POINTER}"):
            previous = _remote_version(fs, root, url).rsplit("/", 1)[-1]
        fs.pipe_file(f"{root}/{POINTER}", json.dumps(
            {"version": version, "created_at": datetime.now(timezone.utc).isoformat()},
            sort_keys=True).encode())
    except TablesError:
        raise
    except (OSError, ValueError) as err:
        raise TablesError(f"--out {url}: expected the tables uploaded, got "
                          f"{type(err).__name__}: {err}") from None
    _fault_point("swapped")
    fs.rm_file(owner)
    fs.invalidate_cache()
    for entry in fs.ls(root, detail=False):
        name = entry.rstrip("/").rsplit("/", 1)[-1]
        if not name.startswith("v-") or name.endswith(".owner") or name == version:
            continue
        if name != previous and fs.exists(f"{root}/{name}.owner") and \
                _remote_owner_alive(fs, f"{root}/{name}.owner"):
            continue
        fs.rm(f"{root}/{name}", recursive=True)
        if fs.exists(f"{root}/{name}.owner"):
            fs.rm_file(f"{root}/{name}.owner")


def _remote_owner_alive(fs, owner: str) -> bool:
    """Whether an upload to object storage may still be running (see
    :func:`_owner_alive`)."""
    try:
        info = json.loads(fs.cat_file(owner))
    except (OSError, ValueError):
        return False

    def modified():
        try:
            return fs.modified(owner).timestamp()
        except (OSError, NotImplementedError, AttributeError, ValueError):
            return None  # unknown: assume alive
    return _writer_alive(info, modified)


def _publish(staging: Path, out: Path, token: str) -> None:
    """Swap ``out`` to the new version folder with one rename of a link, then remove the
    version it linked to before (only a version folder of ours)."""
    _fault_point("written")
    previous = _current_version(out)
    link = out.parent / f".{out.name}.link-{token}"
    os.symlink(staging.name, link)
    try:
        _fault_point("linked")
        if out.is_dir() and not out.is_symlink():
            # A plain folder (tables written before links were used, or empty): moved aside as an old
            # version first; a crash in between leaves the tables in that hidden folder.
            aside = out.parent / f"{_version_prefix(out)}{token}-previous"
            out.rename(aside)
            previous = aside.name
        os.replace(link, out)
    except BaseException:
        link.unlink(missing_ok=True)
        raise
    _fault_point("swapped")
    if previous and previous.startswith(_version_prefix(out)) and "/" not in previous:
        shutil.rmtree(out.parent / previous, ignore_errors=True)


def write_run_json(staging: Path, plan, engine: str, engine_info: dict, timings: dict) -> dict:
    """Write ``run.json`` (parameters, engine, versions, store fingerprint, timings)."""
    config = plan.config
    keys = sorted({config.key_of(m) for m in plan.models})
    tables = [n for n in TABLE_NAMES if table_path(staging, n).exists()]
    summary = {
        "tables_schema_version": TABLES_SCHEMA_VERSION,
        "created_at": datetime.now(timezone.utc).isoformat(),
        "engine": engine,
        "engine_info": engine_info,
        "params": config.params.to_dict(),
        "calibration": config.calibration,
        "calibration_keys": keys,
        "weights_file": config.weights_file,
        "phases": config.phases,
        "batch_entries": config.batch_entries,
        "n_units": len(plan.units),
        "n_traces": plan.n_traces,
        "models": list(plan.models),
        "store": plan.store_summary,
        "store_fingerprint": plan.fingerprint,
        "versions": package_versions(TABLES_PACKAGES),
        "timings": {k: round(float(v), 4) for k, v in timings.items()},
        "tables": tables,
    }
    text = json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n"
    (staging / RUN_JSON).write_text(text)
    return summary



__all__ = ["FAULT_ENV", "STALE_SECONDS", "clean_leftovers",
           "staged_output", "write_run_json"]
