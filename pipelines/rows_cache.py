"""The published row-cache layout (METHOD.md section 7): read and write.

A directory of raw little-endian arrays::

    rows/sample_row_ptr.int64   response r owns rows [p[r], p[r+1])
    rows/row_ptr.int64          row i owns entries [p[i], p[i+1])
    rows/token_row_ptr.int64    row i covers tokens [p[i], p[i+1])
    rows/keys.uint32            packed keys
    rows/w_sum.float16          masses
    base/row_ptr.int64          one row per response: its aggregate
    base/keys.uint32
    base/w_sum.float16

``base/`` is optional on read (the aggregate is then summed from the rows).
"""

from __future__ import annotations

import mmap
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from nex_transforms import Aggregates, CorpusError, RowCorpus
from nex_transforms.errors import expected

ROW_FILES = {
    "sample_row_ptr": ("rows/sample_row_ptr.int64", "<i8"),
    "row_ptr": ("rows/row_ptr.int64", "<i8"),
    "token_row_ptr": ("rows/token_row_ptr.int64", "<i8"),
    "keys": ("rows/keys.uint32", "<u4"),
    "w_sum": ("rows/w_sum.float16", "<f2"),
}
BASE_FILES = {
    "row_ptr": ("base/row_ptr.int64", "<i8"),
    "keys": ("base/keys.uint32", "<u4"),
    "w_sum": ("base/w_sum.float16", "<f2"),
}


def _read(root: Path, rel: str, dtype: str) -> np.ndarray:
    path = root / rel
    if not path.is_file():
        raise CorpusError(expected(f"row cache {root}", f"a file {rel}", "none"))
    size = path.stat().st_size
    itemsize = np.dtype(dtype).itemsize
    if size % itemsize:
        raise CorpusError(expected(f"row cache file {path}",
                                   f"a multiple of {itemsize} bytes", f"{size} bytes"))
    if size == 0:
        return np.zeros(0, dtype=dtype)
    # Mapped, not copied: no copy and no fresh allocation. The arrays are read-only views
    # of the file.
    with open(path, "rb") as handle:
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    return np.frombuffer(mapped, dtype=dtype)


def read_rows_cache(path: str | os.PathLike, require_traces: bool = True) -> RowCorpus:
    """Read and validate a row cache; raises :class:`CorpusError` naming the problem.

    The arrays are read-only memory maps of the cache's files, which must not be changed
    while the corpus is in use.
    """
    root = Path(path)
    if not root.is_dir():
        raise CorpusError(expected("row cache", "a directory with rows/ and base/", str(root)))
    rows = {name: _read(root, rel, dt) for name, (rel, dt) in ROW_FILES.items()}
    token_ptr = rows["token_row_ptr"]
    if token_ptr.size != rows["row_ptr"].size:
        raise CorpusError(expected(f"{root}/rows/token_row_ptr.int64",
                                   f"{rows['row_ptr'].size} values (one per row + 1)",
                                   token_ptr.size))
    if token_ptr.size and token_ptr[0] != 0:
        raise CorpusError(expected(f"{root}/rows/token_row_ptr.int64[0]", "0",
                                   int(token_ptr[0])))
    if token_ptr.size > 1 and np.diff(token_ptr).min() < 0:
        raise CorpusError(expected(f"{root}/rows/token_row_ptr.int64", "non-decreasing values",
                                   "a decrease"))
    aggregates = None
    if (root / "base").exists():
        base = {name: _read(root, rel, dt) for name, (rel, dt) in BASE_FILES.items()}
        try:
            aggregates = Aggregates(base["row_ptr"], base["keys"], base["w_sum"])
        except CorpusError as err:
            raise CorpusError(f"{root}/base: {err}") from None
    try:
        corpus = RowCorpus(
            trace_row_ptr=rows["sample_row_ptr"],
            row_entry_ptr=rows["row_ptr"],
            row_tokens=np.diff(token_ptr),
            keys=rows["keys"],
            masses=rows["w_sum"],
            aggregates=aggregates,
        )
    except CorpusError as err:
        raise CorpusError(f"{root}/rows: {err}") from None
    if require_traces and corpus.n_traces == 0:
        raise CorpusError(expected(f"row cache {root}", "at least one response", "an empty cache"))
    return corpus


def write_rows_cache(corpus: RowCorpus, path: str | os.PathLike) -> Path:
    """Write a corpus in the row-cache layout, atomically (a temp dir renamed into place).

    Masses are stored as float16 as the layout requires. Refuses to overwrite an existing
    directory.
    """
    root = Path(path)
    if root.exists():
        raise CorpusError(expected("row cache output", "a path that does not exist yet",
                                   str(root)))
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        (tmp / "rows").mkdir()
        (tmp / "base").mkdir()
        token_ptr = np.concatenate([[0], np.cumsum(corpus.row_tokens)])
        arrays = {
            ROW_FILES["sample_row_ptr"][0]: corpus.trace_row_ptr.astype("<i8"),
            ROW_FILES["row_ptr"][0]: corpus.row_entry_ptr.astype("<i8"),
            ROW_FILES["token_row_ptr"][0]: token_ptr.astype("<i8"),
            ROW_FILES["keys"][0]: corpus.keys.astype("<u4"),
            ROW_FILES["w_sum"][0]: corpus.masses.astype("<f2"),
        }
        agg = corpus.aggregate()
        arrays[BASE_FILES["row_ptr"][0]] = agg.row_ptr.astype("<i8")
        arrays[BASE_FILES["keys"][0]] = agg.keys.astype("<u4")
        arrays[BASE_FILES["w_sum"][0]] = agg.masses.astype("<f2")
        for rel, array in arrays.items():
            array.tofile(tmp / rel)
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
