"""Publishers: put a scored checkpoint's NEX, log-gap, baselines and tables where platform
teams look for them.

* :func:`~pipelines.publish.folder.publish_folder`: a plain folder (tables + catalog);
* :func:`~pipelines.publish.mlflow.publish_mlflow`: the registered model version of the
  checkpoint in an MLflow registry (version tags, metrics on its run, tables as artifacts);
* :func:`~pipelines.publish.huggingface.publish_huggingface`: the ``model-index`` results
  in a Hugging Face model folder's card.

Every publisher compares before it writes: publishing the same tables twice changes
nothing, and each returns how many things it changed. ``results_from_tables`` turns a
tables folder into the result rows the publishers take (a workspace's completion markers
are such rows already).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from nex_transforms import NexError
from nex_transforms.errors import expected

RESULT_METRICS = ("nex", "log_gap", "mean_entropy", "mean_self_certainty", "mean_token_logprob",
                  "deepconf_mean_confidence", "deepconf_lowest_group_confidence")


class PublishError(NexError):
    """A bad publish target or input."""


def results_from_tables(tables: str | os.PathLike, calibration_set: str = "default",
                        model_id: str | None = None) -> list[dict]:
    """One result row per model of a tables folder (the workspace catalog's columns that
    a tables folder alone can give)."""
    from ..tables import read_run, read_table
    from ..workspace import BASELINES, slug, tables_fingerprint

    tables = Path(tables)
    run = read_run(tables)
    models = read_table(tables, "models").to_pylist()
    if model_id is not None:
        models = [m for m in models if m["model_id"] == model_id]
        if not models:
            raise PublishError(expected("--model-id", f"one of {run.get('models')}",
                                        repr(model_id)))
    fingerprint = tables_fingerprint(tables)
    rows = []
    for m in models:
        rows.append({
            "checkpoint": m["model_id"], "checkpoint_key": slug(m["model_id"]),
            "checkpoint_hash": "", "checkpoint_path": "", "source": "{}",
            "calibration_set": calibration_set, "calibration_key": calibration_set,
            "model_id": m["model_id"],
            "nex": float("nan") if m["nex"] is None else float(m["nex"]),
            "log_gap": float("nan") if m["log_gap"] is None else float(m["log_gap"]),
            "n_responses": int(m["n_responses"]), "n_scored": int(m["n_scored"]),
            "n_cycles": int(m["n_cycles"]),
            **{b: float("nan") if m[b] is None else float(m[b]) for b in BASELINES},
            "store": str(run.get("store", {}).get("path", "")), "tables": str(tables),
            "tables_fingerprint": fingerprint,
            "store_fingerprint": run.get("store_fingerprint"),
            "scored_at": run.get("created_at", ""),
        })
    return rows


def parse_target(target: str) -> tuple[str, str]:
    """``(kind, where)`` of a ``--to`` target: ``mlflow:models:/NAME/VERSION``,
    ``hf:MODEL_FOLDER``, or ``folder:PATH`` / a plain path."""
    if target.startswith("mlflow:"):
        where = target[len("mlflow:"):]
        if not re.fullmatch(r"models:/[^/]+/\d+", where):
            raise PublishError(expected("--to mlflow target", "mlflow:models:/NAME/VERSION",
                                        repr(target)))
        return "mlflow", where
    if target.startswith(("hf:", "huggingface:")):
        return "huggingface", target.split(":", 1)[1]
    if target.startswith("folder:"):
        return "folder", target[len("folder:"):]
    if re.match(r"^[a-z][a-z0-9+.-]*:", target) and not re.match(r"^[A-Za-z]:[\\/]", target):
        raise PublishError(expected("--to", "mlflow:models:/NAME/VERSION, hf:FOLDER, "
                                    "folder:PATH or a path", repr(target)))
    return "folder", target


__all__ = ["PublishError", "RESULT_METRICS", "parse_target", "results_from_tables"]
