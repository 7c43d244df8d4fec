"""Benchmark: peak memory and time per trace of ``nex score`` at two corpus sizes.

Scores a synthetic store of N and of 4N traces (10,000 and 40,000 by default, built once
into a cache folder) with ``nex score`` in a child process each, and reads the child's
peak resident set size from the kernel (``os.wait4`` rusage, ``ru_maxrss``: the whole
scoring process, imports included; this launcher stays small and builds the stores in
a child process of its own, since a forked child counts its parent's pages). Each size is run ``--repeat`` times alternately
(best time, highest peak kept). Prints both runs and the ratios last:

* peak memory at 4N / peak memory at N (target <= 1.3x: memory must not grow with the
  number of traces);
* time per trace at 4N / time per trace at N (target <= 1.3x).

    .venv/bin/python benchmarks/bench_scale.py [--traces 10000] [--factor 4]
        [--engine local] [--repeat 2] [--cache DIR]

With ``--engine dask`` the peak is the client process's (workers are separate processes).
The stores (about 12 M and 48 M row entries) are built once (about a minute) into
``--cache`` (default ``$NEX_BENCH_CACHE`` or ``/tmp/nex-bench-cache``).
"""

from __future__ import annotations

from _shared import REPO, add_cache_argument, cached_store, warn_if_loaded

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(REPO))


def build_store(cache: Path, n_traces: int, seed: int) -> Path:
    """A synthetic store of ``n_traces`` traces (about 1,200 row entries each), built
    once per (traces, seed) into ``cache``."""
    return cached_store(cache, "scale-store", n_traces, seed, traces_per_part=500,
                        min_rows=10, max_rows=30, keys_per_row=60, n_layers=16,
                        units_per_layer=2048)


def build_in_child(cache: Path, n_traces: int, seed: int) -> Path:
    """Build (or find) a store in a child process, so this process stays small: a child
    forked from a large parent would report the parent's pages in its own peak RSS."""
    code = ("import sys, runpy; sys.path[:0] = [sys.argv[1], sys.argv[1] + '/benchmarks']; "
            "mod = runpy.run_path(sys.argv[1] + '/benchmarks/bench_scale.py'); "
            "print(mod['build_store'](__import__('pathlib').Path(sys.argv[2]), "
            "int(sys.argv[3]), int(sys.argv[4])))")
    done = subprocess.run([sys.executable, "-c", code, str(REPO), str(cache), str(n_traces),
                           str(seed)], check=True, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    for line in lines[:-1]:
        print(line, flush=True)
    return Path(lines[-1])


def score_once(store: Path, out: Path, engine: str, extra: list[str]) -> dict:
    """Run ``nex score`` in a child process; its wall time and peak RSS (bytes)."""
    argv = [sys.executable, "-m", "pipelines", "score", str(store), "--out", str(out),
            "--engine", engine, *extra]
    start = time.perf_counter()
    child = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    err = child.stderr.read().decode(errors="replace")
    child.stderr.close()
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"nex score failed (exit {child.returncode}): {err.strip()[-2000:]}")
    peak = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    run = json.loads((out / "run.json").read_text())
    return {"seconds": seconds, "peak_bytes": peak, "n_traces": run["n_traces"],
            "n_units": run["n_units"], "total_s": run["timings"]["total_s"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=10000)
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engine", default="local", choices=("local", "beam", "dask"))
    parser.add_argument("--workers", type=int, default=None, help="dask local workers")
    parser.add_argument("--repeat", type=int, default=2)
    add_cache_argument(parser)
    args = parser.parse_args(argv)
    cache = Path(args.cache)
    sizes = (args.traces, args.traces * args.factor)
    stores = {n: build_in_child(cache, n, args.seed) for n in sizes}
    extra = ["--workers", str(args.workers)] if args.workers else []
    warn_if_loaded("the time ratio")
    results: dict[int, list[dict]] = {n: [] for n in sizes}
    out_root = Path(tempfile.mkdtemp(prefix="nex-bench-scale-"))
    try:
        for attempt in range(args.repeat):
            for n in sizes:
                out = out_root / f"{n}-{attempt}"
                result = score_once(stores[n], out, args.engine, extra)
                results[n].append(result)
                print(f"{n:>7} traces  {result['n_units']:4d} units  "
                      f"{result['seconds']:7.2f} s  "
                      f"{1e3 * result['seconds'] / result['n_traces']:.3f} ms/trace  "
                      f"peak RSS {result['peak_bytes'] / 2**20:8.1f} MiB", flush=True)
    finally:
        shutil.rmtree(out_root, ignore_errors=True)
    small, large = sizes
    peak = {n: max(r["peak_bytes"] for r in results[n]) for n in sizes}
    per_trace = {n: min(r["seconds"] for r in results[n]) / n for n in sizes}
    print(f"load average after the runs: {os.getloadavg()[0]:.2f}")
    print(f"ratios, {large} vs {small} traces ({args.engine} engine, whole process):")
    print(f"  peak memory: {peak[large] / peak[small]:.2f}x "
          f"({peak[small] / 2**20:.0f} -> {peak[large] / 2**20:.0f} MiB; target <= 1.3x)")
    print(f"  time per trace: {per_trace[large] / per_trace[small]:.2f}x "
          f"({1e3 * per_trace[small]:.3f} -> {1e3 * per_trace[large]:.3f} ms; "
          "target <= 1.3x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
