"""The plan of a capture: which traces to produce, grouped into parts, and what a rerun skips.

Work is split into parts of ``part_size`` prompts (all their samples). Part ``c`` covers
prompts ``[c * part_size, (c + 1) * part_size)`` of the (limited) prompt list and
belongs to shard ``c % N``; its name is derived from the model id, the chunk index and
a hash of its content, so reruns and other shards agree on it. A rerun skips complete
parts (and traces already in the store), so a killed capture resumes where it stopped;
it refuses traces whose recorded inputs differ from the planned ones (see
:func:`check_resume`).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

from nex_transforms.errors import expected

from ..records import trace_id
from .config import CaptureConfig, parse_shard
from .errors import CaptureError
from .prompts import GivenResponse, PromptItem, load_prompts, load_responses

#: Key of a part's extra metadata recording what each trace was captured from.
INPUTS_KEY = "inputs"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


@dataclass(frozen=True)
class Job:
    """One trace to produce: a prompt, its sample index and optional given response."""

    prompt: PromptItem
    prompt_index: int
    sample_index: int
    response: GivenResponse | None = None

    def trace_id(self, model_id: str) -> str:
        """This trace's id when captured from ``model_id`` (see :func:`records.trace_id`)."""
        return trace_id(model_id, self.prompt.prompt_id, self.sample_index)


@dataclass(frozen=True)
class Part:
    """A unit of work written atomically to the store."""

    index: int
    name: str
    jobs: tuple[Job, ...]


def plan_parts(model_id: str, prompts: list[PromptItem], samples: int, part_size: int,
               shard: tuple[int, int], responses: dict[str, list[GivenResponse]] | None = None,
               mode_tag: str = "sample") -> list[Part]:
    """The parts of one shard, each with a deterministic name."""
    index, count = shard
    parts = []
    for chunk in range(-(-len(prompts) // part_size)):
        if chunk % count != index:
            continue
        start = chunk * part_size
        jobs = []
        for offset, prompt in enumerate(prompts[start:start + part_size]):
            if responses is None:
                jobs.extend(Job(prompt, start + offset, s) for s in range(samples))
            else:
                jobs.extend(Job(prompt, start + offset, g.sample_index, g)
                            for g in sorted(responses.get(prompt.prompt_id, []),
                                            key=lambda g: g.sample_index))
        if not jobs:
            continue
        content = json.dumps([model_id, mode_tag, [(j.prompt.prompt_id, j.sample_index,
                              hashlib.sha256(j.response.text.encode()).hexdigest()[:12]
                              if j.response else None) for j in jobs]])
        digest = hashlib.sha256(content.encode()).hexdigest()[:10]
        parts.append(Part(chunk, f"{_slug(model_id)}-{mode_tag}-c{chunk:06d}-{digest}", tuple(jobs)))
    return parts


@dataclass(frozen=True)
class CaptureInputs:
    """The prompts of a capture and, when teacher-forcing, the given responses."""

    prompts: list[PromptItem]
    responses: dict[str, list[GivenResponse]] | None


def load_inputs(config: CaptureConfig) -> CaptureInputs:
    """Load the prompt source (and the given responses) a configuration names."""
    prompts = load_prompts(config.prompts, id_column=config.id_column,
                           prompt_column=config.prompt_column, answer_column=config.answer_column,
                           hash_ids=config.hash_ids, limit=config.limit)
    responses = load_responses(config.responses, (p.prompt_id for p in prompts)) \
        if config.responses else None
    return CaptureInputs(prompts, responses)


@dataclass(frozen=True)
class CapturePlan:
    """Every part of a capture (``all_parts``, all shards) and this shard's ``parts``."""

    model_id: str
    shard: tuple[int, int]
    all_parts: list[Part]
    parts: list[Part]

    @property
    def shard_text(self) -> str:
        return f"{self.shard[0]}/{self.shard[1]}"

    def remaining(self, part: Part, existing: set[str]) -> list[Job]:
        """The jobs of a part whose traces are not in the store yet (ids ``existing``)."""
        return [j for j in part.jobs if j.trace_id(self.model_id) not in existing]

    def pending(self, store) -> list[str]:
        """Names of the parts (of every shard) not complete in ``store`` yet."""
        existing = existing_trace_ids(store)
        return [part.name for part in self.all_parts
                if not store.has_part(part.name) and self.remaining(part, existing)]


def plan_capture(config: CaptureConfig, model_id: str, inputs: CaptureInputs) -> CapturePlan:
    """The parts of a capture of ``inputs`` by ``model_id`` and the ones of this shard."""
    shard = parse_shard(config.shard)
    all_parts = plan_parts(model_id, inputs.prompts, config.samples, config.part_size, (0, 1),
                           inputs.responses, config.mode)
    parts = [part for part in all_parts if part.index % shard[1] == shard[0]]
    return CapturePlan(model_id, shard, all_parts, parts)


def existing_trace_ids(store) -> set[str]:
    """The trace ids in a store's manifest (none for a store without one yet)."""
    try:
        table = store.manifest()
    except Exception:  # an empty store may have no manifest yet
        return set()
    if table is None or "trace_id" not in getattr(table, "column_names", []):
        return set()
    return set(table.column("trace_id").to_pylist())


def _sha(text: str | None) -> str | None:
    return None if text is None else hashlib.sha256(text.encode()).hexdigest()


def job_inputs(job: Job, prompt_format: str) -> dict:
    """What a trace is captured from, as digests: the prompt text (its few-shot form when
    that is what the model sees) and the given response (None when sampled)."""
    prompt = job.prompt.fewshot if (prompt_format == "fewshot" and job.prompt.fewshot) \
        else job.prompt.text
    return {"prompt_text": _sha(prompt),
            "given_response": _sha(job.response.text if job.response else None)}


def _recorded_inputs(store) -> dict[str, tuple[str, dict]]:
    """trace id -> (the part it was written in, the input digests recorded with it)."""
    recorded: dict[str, tuple[str, dict]] = {}
    summaries = store.part_summaries() if hasattr(store, "part_summaries") else {}
    for name, summary in summaries.items():
        inputs = (summary.get("extra_metadata") or {}).get(INPUTS_KEY) or {}
        for tid, digests in inputs.items():
            recorded[tid] = (name, digests)
    return recorded


def _changed_input(old: dict, new: dict) -> str | None:
    """The first input field whose digest differs, or None."""
    for field_name in ("prompt_text", "given_response"):
        if old.get(field_name) != new[field_name]:
            return field_name
    return None


def check_resume(store, parts: list[Part], model_id: str, prompt_format: str,
                 overwrite: bool) -> list[str]:
    """Compare the inputs of the planned traces with what the store's parts were written
    with; refuse a difference (naming the trace and field) unless ``overwrite``.

    Returns the parts to remove before capturing (with ``overwrite``). Traces written
    without recorded inputs (by other tools) are not compared.
    """
    recorded = _recorded_inputs(store)
    stale: list[str] = []
    for part in parts:
        for job in part.jobs:
            tid = job.trace_id(model_id)
            if tid not in recorded:
                continue
            written_in, old = recorded[tid]
            new = job_inputs(job, prompt_format)
            field_name = _changed_input(old, new)
            if field_name is None:
                continue
            if overwrite:
                if written_in not in stale:
                    stale.append(written_in)
                continue
            what = {"prompt_text": "prompt text", "given_response": "given response"}
            was = "none (sampled)" if old.get(field_name) is None else \
                f"sha256 {old[field_name][:12]}"
            now = "none (sampled)" if new[field_name] is None else \
                f"sha256 {new[field_name][:12]}"
            raise CaptureError(expected(
                f"resume into {store.path}: trace {tid} {what[field_name]}",
                f"what part {written_in} was written with ({was})",
                f"a different one ({now}); rerun with --overwrite to recapture it"))
    return stale


__all__ = ["CaptureInputs", "CapturePlan", "INPUTS_KEY", "Job", "Part", "check_resume",
           "existing_trace_ids", "job_inputs", "load_inputs", "plan_capture", "plan_parts"]
