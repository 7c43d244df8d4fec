"""Small filesystem helpers of the store: exclusive creation, JSON nodes, sizes, fault hook."""

from __future__ import annotations

import json
import os
import signal
import uuid
from pathlib import Path

#: Test hook: ``NEX_STORE_FAULT=<stage>`` (or ``<stage>:<part>``) SIGKILLs the writing
#: process when ``write_part`` reaches that stage ("staging": half the arrays written,
#: "renamed": part group in place but its manifest not yet written).
FAULT_ENV = "NEX_STORE_FAULT"


def fault_point(stage: str, part: str) -> None:
    """Kill this process with SIGKILL if the fault hook names this stage (tests only)."""
    wanted = os.environ.get(FAULT_ENV)
    if wanted and wanted in (stage, f"{stage}:{part}"):
        os.kill(os.getpid(), signal.SIGKILL)


def json_bytes(payload: dict) -> bytes:
    return (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode()


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


def group_node(attributes: dict) -> bytes:
    """The ``zarr.json`` of a zarr v3 group with these attributes."""
    return json_bytes({"zarr_format": 3, "node_type": "group", "attributes": attributes})


def read_json(path: Path) -> dict | None:
    """A JSON object from a file, or None when missing or unreadable."""
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


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
