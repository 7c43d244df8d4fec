"""Benchmark: the scoring engines on one synthetic store (10,000 traces by default).

Times, end to end on the same store (built once into a cache folder): the in-process core
(plan + analyse/merge/score loop, statistics spilled, no tables), the local engine (with tables), Beam on its
embedded in-process runner, Dask with one worker and with two workers (local clusters,
start-up included) and again on a standing local cluster (start-up excluded), each timed
``--repeat`` times (best of 3 by default). Prints traces/s per
engine, checks every engine gives the local engine's scores, and prints the ratios last. Targets on a 2-core machine: Dask 2 workers
>= 1.6x Dask 1 worker; each engine's time <= 1.5x the in-process core at one worker.

    .venv/bin/python benchmarks/bench_engines.py [--traces 10000] [--repeat 2] [--cache DIR]

The store (124 M row entries, ~0.6 GB) is built once (about 100 s) into ``--cache``
(default ``$NEX_BENCH_CACHE`` or ``/tmp/nex-bench-cache``); a run then takes ~1.5 min.
"""

from __future__ import annotations

# One worker = one core: no BLAS/OpenMP threads, and zarr decodes chunks on one thread
# (its default thread pool would let the in-process core and a one-worker cluster use
# both cores while reading, which hides the cost of a second worker). Worker processes
# inherit these variables, which _shared sets on import.
from _shared import REPO, add_cache_argument, cached_store, warn_if_loaded

import argparse  # noqa: E402
import contextlib  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(REPO))

from pipelines import tables  # noqa: E402
from pipelines.engines import run_engine  # noqa: E402
from pipelines.engines.plan import DEFAULT_BATCH_ENTRIES, ScoreConfig, plan_run  # noqa: E402
from pipelines.engines.local import compute  # noqa: E402


def build_store(cache: Path, n_traces: int, seed: int) -> Path:
    """The benchmark store, built once per (traces, seed) into ``cache``."""
    return cached_store(cache, "engines-store", n_traces, seed, traces_per_part=250,
                        min_rows=20, max_rows=70, keys_per_row=300, n_layers=24,
                        units_per_layer=4096)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    add_cache_argument(parser)
    parser.add_argument("--batch-entries", type=int, default=DEFAULT_BATCH_ENTRIES)
    parser.add_argument("--skip", nargs="*", default=[],
                        help="engines to skip (local, beam, dask; 'warm' skips the standing-"
                             "cluster Dask runs)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="time each engine (and the core) this many times, keep the best")
    args = parser.parse_args(argv)
    store = build_store(Path(args.cache), args.traces, args.seed)
    for path in store.rglob("*"):  # warm the page cache so the first engine pays no I/O
        if path.is_file():
            path.read_bytes()
    warn_if_loaded("the ratios")
    config = ScoreConfig(store=str(store), batch_entries=args.batch_entries)
    plan = plan_run(config)
    print(f"store: {plan.n_traces} traces, {plan.store_summary['entries']:,} entries, "
          f"{plan.store_summary['parts']} parts, {len(plan.units)} units, "
          f"{os.cpu_count()} CPUs")

    out_root = Path(tempfile.mkdtemp(prefix="nex-bench-engines-"))
    seconds: dict[str, float] = {}
    try:
        times = []
        for _ in range(args.repeat):  # steady state: the first pass grows the heap
            start = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="nex-spill-") as spill:
                _, _, rows = compute(plan_run(config), Path(spill))
                for _ in rows:  # scoring runs as the rows are consumed
                    pass
            times.append(time.perf_counter() - start)
        seconds["core"] = min(times)
        print(f"{'core (in-process)':<24} {seconds['core']:7.2f} s "
              f"{plan.n_traces / seconds['core']:9.1f} traces/s", flush=True)
        runs = [("local", "local", {}), ("beam", "beam", {"pipeline_args": []}),
                ("dask-1", "dask", {"workers": 1}), ("dask-2", "dask", {"workers": 2})]
        reference = None
        for label, engine, options in runs:
            if label in args.skip or engine in args.skip:
                continue
            times = []
            for attempt in range(args.repeat):
                out = out_root / f"{label}-{attempt}"
                start = time.perf_counter()
                run_engine(engine, config, out, dict(options))
                times.append(time.perf_counter() - start)
            seconds[label] = min(times)
            gmf = tables.read_table(out, "responses")["gmf"].to_numpy()
            if reference is None:
                reference = gmf
            diff = float(np.nanmax(np.abs(gmf - reference)))
            print(f"{label:<24} {seconds[label]:7.2f} s "
                  f"{plan.n_traces / seconds[label]:9.1f} traces/s   max |dGMF| {diff:.1e}",
                  flush=True)
        if "warm" not in args.skip and "dask" not in args.skip:
            # A standing cluster (how a platform team runs Dask): start-up excluded.
            for workers in (1, 2):
                label = f"dask-{workers} warm"
                with _warm_cluster(workers) as address:
                    times = []
                    for attempt in range(args.repeat):
                        out = out_root / f"warm-{workers}-{attempt}"
                        start = time.perf_counter()
                        run_engine("dask", config, out, {"scheduler": address})
                        times.append(time.perf_counter() - start)
                seconds[label] = min(times)
                gmf = tables.read_table(out, "responses")["gmf"].to_numpy()
                diff = float(np.nanmax(np.abs(gmf - reference))) if reference is not None \
                    else 0.0
                print(f"{label:<24} {seconds[label]:7.2f} s "
                      f"{plan.n_traces / seconds[label]:9.1f} traces/s   max |dGMF| {diff:.1e}",
                      flush=True)
    finally:
        shutil.rmtree(out_root, ignore_errors=True)

    print(f"load average after the runs: {os.getloadavg()[0]:.2f}")
    print("ratios (cold: cluster/pipeline start-up included; warm: a standing cluster):")
    for label in ("local", "beam", "dask-1", "dask-1 warm"):
        if label in seconds:
            ratio = seconds[label] / seconds["core"]
            print(f"  {label} / core time: {ratio:.2f}x (target <= 1.5x)")
    for suffix in ("", " warm"):
        one, two = f"dask-1{suffix}", f"dask-2{suffix}"
        if one in seconds and two in seconds:
            speedup = seconds[one] / seconds[two]
            print(f"  dask 2 workers speed-up over 1 worker{suffix}: {speedup:.2f}x "
                  f"(target >= 1.6x)")
    return 0


@contextlib.contextmanager
def _warm_cluster(workers: int):
    """A local cluster started outside the timed region, configured like the engine's."""
    import dask
    from distributed import LocalCluster

    logging.getLogger("distributed").setLevel(logging.ERROR)
    environ = {k: v for k, v in dask.config.get("distributed.nanny.pre-spawn-environ").items()
               if k != "MALLOC_TRIM_THRESHOLD_"}
    environ.setdefault("ZARR_THREADING__MAX_WORKERS", "1")
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                          dashboard_address=":0", silence_logs=logging.CRITICAL) as cluster:
            yield cluster.scheduler_address


if __name__ == "__main__":
    sys.exit(main())
