"""Publish to an MLflow model registry: on the registered model version of the scored
checkpoint, the catalog columns of :data:`pipelines.catalog.PUBLISHED` as version tags and
as metrics on the run the version links to, and the tables as artifacts of that run under
``nex/<calibration set>/<tables fingerprint[:16]>/``.

Nothing is written that is already there: tags and metrics are compared first (each
metric's history holds one value), the artifact folder is keyed by the tables' fingerprint
and only its missing files are uploaded, so publishing the same tables twice changes
nothing and a publish cut off half-way is finished by the next one.

Credentials come from the environment only (``MLFLOW_TRACKING_USERNAME`` /
``MLFLOW_TRACKING_PASSWORD`` or ``MLFLOW_TRACKING_TOKEN``, read by the MLflow client): a
tracking URI with a user name or password in it is refused, so they never travel in flow
parameters or logs.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from urllib.parse import urlsplit

from nex_transforms.errors import expected

from ..catalog import published_metrics, published_tags
from ..crashsafe import replace_folder
from ..failures import BAD_INPUT, describe, failure_kind
from . import PublishError

#: Experiment of the runs created for versions that link to no run.
EXPERIMENT = "nex-scores"
TABLE_FILES = ("models.parquet", "responses.parquet", "neurons.parquet", "phases.parquet",
               "run.json")
#: The MLflow client's own retries inside flows: a few seconds per try instead of its
#: defaults (7 retries with a backoff factor of 2: minutes when the registry is down);
#: the flows' tasks and scans retry instead. Values a user set in the environment win.
FLOW_CLIENT_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
                       "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                       "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
                       "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def cap_client_retries() -> dict:
    """Set :data:`FLOW_CLIENT_RETRIES` in this process's environment where unset (flows
    call this). Returns the values in force."""
    for key, value in FLOW_CLIENT_RETRIES.items():
        os.environ.setdefault(key, value)
    return {key: os.environ[key] for key in FLOW_CLIENT_RETRIES}


def check_tracking_uri(uri: str | None) -> str | None:
    """``uri`` unchanged, unless it carries credentials: then a :class:`PublishError` that
    names the URI without them."""
    if uri and "://" in uri:
        parts = urlsplit(uri)
        if parts.username or parts.password:
            shown = parts._replace(netloc=f"***@{parts.hostname}"
                                   + (f":{parts.port}" if parts.port else "")).geturl()
            raise PublishError(expected(
                "tracking URI", "no user name or password in it (set MLFLOW_TRACKING_USERNAME "
                "and MLFLOW_TRACKING_PASSWORD in the environment)", shown))
    return uri


def _client(tracking_uri: str | None):
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as err:  # pragma: no cover - the registry extra is installed in CI
        raise PublishError(expected("mlflow", "installed (pip install 'nex-pipeline[registry]')",
                                    str(err))) from None
    check_tracking_uri(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


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

    Returns ``{"tags": n, "metrics": n, "artifacts": n, "run_id": id, "artifact_path"}``:
    the number of tags set, metrics logged and artifact files uploaded by this call (all 0
    when the same tables were published before). A version missing from the registry is a
    :class:`PublishError`; a registry that cannot be reached raises the client's own
    (transient) error.
    """
    client = _client(tracking_uri)
    name, version = parse_model_uri(model_uri)
    try:
        mv = client.get_model_version(name, version)
    except Exception as err:
        if failure_kind(err) != BAD_INPUT:
            raise  # the registry is unreachable or failing: worth trying again
        raise PublishError(expected(f"registered model version {model_uri}",
                                    "one that exists in the registry", describe(err))) from err
    tags = published_tags(result)
    run_id = mv.run_id or (mv.tags or {}).get("nex_run_id")
    if not run_id:
        experiment = client.get_experiment_by_name(EXPERIMENT)
        experiment_id = experiment.experiment_id if experiment else \
            client.create_experiment(EXPERIMENT)
        run = client.create_run(experiment_id, run_name=f"{name}-v{version}",
                                tags={"nex_model": name, "nex_version": str(version)})
        client.set_terminated(run.info.run_id)
        run_id = run.info.run_id
        client.set_model_version_tag(name, version, "nex_run_id", run_id)
    changed_tags = 0
    for key, value in tags.items():
        if (mv.tags or {}).get(key) != value:
            client.set_model_version_tag(name, version, key, value)
            changed_tags += 1
    existing = client.get_run(run_id).data.metrics
    missing = {k: v for k, v in sorted(published_metrics(result).items())
               if k not in existing or existing[k] != v}
    if missing:  # one request for all of them
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, v, stamp, 0) for k, v in missing.items()])
    calset = result["calibration_set"]
    artifact_dir = f"nex/{calset}/{result['tables_fingerprint'][:16]}"
    present = {Path(a.path).name for a in client.list_artifacts(run_id, artifact_dir)}
    uploaded = 0
    tables = Path(tables)
    for file in TABLE_FILES:
        path = tables / file
        if file in present or not path.exists():
            continue
        if path.is_dir():
            client.log_artifacts(run_id, str(path), f"{artifact_dir}/{file}")
        else:
            client.log_artifact(run_id, str(path), artifact_dir)
        uploaded += 1
    return {"tags": changed_tags, "metrics": len(missing), "artifacts": uploaded,
            "run_id": run_id, "artifact_path": artifact_dir}


def registered_versions(name: str, tracking_uri: str | None = None) -> list:
    """The versions of a registered model, oldest first."""
    client = _client(tracking_uri)
    versions = client.search_model_versions(f"name='{name}'")
    return sorted(versions, key=lambda v: int(v.version))


def download_version(name: str, version: str, dest: str | os.PathLike,
                     tracking_uri: str | None = None) -> Path:
    """Download the artifacts of a model version (its model folder) into ``dest`` once:
    a completed download is marked by ``dest/.nex-downloaded`` and swapped in whole."""
    dest = Path(dest)
    if (dest / ".nex-downloaded").is_file():
        return dest
    client = _client(tracking_uri)
    mv = client.get_model_version(name, version)
    source = client.get_model_version_download_uri(name, version) or mv.source
    from mlflow.artifacts import download_artifacts

    def build(staging: Path) -> None:
        fetched = staging / ".fetch"
        fetched.mkdir()
        local = Path(download_artifacts(artifact_uri=source, dst_path=str(fetched),
                                        tracking_uri=tracking_uri))
        folder = local if (local / "config.json").exists() else next(
            (p.parent for p in local.rglob("config.json")), local)
        for item in folder.iterdir():
            item.rename(staging / item.name)
        shutil.rmtree(fetched, ignore_errors=True)
        (staging / ".nex-downloaded").write_text(f"{name}/{version}\n")

    return replace_folder(dest, build)


__all__ = ["EXPERIMENT", "FLOW_CLIENT_RETRIES", "cap_client_retries", "check_tracking_uri",
           "download_version", "parse_model_uri", "publish_mlflow", "registered_versions"]
