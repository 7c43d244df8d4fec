"""Benchmark: peak memory and time per trace of the neuron-contexts job at two store sizes.

The job ``nex explore`` runs for its neuron pages (``pipelines.engines.contexts``): for
100 neurons per model (50 + 50, as ``nex explore`` picks by default; here random keys
of the synthetic key space, since the job's work does not depend on which), the top 20
rows of each across the whole store. It runs on the synthetic stores of
``bench_scale.py`` (N and 4N traces, 10,000 and 40,000 by default, about 1,200 row
entries a trace; built once into the cache folder and shared with that benchmark), each
in a child process whose peak resident set size comes from the kernel (``os.wait4``:
the whole process, imports included). A third child plans the same run with no neuron
to look for, per size (it reads no unit): the floor of imports and planning, which holds
the manifest and the work units (they grow with the traces, as in ``nex score``). Each
size runs ``--repeat`` times alternately (best time, highest peak kept). Prints every run
and the ratios last:

* peak memory at 4N / peak memory at N (target <= 1.3x: memory must not grow with the
  number of traces, only with neurons x contexts), and the same for the memory above
  each size's floor (what the streaming pass itself holds);
* time per trace at 4N / time per trace at N (target <= 1.3x).

    .venv/bin/python benchmarks/bench_contexts.py [--traces 10000] [--factor 4]
        [--engine local] [--repeat 2] [--cache DIR] [--json]
"""

from __future__ import annotations

from _shared import REPO, add_cache_argument, warn_if_loaded

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from bench_scale import build_in_child  # noqa: E402

sys.path.insert(0, str(REPO))

#: The job in a child process: argv = store, out folder, engine, neurons (JSON), per neuron.
CHILD = """
import json, sys
from pipelines.engines.contexts import ContextsJob, run_contexts
store, out, engine, neurons, per_neuron = sys.argv[1:6]
job = ContextsJob(store=store, neurons=tuple(tuple(n) for n in json.loads(neurons)),
                  per_neuron=int(per_neuron))
summary = run_contexts(engine, job, out, {"workers": 1} if engine == "dask" else None)
print(json.dumps({k: summary[k] for k in ("n_traces", "n_units", "seconds")}))
"""


def neurons_of(models: tuple, per_model: int, seed: int) -> list:
    """``per_model`` random keys per model of the synthetic stores' key space (16 layers
    of 2,048 units), as sorted (model, key) pairs."""
    import numpy as np

    rng = np.random.default_rng(seed)
    pairs = set()
    for model in models:
        while sum(1 for m, _ in pairs if m == model) < per_model:
            pairs.add((model, int(rng.integers(0, 16)) << 16 | int(rng.integers(0, 2048))))
    return sorted(pairs)


def run_once(store: Path, out: Path, engine: str, neurons: list, per_neuron: int) -> dict:
    """The job in a child process: its wall time, peak RSS (bytes) and summary."""
    out.mkdir(parents=True)
    argv = [sys.executable, "-c", CHILD, str(store), str(out), engine, json.dumps(neurons),
            str(per_neuron)]
    start = time.perf_counter()
    child = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    stdout, stderr = child.stdout.read().decode(), child.stderr.read().decode(errors="replace")
    child.stdout.close()
    child.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"contexts job failed: {stderr.strip()[-2000:]}")
    peak = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return {"seconds": seconds, "peak_bytes": peak, **json.loads(stdout.strip().splitlines()[-1])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=10000)
    parser.add_argument("--factor", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--engine", default="local", choices=("local", "beam", "dask"))
    parser.add_argument("--neurons", type=int, default=100, help="neurons per model")
    parser.add_argument("--contexts", type=int, default=20, help="rows kept per neuron")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print the results as JSON last")
    add_cache_argument(parser)
    args = parser.parse_args(argv)
    cache = Path(args.cache)
    sizes = (args.traces, args.traces * args.factor)
    stores = {n: build_in_child(cache, n, args.seed) for n in sizes}
    neurons = neurons_of(("model-a", "model-b"), args.neurons, args.seed)
    warn_if_loaded("the time ratio")
    results: dict = {n: [] for n in sizes}
    out_root = Path(tempfile.mkdtemp(prefix="nex-bench-contexts-"))
    try:
        floor = {}
        for n in sizes:
            floor[n] = run_once(stores[n], out_root / f"floor-{n}", args.engine, [],
                                args.contexts)["peak_bytes"]
            print(f"{n:>7} traces  floor (imports + plan, no unit read): peak RSS "
                  f"{floor[n] / 2**20:8.1f} MiB", flush=True)
        for attempt in range(args.repeat):
            for n in sizes:
                result = run_once(stores[n], out_root / f"{n}-{attempt}", args.engine, neurons,
                                  args.contexts)
                results[n].append(result)
                print(f"{n:>7} traces  {result['n_units']:4d} units  {result['seconds']:7.2f} s  "
                      f"{1e3 * result['seconds'] / result['n_traces']:.3f} ms/trace  "
                      f"peak RSS {result['peak_bytes'] / 2**20:8.1f} MiB", flush=True)
    finally:
        shutil.rmtree(out_root, ignore_errors=True)
    small, large = sizes
    peak = {n: max(r["peak_bytes"] for r in results[n]) for n in sizes}
    per_trace = {n: min(r["seconds"] for r in results[n]) / n for n in sizes}
    print(f"load average after the runs: {os.getloadavg()[0]:.2f}")
    print(f"ratios, {large} vs {small} traces ({args.engine} engine, {len(neurons)} neurons x "
          f"{args.contexts} contexts, whole process):")
    above = {n: peak[n] - floor[n] for n in sizes}
    print(f"  peak memory: {peak[large] / peak[small]:.2f}x "
          f"({peak[small] / 2**20:.0f} -> {peak[large] / 2**20:.0f} MiB; target <= 1.3x)")
    print(f"  peak memory above the floor: {above[large] / max(above[small], 1):.2f}x "
          f"({above[small] / 2**20:.0f} -> {above[large] / 2**20:.0f} MiB; floors "
          f"{floor[small] / 2**20:.0f} -> {floor[large] / 2**20:.0f} MiB)")
    print(f"  time per trace: {per_trace[large] / per_trace[small]:.2f}x "
          f"({1e3 * per_trace[small]:.3f} -> {1e3 * per_trace[large]:.3f} ms; "
          "target <= 1.3x)")
    if args.json:
        print(json.dumps({"sizes": list(sizes), "peak_bytes": {str(n): peak[n] for n in sizes},
                          "seconds_per_trace": {str(n): per_trace[n] for n in sizes},
                          "floor_peak_bytes": {str(n): floor[n] for n in sizes}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
