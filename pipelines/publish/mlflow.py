"""Publish to an MLflow model registry: on the registered model version of the scored
checkpoint, NEX / log-gap / calibration-set name as version tags, the same numbers (and the
baselines) as metrics on the run the version links to, and the tables as artifacts of that
run under ``nex/<calibration set>/<tables fingerprint[:16]>/``.

Nothing is written that is already there: tags and metrics are compared first, artifacts
are keyed by the tables' fingerprint, so publishing the same tables twice changes nothing.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from nex_transforms.errors import expected

from . import RESULT_METRICS, PublishError

#: Experiment of the runs created for versions that link to no run.
EXPERIMENT = "nex-scores"
TABLE_FILES = ("models.parquet", "responses.parquet", "neurons.parquet", "phases.parquet",
               "run.json")


def _client(tracking_uri: str | None):
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as err:  # pragma: no cover - the registry extra is installed in CI
        raise PublishError(expected("mlflow", "installed (pip install 'nex-pipeline[registry]')",
                                    str(err))) from None
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _text(value: float) -> str:
    return "nan" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else repr(float(value))


def parse_model_uri(uri: str) -> tuple[str, str]:
    """``(name, version)`` of ``models:/NAME/VERSION``."""
    match = re.fullmatch(r"models:/([^/]+)/(\d+)", uri)
    if not match:
        raise PublishError(expected("registered model version", "models:/NAME/VERSION", repr(uri)))
    return match.group(1), match.group(2)


def publish_mlflow(result: dict, tables: str | os.PathLike, model_uri: str,
                   tracking_uri: str | None = None) -> dict:
    """Publish one result row (see :func:`pipelines.publish.results_from_tables`) to the
    registered model version ``models:/NAME/VERSION``.

    Returns ``{"tags": n, "metrics": n, "artifacts": n, "run_id": id}``: the number of
    tags set, metrics logged and artifact folders uploaded by this call (all 0 when the
    same tables were published before).
    """
    client = _client(tracking_uri)
    name, version = parse_model_uri(model_uri)
    try:
        mv = client.get_model_version(name, version)
    except Exception as err:  # noqa: BLE001 - MLflow raises its own exception family
        raise PublishError(expected(f"registered model version {model_uri}",
                                    "one that exists in the registry",
                                    f"{type(err).__name__}: {str(err).splitlines()[0]}")) from None
    calset = result["calibration_set"]
    tags = {
        "nex": _text(result["nex"]),
        "nex_log_gap": _text(result["log_gap"]),
        "nex_calibration_set": calset,
        f"nex.{calset}": _text(result["nex"]),
        f"nex_log_gap.{calset}": _text(result["log_gap"]),
        f"nex_tables_fingerprint.{calset}": result["tables_fingerprint"],
    }
    run_id = mv.run_id or (mv.tags or {}).get("nex_run_id")
    changed_tags = 0
    if not run_id:
        experiment = client.get_experiment_by_name(EXPERIMENT)
        experiment_id = experiment.experiment_id if experiment else \
            client.create_experiment(EXPERIMENT)
        run = client.create_run(experiment_id, run_name=f"{name}-v{version}",
                                tags={"nex_model": name, "nex_version": str(version)})
        client.set_terminated(run.info.run_id)
        run_id = run.info.run_id
        tags["nex_run_id"] = run_id
    for key, value in tags.items():
        if (mv.tags or {}).get(key) != value:
            client.set_model_version_tag(name, version, key, value)
            changed_tags += 1
    metrics = {f"{m}.{calset}": float(result[m]) for m in RESULT_METRICS
               if result.get(m) is not None and math.isfinite(float(result[m]))}
    existing = client.get_run(run_id).data.metrics
    changed_metrics = 0
    for key, value in sorted(metrics.items()):
        if key not in existing or existing[key] != value:
            client.log_metric(run_id, key, value)
            changed_metrics += 1
    artifact_dir = f"nex/{calset}/{result['tables_fingerprint'][:16]}"
    present = {Path(a.path).name for a in client.list_artifacts(run_id, f"nex/{calset}")}
    uploaded = 0
    if Path(artifact_dir).name not in present:
        tables = Path(tables)
        for file in TABLE_FILES:
            path = tables / file
            if path.is_dir():
                client.log_artifacts(run_id, str(path), f"{artifact_dir}/{file}")
            elif path.is_file():
                client.log_artifact(run_id, str(path), artifact_dir)
        uploaded = 1
    return {"tags": changed_tags, "metrics": changed_metrics, "artifacts": uploaded,
            "run_id": run_id, "artifact_path": artifact_dir}


def registered_versions(name: str, tracking_uri: str | None = None) -> list:
    """The versions of a registered model, oldest first."""
    client = _client(tracking_uri)
    versions = client.search_model_versions(f"name='{name}'")
    return sorted(versions, key=lambda v: int(v.version))


def download_version(name: str, version: str, dest: str | os.PathLike,
                     tracking_uri: str | None = None) -> Path:
    """Download the artifacts of a model version (its model folder) into ``dest`` once:
    a completed download is marked by ``dest/.nex-downloaded``."""
    import shutil
    import uuid

    dest = Path(dest)
    if (dest / ".nex-downloaded").is_file():
        return dest
    client = _client(tracking_uri)
    mv = client.get_model_version(name, version)
    source = client.get_model_version_download_uri(name, version) or mv.source
    from mlflow.artifacts import download_artifacts

    staging = dest.parent / f".{dest.name}.download-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        local = Path(download_artifacts(artifact_uri=source, dst_path=str(staging),
                                        tracking_uri=tracking_uri))
        folder = local if (local / "config.json").exists() else next(
            (p.parent for p in local.rglob("config.json")), local)
        if dest.exists():
            shutil.rmtree(dest)
        folder.rename(dest)
        (dest / ".nex-downloaded").write_text(f"{name}/{version}\n")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


__all__ = ["EXPERIMENT", "download_version", "parse_model_uri", "publish_mlflow",
           "registered_versions"]
