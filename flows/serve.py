"""The embedded deployments: ``nex flows serve WORKSPACE`` serves them from one process
(Prefect's runner: it polls the Prefect API and runs scheduled and triggered flow runs as
subprocesses). For separate GPU/CPU work pools use ``infra/prefect.yaml`` instead.
"""

from __future__ import annotations

from prefect.deployments.runner import EntrypointType

from flows.flows import capture_flow, score_checkpoint_flow, score_flow, watch_checkpoints_flow
from pipelines.workspace import (CLAIM_STALE_SECONDS, SETTLE_SECONDS, STALL_SECONDS,
                                 load_calibration_set)

DEFAULT_CRON = "*/15 * * * *"


def build_deployments(workspace: str, calibration_set: str = "gsm8k",
                      directories: list[str] | None = None,
                      mlflow_models: list[str] | None = None, tracking_uri: str | None = None,
                      publish_to: list[str] | None = None, cron: str | None = None,
                      interval: float | None = None,
                      settle_seconds: float = SETTLE_SECONDS,
                      claim_stale_seconds: float = CLAIM_STALE_SECONDS,
                      device: str | None = None, dtype: str | None = None,
                      capture_deployment: str | None = None,
                      score_deployment: str | None = None,
                      stall_seconds: float = STALL_SECONDS) -> list:
    """Runner deployments: ``watch-checkpoints/watch`` on a schedule (``cron``, default
    every 15 minutes, or every ``interval`` seconds), and on-demand ``score-checkpoint/
    embedded``, ``capture/embedded``, ``score/embedded`` with the workspace filled in.
    Capture parameters (``device``, ``dtype``) are passed on only when given."""
    load_calibration_set(calibration_set)  # a bad name fails here, not in every scheduled run
    if cron is None and interval is None:
        cron = DEFAULT_CRON
    common = dict(entrypoint_type=EntrypointType.MODULE_PATH)
    watch = watch_checkpoints_flow.to_deployment(
        "watch", cron=cron if interval is None else None, interval=interval,
        parameters={"workspace": workspace, "calibration_set": calibration_set,
                    "directories": list(directories or []),
                    "mlflow_models": list(mlflow_models or []), "tracking_uri": tracking_uri,
                    "publish_to": publish_to, "settle_seconds": settle_seconds,
                    "claim_stale_seconds": claim_stale_seconds, "stall_seconds": stall_seconds,
                    **{k: v for k, v in (("device", device), ("dtype", dtype),
                                         ("capture_deployment", capture_deployment),
                                         ("score_deployment", score_deployment))
                       if v is not None}},
        description="scan checkpoint sources and score every new checkpoint once",
        concurrency_limit=1, **common)
    fixed = {"workspace": workspace, "calibration_set": calibration_set}
    return [
        watch,
        score_checkpoint_flow.to_deployment(
            "embedded", parameters=dict(fixed, publish_to=publish_to, tracking_uri=tracking_uri),
            description="capture, score and publish one checkpoint", **common),
        capture_flow.to_deployment("embedded", parameters=fixed, **common),
        score_flow.to_deployment("embedded", parameters=fixed, **common),
    ]


def serve(workspace: str, **options) -> None:
    """Serve :func:`build_deployments` until interrupted."""
    from prefect import serve as prefect_serve

    prefect_serve(*build_deployments(workspace, **options), print_starting_message=True)


__all__ = ["DEFAULT_CRON", "build_deployments", "serve"]
