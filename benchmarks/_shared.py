"""What the store benchmarks share: one thread per process and a cached synthetic store.

Import this module before numpy: it sets the thread variables at import time, so every
library that reads them (BLAS, OpenMP, blosc, zarr's chunk pool) and every child process
uses one thread, and one process measures one core.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
             "BLOSC_NTHREADS", "ZARR_THREADING__MAX_WORKERS"):
    os.environ.setdefault(_var, "1")

REPO = Path(__file__).resolve().parents[1]


def add_cache_argument(parser) -> None:
    """``--cache DIR``: where built stores are kept between runs."""
    parser.add_argument("--cache", default=os.environ.get(
        "NEX_BENCH_CACHE", str(Path(tempfile.gettempdir()) / "nex-bench-cache")),
        help="folder of built benchmark stores (default $NEX_BENCH_CACHE or "
             "/tmp/nex-bench-cache)")


def cached_store(cache: str | Path, name: str, n_traces: int, seed: int, **spec) -> Path:
    """A synthetic store (``pipelines.testing.stores.synthetic_store`` with ``spec``),
    built once per (name, store schema, traces, seed) into ``cache``.

    It is built in a temporary sibling and renamed into place, so a folder under its final
    name is always complete; a build killed half-way leaves only a ``.building-*`` folder.
    """
    from pipelines.testing.stores import synthetic_store
    from pipelines.store import SCHEMA_VERSION

    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{name}-schema{SCHEMA_VERSION}-{n_traces}-{seed}"
    if path.is_dir():
        return path
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=cache))
    start = time.perf_counter()
    try:
        synthetic_store(tmp / "store", n_traces=n_traces, models=("model-a", "model-b"),
                        seed=seed, **spec)
        (tmp / "store").rename(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"built {path} in {time.perf_counter() - start:.1f} s", flush=True)
    return path


def warn_if_loaded(what: str) -> None:
    """Say so when other processes already load the machine before the runs."""
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"warning: load average {load:.2f} before the runs; other processes compete "
              f"for the cores and {what} will be off", flush=True)
