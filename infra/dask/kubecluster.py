"""Start the Dask cluster of ``kubecluster.yaml`` from Python (dask-kubernetes operator)
and run ``nex score`` against it; the cluster is deleted afterwards.

    pip install dask-kubernetes
    python infra/dask/kubecluster.py /data/stores/acts.zarr /data/tables/run-001
"""

from __future__ import annotations

import sys

from dask_kubernetes.operator import KubeCluster, make_cluster_spec

from pipelines.cli import main

IMAGE = "registry.example.org/nex-pipeline:0.1.0"


def run(store: str, out: str, workers: int = 8) -> int:
    spec = make_cluster_spec(name="nex-dask", image=IMAGE, n_workers=workers,
                             resources={"requests": {"cpu": "1", "memory": "8Gi"},
                                        "limits": {"cpu": "1", "memory": "8Gi"}},
                             worker_command="dask worker --nthreads 1 --no-nanny")
    with KubeCluster(custom_cluster_spec=spec) as cluster:
        return main(["score", store, "--out", out, "--engine", "dask",
                     "--scheduler", cluster.scheduler_address])


if __name__ == "__main__":
    sys.exit(run(*sys.argv[1:3]))
