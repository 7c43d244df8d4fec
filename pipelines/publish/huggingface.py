"""Publish to a Hugging Face model folder: NEX and log-gap as ``model-index`` results in the
model card's metadata (``README.md``), keeping the card's text and every other result.
Works offline (``huggingface_hub.ModelCard``); pushing the folder is the Hub's business."""

from __future__ import annotations

import math
import os
from pathlib import Path

from nex_transforms.errors import expected

from ..crashsafe import atomic_write
from . import PublishError

#: Catalog column -> (model-index metric type, metric name) of the results written.
CARD_METRICS = {"nex": ("nex", "NEX"), "log_gap": ("nex_log_gap", "NEX log-gap"),
                "late_novelty": ("nex_late_novelty", "NEX regime: late novelty"),
                "pool_coverage": ("nex_pool_coverage", "NEX regime: pool coverage")}


def _ours(result, calset: str) -> bool:
    return result.dataset_type == f"nex/{calset}" and \
        result.metric_type in {metric for metric, _ in CARD_METRICS.values()}


def publish_huggingface(result: dict, model_folder: str | os.PathLike) -> dict:
    """Write one result row's NEX, log-gap and regime diagnostics into
    ``MODEL_FOLDER/README.md``'s model-index (dataset ``nex/<calibration set>``, metrics
    of :data:`CARD_METRICS`; a value the row lacks is left out). Results of
    other datasets or metrics and the card text are kept. Returns ``{"card": 1}`` when the
    card changed, ``{"card": 0}`` when it already held these results."""
    try:
        from huggingface_hub import EvalResult, ModelCard, ModelCardData
    except ImportError as err:  # pragma: no cover - the registry extra is installed in CI
        raise PublishError(expected("huggingface_hub", "installed (pip install "
                                    "'nex-pipeline[registry]')", str(err))) from None
    folder = Path(model_folder)
    if not folder.is_dir():
        raise PublishError(expected("Hugging Face model folder", "an existing folder", str(folder)))
    path = folder / "README.md"
    before = path.read_text() if path.is_file() else None
    if before is not None:
        card = ModelCard.load(path)
    else:
        data = ModelCardData(model_name=result["checkpoint"])
        card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n# {result['checkpoint']}\n")
    calset = result["calibration_set"]
    kept = [r for r in (card.data.eval_results or []) if not _ours(r, calset)]
    ours = []
    for column, (metric, name) in CARD_METRICS.items():
        value = result.get(column)
        if value is None or not math.isfinite(float(value)):
            continue
        ours.append(EvalResult(task_type="text-generation", task_name="label-free reasoning score",
                               dataset_type=f"nex/{calset}", dataset_name=f"NEX calibration set {calset}",
                               metric_type=metric, metric_name=name,
                               metric_value=round(float(value), 10)))
    card.data.eval_results = kept + ours
    if not getattr(card.data, "model_name", None):
        card.data.model_name = result["checkpoint"]
    text = str(card)
    if before is not None and text.strip() == before.strip():
        return {"card": 0}
    if before is not None and not text.endswith("\n"):
        text += "\n"
    atomic_write(path, lambda p: p.write_text(text))
    return {"card": 1}


__all__ = ["publish_huggingface"]
