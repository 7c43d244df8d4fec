"""Test helper: change the stored values of a logical array of a part in place (through
the part's physical layout), as a corruption on disk would."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from pipelines.store.layout import sections


def edit_logical(part_dir: Path, name: str, change) -> str:
    """Apply ``change(values)`` (in place) to the logical array ``name`` of the part group
    at ``part_dir``; returns the physical array that holds it."""
    group = zarr.open_group(str(part_dir), mode="r+", use_consolidated=False)
    physical, offset, length = sections(dict(group.attrs))[name]
    array = group[physical]
    values = np.asarray(array[...])
    view = values[offset:offset + length]
    change(view)
    array[...] = values
    return physical
