"""Publishers: put a scored checkpoint's NEX, log-gap, baselines and tables where platform
teams look for them.

* :func:`~pipelines.publish.folder.publish_folder`: a plain folder (tables + catalog);
* :func:`~pipelines.publish.mlflow.publish_mlflow`: the registered model version of the
  checkpoint in an MLflow registry (version tags, metrics on its run, tables as artifacts);
* :func:`~pipelines.publish.huggingface.publish_huggingface`: the ``model-index`` results
  in a Hugging Face model folder's card.

Every publisher compares before it writes: publishing the same tables twice changes
nothing, and each returns how many things it changed. ``results_from_tables`` turns a
tables folder into the result rows the publishers take (catalog rows, see
:mod:`pipelines.catalog`; a workspace's completion markers are such rows already).
"""

from __future__ import annotations

import os
import re

from nex_transforms import NexError
from nex_transforms.errors import expected

from ..catalog import catalog_rows
from ..tables import read_run


class PublishError(NexError):
    """A bad publish target or input."""


def results_from_tables(tables: str | os.PathLike, calibration_set: str = "default",
                        model_id: str | None = None) -> list[dict]:
    """One result row per model of a tables folder (the catalog's columns that a tables
    folder alone can give; see :func:`pipelines.catalog.catalog_rows`)."""
    identity = {"calibration_set": calibration_set, "calibration_key": calibration_set}
    rows = catalog_rows(tables, identity, model_id=model_id)
    if model_id is not None and not rows:
        raise PublishError(expected("--model-id", f"one of {read_run(tables).get('models')}",
                                    repr(model_id)))
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


__all__ = ["PublishError", "parse_target", "results_from_tables"]
