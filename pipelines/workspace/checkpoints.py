"""Checkpoints: a model folder, whether it is completely written, and its content hash."""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..catalog import slug
from ..crashsafe import atomic_write_json

#: Files of a model folder that are not part of its content hash (the model card is
#: rewritten by the Hugging Face publisher; hidden files are tool state).
UNHASHED = ("README.md",)
#: Seconds without any change after which a folder missing weights counts as broken
#: rather than still being written.
SETTLE_SECONDS = 5.0
PARTIAL_SUFFIXES = (".tmp", ".part", ".incomplete", ".lock")


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint to score: a Hugging Face model folder, its content hash, and where it
    came from (``source``: ``{"kind": "directory"}`` or ``{"kind": "mlflow", "name",
    "version", "tracking_uri"}``)."""

    name: str
    path: str
    content_hash: str
    source: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{slug(self.name)}-{self.content_hash[:12]}"


def model_files(folder: Path) -> list[Path]:
    """The files that make a checkpoint: a GGUF folder (no config.json) is its .gguf files,
    a Hugging Face folder every file but hidden ones and the model card."""
    if not (folder / "config.json").is_file():
        ggufs = sorted(p for p in folder.glob("*.gguf") if p.is_file())
        if ggufs:
            return ggufs
    files = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or rel.as_posix() in UNHASHED:
            continue
        if path.is_file():
            files.append(path)
    return files


def content_hash(folder: str | os.PathLike) -> str:
    """SHA-256 over the relative paths and bytes of a model folder's files (hidden files
    and the model card ``README.md`` left out): equal hashes mean the same checkpoint,
    whatever its folder or registry name."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in model_files(folder):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def checkpoint_state(folder: str | os.PathLike, settle_seconds: float = SETTLE_SECONDS,
                     now: float | None = None) -> tuple[str, str]:
    """``("ready" | "pending" | "broken", why)`` for a model folder.

    Ready: one ``.gguf`` file without ``config.json``, or ``config.json`` and complete
    weights (every shard named in a ``*.safetensors.index.json``, else at least one
    ``.safetensors``/``.bin`` file), no temporary files, and nothing changed for
    ``settle_seconds``. Pending: still being written (recent changes, temporary files, or
    weights missing but the folder recent). Broken: weights missing or incomplete in a
    folder unchanged for ``settle_seconds``.
    """
    folder = Path(folder)
    now = time.time() if now is None else now
    if not folder.is_dir():
        return "broken", f"expected a model folder, got {'a file' if folder.exists() else 'none'}"
    entries = list(folder.rglob("*"))
    newest = max([folder.stat().st_mtime] + [p.stat().st_mtime for p in entries if p.exists()])
    recent = now - newest < settle_seconds
    partial = [p.name for p in entries if p.name.endswith(PARTIAL_SUFFIXES)]
    if partial:
        return "pending", f"files still being written: {partial[:3]}"
    problem = None
    ggufs = sorted(folder.glob("*.gguf"))
    if not (folder / "config.json").is_file() and len(ggufs) == 1:
        pass  # a GGUF checkpoint: the one file holds config and weights
    elif not (folder / "config.json").is_file():
        problem = ("expected config.json (or one .gguf file), got "
                   + (f"{len(ggufs)} .gguf files" if ggufs else "none"))
    else:
        indexes = sorted(folder.glob("*.safetensors.index.json")) + \
            sorted(folder.glob("*.bin.index.json"))
        if indexes:
            try:
                shards = set(json.loads(indexes[0].read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                shards, problem = set(), f"expected a readable weight index {indexes[0].name}"
            missing = sorted(s for s in shards if not (folder / s).is_file())
            if missing and problem is None:
                problem = (f"weight shards: expected all {len(shards)} listed in "
                           f"{indexes[0].name}, got {len(missing)} missing ({missing[:3]})")
        elif not any(p.suffix in (".safetensors", ".bin", ".gguf") for p in folder.iterdir()):
            problem = "weights: expected a .safetensors, .bin or .gguf file, got none"
    if problem:
        return ("pending", problem + " (folder changed recently)") if recent else ("broken", problem)
    if recent:
        return "pending", f"changed less than {settle_seconds:g} s ago"
    return "ready", "complete"


def directory_checkpoint(folder: str | os.PathLike) -> Checkpoint:
    """A ready model folder as a :class:`Checkpoint` (name: the folder name)."""
    folder = Path(folder).absolute()
    return Checkpoint(folder.name, str(folder), content_hash(folder), {"kind": "directory"})


def hash_signature(folder: Path) -> list:
    """Names, sizes and modification times of a checkpoint's files."""
    return [(p.relative_to(folder).as_posix(), p.stat().st_size, p.stat().st_mtime_ns)
            for p in model_files(folder)]


def cached_content_hash(root: str | os.PathLike, folder: str | os.PathLike) -> str:
    """:func:`content_hash` of a folder, remembered under the workspace ``root``
    (``hashes/``) against the files' names, sizes and modification times: a scan does not
    re-read unchanged weights."""
    folder = Path(folder).absolute()
    cache = Path(root) / "hashes" / f"{hashlib.sha256(str(folder).encode()).hexdigest()[:24]}.json"
    signature = hash_signature(folder)
    try:
        saved = json.loads(cache.read_text())
        if saved["signature"] == json.loads(json.dumps(signature)):
            return saved["hash"]
    except (OSError, ValueError, KeyError):
        pass
    digest = content_hash(folder)
    atomic_write_json(cache, {"folder": str(folder), "signature": signature, "hash": digest})
    return digest


def failure_key(folder: str | os.PathLike) -> str:
    """Key of a folder that is not a usable checkpoint: its path and its files' names,
    sizes and times (a changed folder is tried again)."""
    folder = Path(folder).absolute()
    try:
        signature = hash_signature(folder)
    except OSError:
        signature = []
    digest = hashlib.sha256(json.dumps([str(folder), signature]).encode()).hexdigest()
    return f"{slug(folder.name)}-broken-{digest[:12]}"


__all__ = ["Checkpoint", "SETTLE_SECONDS", "UNHASHED", "cached_content_hash", "checkpoint_state",
           "content_hash", "directory_checkpoint", "failure_key", "hash_signature", "model_files"]
