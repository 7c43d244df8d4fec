"""Capture: turn prompts and a causal LM into TraceRecords written to an activation store.

``run_capture(CaptureConfig(...))`` is what ``nex capture`` runs. The pieces:

* :mod:`.prompts`: prompt sources (JSONL, Parquet, the shipped benchmarks);
* :mod:`.models`: short names, GGUF and Hugging Face models, MLP activation sites;
* :mod:`.engine`: on-the-fly top-K hooks, seeded sampling, teacher forcing, logit stats;
* :mod:`.job`: parts, shards, resume, progress, writing to the store.

This package imports torch and transformers; import it only where they are needed.
"""

from __future__ import annotations

from .errors import ArchitectureError, CaptureError, ModelError, PromptError
from .job import CaptureConfig, CaptureSummary, plan_parts, run_capture, summary_dict, trace_id

__all__ = ["ArchitectureError", "CaptureConfig", "CaptureError", "CaptureSummary", "ModelError",
           "PromptError", "plan_parts", "run_capture", "summary_dict", "trace_id"]
