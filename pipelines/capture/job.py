"""The capture job: prompts + model -> TraceRecords -> parts of an activation store.

Work is split into parts of ``part_size`` prompts (all their samples). Part ``c`` covers
prompts ``[c * part_size, (c + 1) * part_size)`` of the (limited) prompt list and
belongs to shard ``c % N``; its name is derived from the model id, the chunk index and
a hash of its content, so reruns and other shards agree on it. A rerun skips complete
parts (and traces already in the store), so a killed capture resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from nex_transforms.errors import expected

from ..records import TraceRecord
from ..store import ActivationStore
from .errors import CaptureError, PromptError
from .prompts import GivenResponse, PromptItem, load_prompts, load_responses

PROMPT_FORMATS = ("auto", "chat", "raw", "fewshot")


@dataclass(frozen=True)
class CaptureConfig:
    """Every option of ``nex capture`` (see the CLI help for meanings)."""

    model: str
    prompts: str
    out: str
    samples: int = 1
    max_new_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.95
    top_k: int = 0
    seed: int = 0
    batch_size: int = 8
    device: str = "cpu"
    dtype: str = "float32"
    top_k_neurons: int = 500
    row_size: int = 32
    layers: str = "all"
    limit: int | None = None
    responses: str | None = None
    part_size: int = 16
    shard: str = "0/1"
    prompt_format: str = "auto"
    model_id: str | None = None
    revision: str | None = None
    id_column: str = "id"
    prompt_column: str = "prompt"
    answer_column: str | None = None
    hash_ids: bool = False
    progress: bool = True
    overwrite: bool = False

    def __post_init__(self) -> None:
        positive = {"samples": self.samples, "max_new_tokens": self.max_new_tokens,
                    "batch_size": self.batch_size, "top_k_neurons": self.top_k_neurons,
                    "row_size": self.row_size, "part_size": self.part_size}
        for name, value in positive.items():
            if not isinstance(value, int) or value < 1:
                raise CaptureError(expected(f"--{name.replace('_', '-')}", "a positive integer", value))
        if not 0 <= self.temperature <= 100:
            raise CaptureError(expected("--temperature", "a value in [0, 100] (0 = greedy)",
                                        self.temperature))
        if not 0 < self.top_p <= 1:
            raise CaptureError(expected("--top-p", "a value in (0, 1]", self.top_p))
        if self.top_k < 0:
            raise CaptureError(expected("--top-k", "0 (off) or a positive integer", self.top_k))
        if self.prompt_format not in PROMPT_FORMATS:
            raise CaptureError(expected("--prompt-format", f"one of {PROMPT_FORMATS}",
                                        self.prompt_format))
        parse_shard(self.shard)

    @property
    def mode(self) -> str:
        return "forced" if self.responses else "sample"


def parse_shard(text: str) -> tuple[int, int]:
    """Parse ``--shard I/N`` (0 <= I < N)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match or not 0 <= int(match.group(1)) < int(match.group(2)):
        raise CaptureError(expected("--shard", "I/N with 0 <= I < N (e.g. 0/2)", repr(text)))
    return int(match.group(1)), int(match.group(2))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


@dataclass(frozen=True)
class Job:
    """One trace to produce: a prompt, its sample index and optional given response."""

    prompt: PromptItem
    prompt_index: int
    sample_index: int
    response: GivenResponse | None = None


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


def trace_id(model_id: str, prompt_id: str, sample_index: int) -> str:
    """The stable trace id ``model:prompt:sample``."""
    return f"{model_id}:{prompt_id}:{sample_index}"


class Tokenized:
    """Prompt token ids under the chosen prompt format (chat template when available)."""

    def __init__(self, tokenizer, prompt_format: str):
        self.tokenizer = tokenizer
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if prompt_format == "chat" and not has_template:
            raise PromptError(expected("--prompt-format chat", "a tokenizer with a chat template",
                                       "none"))
        self.format = ("chat" if has_template else "raw") if prompt_format == "auto" else prompt_format

    def prompt(self, item: PromptItem) -> list[int]:
        tok = self.tokenizer
        if self.format == "chat":
            text = tok.apply_chat_template([{"role": "user", "content": item.text}],
                                           add_generation_prompt=True, tokenize=False)
            return list(tok(text, add_special_tokens=False)["input_ids"])
        text = item.fewshot if (self.format == "fewshot" and item.fewshot) else item.text
        return list(tok(text)["input_ids"])

    def response(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def stop_token_ids(model, tokenizer) -> list[int]:
    """EOS ids from the generation config and the tokenizer."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return sorted(ids)


def _capture_params(config: CaptureConfig, spec, model, sites, layers, prompt_format: str) -> dict:
    from .models import config_hash

    return {
        "model_id": spec.model_id,
        "model_source": spec.path if not Path(spec.path).is_dir() else Path(spec.path).name,
        "gguf_file": spec.gguf_file,
        "model_revision": spec.revision,
        "config_hash": config_hash(model.config),
        "architecture": type(model).__name__,
        "dtype": config.dtype,
        "device": config.device.split(":")[0],
        "activation_site": sites[0].kind,
        "intermediate_size": sites[0].width,
        "layers": layers,
        "top_k_neurons": config.top_k_neurons,
        "threshold_rule": "top-K (token, layer, unit) entries per row by value, positive only",
        "row_size": config.row_size,
        "mode": config.mode,
        "prompt_format": prompt_format,
        "part_size": config.part_size,
        "generation": {
            "max_new_tokens": config.max_new_tokens,
            "temperature": config.temperature,
            "top_p": config.top_p,
            "top_k": config.top_k,
            "seed": config.seed,
            "samples": config.samples,
            "sampler": "per-sequence torch.Generator seeded from sha256(seed:prompt_id:sample)",
        } if config.mode == "sample" else None,
    }


def _existing_trace_ids(store) -> set[str]:
    try:
        table = store.manifest()
    except Exception:  # an empty store may have no manifest yet
        return set()
    if table is None or "trace_id" not in getattr(table, "column_names", []):
        return set()
    return set(table.column("trace_id").to_pylist())


def _part_done(store, part: Part, model_id: str, existing: set[str]) -> bool:
    if store.has_part(part.name):
        return True
    return all(trace_id(model_id, j.prompt.prompt_id, j.sample_index) in existing for j in part.jobs)


#: Key of a part's extra metadata recording what each trace was captured from.
INPUTS_KEY = "inputs"


def _sha(text: str | None) -> str | None:
    return None if text is None else hashlib.sha256(text.encode()).hexdigest()


def job_inputs(job: Job, prompt_format: str) -> dict:
    """What a trace is captured from, as digests: the prompt text (its few-shot form when
    that is what the model sees) and the given response (None when sampled)."""
    prompt = job.prompt.fewshot if (prompt_format == "fewshot" and job.prompt.fewshot) \
        else job.prompt.text
    return {"prompt_text": _sha(prompt),
            "given_response": _sha(job.response.text if job.response else None)}


def check_resume(store, parts: list[Part], model_id: str, prompt_format: str,
                 overwrite: bool) -> list[str]:
    """Compare the inputs of the planned traces with what the store's parts were written
    with; refuse a difference (naming the trace and field) unless ``overwrite``.

    Returns the parts to remove before capturing (with ``overwrite``). Traces written
    without recorded inputs (by other tools) are not compared.
    """
    recorded: dict[str, tuple[str, dict]] = {}
    summaries = store.part_summaries() if hasattr(store, "part_summaries") else {}
    for name, summary in summaries.items():
        inputs = (summary.get("extra_metadata") or {}).get(INPUTS_KEY) or {}
        for tid, digests in inputs.items():
            recorded[tid] = (name, digests)
    stale: list[str] = []
    for part in parts:
        for job in part.jobs:
            tid = trace_id(model_id, job.prompt.prompt_id, job.sample_index)
            if tid not in recorded:
                continue
            written_in, old = recorded[tid]
            new = job_inputs(job, prompt_format)
            for field_name in ("prompt_text", "given_response"):
                if old.get(field_name) == new[field_name]:
                    continue
                if overwrite:
                    if written_in not in stale:
                        stale.append(written_in)
                    break
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


def _default_store_factory(path: str, metadata: dict):
    return ActivationStore.create(path, metadata=metadata)


@dataclass
class CaptureSummary:
    """What one capture process did: parts and traces written or skipped, non-finite
    activations set to 0, whether it finalized the store, ``load_seconds`` (prompts,
    model and store set-up) and ``seconds`` (total wall time)."""

    store: str
    parts_total: int = 0
    parts_skipped: int = 0
    parts_written: int = 0
    traces_written: int = 0
    tokens_written: int = 0
    nan_activations: int = 0
    finalized: bool = False
    load_seconds: float = 0.0
    seconds: float = 0.0
    capture: dict = field(default_factory=dict)


def run_capture(config: CaptureConfig,
                store_factory: Callable[[str, dict], object] | None = None,
                model_and_tokenizer: tuple | None = None) -> CaptureSummary:
    """Run a capture: load prompts and the model, generate (or teacher-force), write parts.

    Args:
        config: the options.
        store_factory: ``(path, metadata) -> store`` (default ``ActivationStore.create``).
        model_and_tokenizer: an already loaded ``(model, tokenizer)`` (tests, benchmarks);
            ``config.model`` still names it.

    Raises:
        NexError subclasses for every input problem, before anything is written.
    """
    from tqdm import tqdm

    from .engine import force_batch, sample_batch, sequence_seed
    from .models import context_length, load_model, mlp_sites, parse_layers, resolve_model

    started = time.perf_counter()
    shard = parse_shard(config.shard)
    if config.mode == "sample" and config.temperature == 0 and config.samples > 1:
        print("nex: note: --temperature 0 is greedy: every sample of a prompt is the same",
              file=sys.stderr)
    prompts = load_prompts(config.prompts, id_column=config.id_column,
                           prompt_column=config.prompt_column, answer_column=config.answer_column,
                           hash_ids=config.hash_ids, limit=config.limit)
    responses = load_responses(config.responses, (p.prompt_id for p in prompts)) \
        if config.responses else None
    spec = resolve_model(config.model, config.model_id, config.revision)
    if model_and_tokenizer is None:
        model, tokenizer = load_model(spec, config.dtype, config.device, config.progress)
    else:
        model, tokenizer = model_and_tokenizer
    all_sites = mlp_sites(model)
    layers = parse_layers(config.layers, len(all_sites))
    sites = [all_sites[i] for i in layers]
    tokenized = Tokenized(tokenizer, config.prompt_format)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else \
        (stop_token_ids(model, tokenizer) or [0])[0]
    stops = stop_token_ids(model, tokenizer)

    all_parts = plan_parts(spec.model_id, prompts, config.samples, config.part_size, (0, 1),
                           responses, config.mode)
    parts = [part for part in all_parts if part.index % shard[1] == shard[0]]
    # Tokenize and check lengths of this shard's prompts before anything is written.
    limit = context_length(model)
    prompt_ids: dict[str, list[int]] = {}
    response_ids: dict[tuple[str, int], list[int]] = {}
    for part in parts:
        for job in part.jobs:
            pid = job.prompt.prompt_id
            if pid not in prompt_ids:
                prompt_ids[pid] = tokenized.prompt(job.prompt)
                if not prompt_ids[pid]:
                    raise PromptError(expected(f"prompt {pid}", "at least one token", "none"))
            need = len(prompt_ids[pid])
            if job.response is not None:
                response_ids[(pid, job.sample_index)] = tokenized.response(job.response.text)
                need += len(response_ids[(pid, job.sample_index)])
                what = "prompt + given response"
            else:
                need += config.max_new_tokens + 1
                what = "prompt + max_new_tokens + 1"
            if limit is not None and need > limit:
                raise PromptError(expected(f"prompt {pid} ({len(prompt_ids[pid])} tokens)",
                                           f"{what} within the model's context of {limit} tokens",
                                           f"{need} tokens"))

    params = _capture_params(config, spec, model, sites, layers, tokenized.format)
    params["n_model_layers"] = len(all_sites)
    factory = store_factory or _default_store_factory
    store = factory(config.out, {"capture": params})
    for name in check_resume(store, parts, spec.model_id, tokenized.format, config.overwrite):
        print(f"nex: note: --overwrite: removing part {name} (captured from other inputs)",
              file=sys.stderr)
        store.remove_part(name)
    existing = _existing_trace_ids(store)
    summary = CaptureSummary(store=str(config.out), parts_total=len(parts), capture=params)
    total = sum(len(p.jobs) for p in parts)
    bar = tqdm(total=total, unit="trace", file=sys.stderr, disable=not config.progress,
               desc=f"capture {spec.model_id} shard {shard[0]}/{shard[1]}", dynamic_ncols=True)
    tokens_done, token_clock = 0, time.perf_counter()
    summary.load_seconds = token_clock - started
    try:
        for part in parts:
            if store.has_part(part.name):
                summary.parts_skipped += 1
                bar.update(len(part.jobs))
                continue
            jobs = [j for j in part.jobs
                    if trace_id(spec.model_id, j.prompt.prompt_id, j.sample_index) not in existing]
            bar.update(len(part.jobs) - len(jobs))
            # Longest prompts first: batches of similar lengths pad less.
            order = sorted(jobs, key=lambda j: (-len(prompt_ids[j.prompt.prompt_id]), j.prompt_index,
                                                j.sample_index))
            records: list[TraceRecord] = []
            nan_count = 0
            for start in range(0, len(order), config.batch_size):
                batch = order[start:start + config.batch_size]
                batch_prompts = [prompt_ids[j.prompt.prompt_id] for j in batch]
                if config.mode == "forced":
                    results = force_batch(
                        model, batch_prompts,
                        [response_ids[(j.prompt.prompt_id, j.sample_index)] for j in batch],
                        pad_id=pad_id, sites=sites, top_k_neurons=config.top_k_neurons,
                        row_size=config.row_size)
                else:
                    seeds = [sequence_seed(config.seed, j.prompt.prompt_id, j.sample_index)
                             for j in batch]
                    results = sample_batch(
                        model, batch_prompts, seeds, max_new_tokens=config.max_new_tokens,
                        temperature=config.temperature, top_p=config.top_p, top_k=config.top_k,
                        stop_ids=stops, pad_id=pad_id, sites=sites,
                        top_k_neurons=config.top_k_neurons, row_size=config.row_size)
                for job, result in zip(batch, results):
                    rows = result.rows
                    nan_count += rows.nan_activations
                    records.append(TraceRecord(
                        trace_id=trace_id(spec.model_id, job.prompt.prompt_id, job.sample_index),
                        prompt_id=job.prompt.prompt_id, sample_index=job.sample_index,
                        model_id=spec.model_id, model_revision=spec.revision,
                        prompt_tokens=len(prompt_ids[job.prompt.prompt_id]),
                        finish_reason=result.finish_reason,
                        text=tokenizer.decode(result.token_ids.tolist(), skip_special_tokens=True),
                        token_ids=result.token_ids, row_entry_ptr=rows.row_entry_ptr,
                        row_tokens=rows.row_tokens, keys=rows.keys, masses=rows.masses,
                        agg_keys=rows.agg_keys, agg_masses=rows.agg_masses,
                        token_stats=result.token_stats,
                        reference_answer=job.prompt.reference_answer))
                    tokens_done += result.token_ids.size
                bar.update(len(batch))
                rate = tokens_done / max(time.perf_counter() - token_clock, 1e-9)
                bar.set_postfix_str(f"{rate:.1f} tok/s", refresh=False)
            position = {(j.prompt.prompt_id, j.sample_index): i for i, j in enumerate(part.jobs)}
            records.sort(key=lambda r: position[(r.prompt_id, r.sample_index)])
            if records:
                store.write_part(part.name, records, extra_metadata={
                    "nan_activations": int(nan_count), "chunk": part.index,
                    "shard": f"{shard[0]}/{shard[1]}", "n_traces": len(records),
                    "response_tokens": int(sum(r.response_tokens for r in records)),
                    INPUTS_KEY: {trace_id(spec.model_id, j.prompt.prompt_id, j.sample_index):
                                 job_inputs(j, tokenized.format) for j in jobs}})
                summary.parts_written += 1
                summary.traces_written += len(records)
                summary.tokens_written += int(sum(r.response_tokens for r in records))
                summary.nan_activations += int(nan_count)
                if nan_count:
                    print(f"nex: warning: part {part.name}: {nan_count} non-finite activations "
                          "set to 0", file=sys.stderr)
    finally:
        bar.close()
    # Consolidate once every shard's parts are complete (the last shard to finish does
    # it); finalizing while another shard writes would race with its staging files.
    existing = _existing_trace_ids(store)
    pending = [part.name for part in all_parts if not _part_done(store, part, spec.model_id, existing)]
    if pending:
        print(f"nex: note: {len(pending)} parts of other shards are not complete yet; the "
              "store is finalized by the last shard to finish (or `nex store finalize`)",
              file=sys.stderr)
    else:
        store.finalize()
        summary.finalized = True
    summary.seconds = time.perf_counter() - started
    return summary


def summary_dict(summary: CaptureSummary) -> dict:
    """A JSON-ready view of a :class:`CaptureSummary`."""
    data = asdict(summary)
    busy = summary.seconds - summary.load_seconds
    data["tokens_per_second"] = summary.tokens_written / busy if busy > 0 else 0.0
    return data


__all__ = ["CaptureConfig", "CaptureSummary", "Job", "Part", "parse_shard", "plan_parts",
           "run_capture", "summary_dict", "trace_id"]
