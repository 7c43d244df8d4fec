"""Capture: turn prompts and a causal LM into TraceRecords written to an activation store.

``run_capture(CaptureConfig(...))`` is what ``nex capture`` runs. The pieces:

* :mod:`.config`: :class:`CaptureConfig`, every option and its one default;
* :mod:`.prompts`: prompt sources (JSONL, Parquet, the shipped benchmarks);
* :mod:`.models`: short names, GGUF and Hugging Face models, MLP activation sites
  (:mod:`.model_cache`: the converted copies of GGUF models);
* :mod:`.engine`: on-the-fly top-K hooks, seeded sampling, teacher forcing, logit stats;
* :mod:`.plan`: parts, shards, what a resume skips or refuses;
* :mod:`.tokens`: prompt formats, stop and pad ids, the context length check;
* :mod:`.job`: per-part capture, progress, writing to the store, finalizing.

:mod:`.engine` and :mod:`.models` import torch and transformers; the rest (this package
included) does not, so the CLI parser can read :mod:`.config`.
"""

from __future__ import annotations

from ..records import trace_id
from .config import CAPTURE_DEFAULTS, CaptureConfig
from .errors import ArchitectureError, CaptureError, ModelError, PromptError
from .job import CaptureSummary, run_capture, summary_dict
from .plan import plan_parts

__all__ = ["ArchitectureError", "CAPTURE_DEFAULTS", "CaptureConfig", "CaptureError",
           "CaptureSummary", "ModelError", "PromptError", "plan_parts", "run_capture",
           "summary_dict", "trace_id"]
