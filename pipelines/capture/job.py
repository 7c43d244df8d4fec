"""The capture job: prompts + model -> TraceRecords -> parts of an activation store.

:func:`run_capture` loads the inputs and the model, plans the parts (:mod:`.plan`),
tokenises and checks them (:mod:`.tokens`), captures each part of this shard into
records written with ``store.write_part`` (:class:`PartCapture`), then finalizes the
store once every shard's parts are complete (:func:`finalize`). Notes and warnings go
to one ``log`` callback (stderr by default); the progress bar goes to stderr.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..records import TraceRecord
from ..store import ActivationStore
from .config import CaptureConfig
from .plan import (INPUTS_KEY, CapturePlan, Job, Part, check_resume, existing_trace_ids,
                   job_inputs, load_inputs, plan_capture)
from .tokens import JobTokens, Tokenized, pad_token_id, stop_token_ids, tokenize_parts

if TYPE_CHECKING:
    from .models import MlpSite, ModelSpec

#: A capture's notes and warnings, one line each.
Log = Callable[[str], None]


def stderr_log(text: str) -> None:
    """The default :data:`Log`: the line on stderr."""
    print(text, file=sys.stderr)


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


@dataclass
class LoadedModel:
    """The model side of a capture: where it came from, the model and tokenizer, the
    hooked sites of the kept ``layers`` (of ``n_layers``), the prompt format in use,
    and the pad and stop ids."""

    spec: ModelSpec
    model: object
    tokenizer: object
    sites: list[MlpSite]
    layers: list[int]
    n_layers: int
    tokenized: Tokenized
    pad_id: int
    stops: list[int]


def load_capture_model(config: CaptureConfig, model_and_tokenizer: tuple | None) -> LoadedModel:
    """Resolve and load the configured model (or take the given ``(model, tokenizer)``)."""
    from .models import load_model, mlp_sites, parse_layers, resolve_model

    spec = resolve_model(config.model, config.model_id, config.revision)
    if model_and_tokenizer is None:
        model, tokenizer = load_model(spec, config.dtype, config.device, config.progress)
    else:
        model, tokenizer = model_and_tokenizer
    all_sites = mlp_sites(model)
    layers = parse_layers(config.layers, len(all_sites))
    return LoadedModel(spec, model, tokenizer, [all_sites[i] for i in layers], layers,
                       len(all_sites), Tokenized(tokenizer, config.prompt_format),
                       pad_token_id(model, tokenizer), stop_token_ids(model, tokenizer))


def capture_params(config: CaptureConfig, loaded: LoadedModel) -> dict:
    """The store's ``capture`` metadata: what the traces were captured from and how."""
    from .models import config_hash

    spec, sites = loaded.spec, loaded.sites
    return {
        "model_id": spec.model_id,
        "model_source": spec.path if not Path(spec.path).is_dir() else Path(spec.path).name,
        "gguf_file": spec.gguf_file,
        "model_revision": spec.revision,
        "config_hash": config_hash(loaded.model.config),
        "architecture": type(loaded.model).__name__,
        "dtype": config.dtype,
        "device": config.device.split(":")[0],
        "activation_site": sites[0].kind,
        "intermediate_size": sites[0].width,
        "layers": loaded.layers,
        "top_k_neurons": config.top_k_neurons,
        "threshold_rule": "top-K (token, layer, unit) entries per row by value, positive only",
        "row_size": config.row_size,
        "mode": config.mode,
        "prompt_format": loaded.tokenized.format,
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
        "n_model_layers": loaded.n_layers,
    }


def _default_store_factory(path: str, metadata: dict):
    return ActivationStore.create(path, metadata=metadata)


class PartCapture:
    """Captures parts of one plan: each part's remaining jobs -> records -> one
    ``store.write_part``, counted in ``summary`` and shown on the progress ``bar``."""

    def __init__(self, config: CaptureConfig, loaded: LoadedModel, plan: CapturePlan,
                 tokens: JobTokens, store, summary: CaptureSummary, bar, log: Log):
        self.config, self.loaded, self.plan, self.tokens = config, loaded, plan, tokens
        self.store, self.summary, self.bar, self.log = store, summary, bar, log
        self.tokens_done, self.clock = 0, time.perf_counter()

    def run(self, part: Part, existing: set[str]) -> None:
        """Capture ``part`` unless it is complete; skip its traces already in the store."""
        if self.store.has_part(part.name):
            self.summary.parts_skipped += 1
            self.bar.update(len(part.jobs))
            return
        jobs = self.plan.remaining(part, existing)
        self.bar.update(len(part.jobs) - len(jobs))
        # Longest prompts first: batches of similar lengths pad less.
        order = sorted(jobs, key=lambda j: (-len(self.tokens.prompt(j)), j.prompt_index,
                                            j.sample_index))
        records, nan_count = [], 0
        for start in range(0, len(order), self.config.batch_size):
            batch = order[start:start + self.config.batch_size]
            for job, result in zip(batch, self._results(batch)):
                nan_count += result.nan_activations
                records.append(self._record(job, result))
                self.tokens_done += result.token_ids.size
            self.bar.update(len(batch))
            rate = self.tokens_done / max(time.perf_counter() - self.clock, 1e-9)
            self.bar.set_postfix_str(f"{rate:.1f} tok/s", refresh=False)
        position = {(j.prompt.prompt_id, j.sample_index): i for i, j in enumerate(part.jobs)}
        records.sort(key=lambda r: position[(r.prompt_id, r.sample_index)])
        if records:
            self._write(part, jobs, records, nan_count)

    def _results(self, batch: list[Job]) -> list:
        """Teacher-force or sample one batch of jobs, capturing their rows."""
        from .engine import force_batch, sample_batch, sequence_seed

        config, loaded = self.config, self.loaded
        prompts = [self.tokens.prompt(j) for j in batch]
        if config.mode == "forced":
            return force_batch(loaded.model, prompts, [self.tokens.response(j) for j in batch],
                               pad_id=loaded.pad_id, sites=loaded.sites,
                               top_k_neurons=config.top_k_neurons, row_size=config.row_size)
        seeds = [sequence_seed(config.seed, j.prompt.prompt_id, j.sample_index) for j in batch]
        return sample_batch(
            loaded.model, prompts, seeds, max_new_tokens=config.max_new_tokens,
            temperature=config.temperature, top_p=config.top_p, top_k=config.top_k,
            stop_ids=loaded.stops, pad_id=loaded.pad_id, sites=loaded.sites,
            top_k_neurons=config.top_k_neurons, row_size=config.row_size)

    def _record(self, job: Job, result) -> TraceRecord:
        spec = self.loaded.spec
        return TraceRecord(
            trace_id=job.trace_id(spec.model_id), prompt_id=job.prompt.prompt_id,
            sample_index=job.sample_index, model_id=spec.model_id, model_revision=spec.revision,
            prompt_tokens=len(self.tokens.prompt(job)), finish_reason=result.finish_reason,
            text=self.loaded.tokenizer.decode(result.token_ids.tolist(), skip_special_tokens=True),
            token_ids=result.token_ids, **result.rows.sparse_rows(),
            token_stats=result.token_stats, reference_answer=job.prompt.reference_answer)

    def _write(self, part: Part, jobs: list[Job], records: list[TraceRecord],
               nan_count: int) -> None:
        model_id, prompt_format = self.plan.model_id, self.loaded.tokenized.format
        tokens = int(sum(r.response_tokens for r in records))
        self.store.write_part(part.name, records, extra_metadata={
            "nan_activations": int(nan_count), "chunk": part.index,
            "shard": self.plan.shard_text, "n_traces": len(records), "response_tokens": tokens,
            INPUTS_KEY: {j.trace_id(model_id): job_inputs(j, prompt_format) for j in jobs}})
        summary = self.summary
        summary.parts_written += 1
        summary.traces_written += len(records)
        summary.tokens_written += tokens
        summary.nan_activations += int(nan_count)
        if nan_count:
            self.log(f"nex: warning: part {part.name}: {nan_count} non-finite activations "
                     "set to 0")


def open_store(config: CaptureConfig, loaded: LoadedModel, plan: CapturePlan, params: dict,
               store_factory: Callable[[str, dict], object] | None, log: Log):
    """Create (or open) the store and, with ``--overwrite``, remove the parts written from
    other inputs than the planned ones (without it, such a part is refused)."""
    store = (store_factory or _default_store_factory)(config.out, {"capture": params})
    for name in check_resume(store, plan.parts, plan.model_id, loaded.tokenized.format,
                             config.overwrite):
        log(f"nex: note: --overwrite: removing part {name} (captured from other inputs)")
        store.remove_part(name)
    return store


def finalize(store, plan: CapturePlan, summary: CaptureSummary, log: Log) -> None:
    """Consolidate the store once every shard's parts are complete (the last shard to
    finish does it); finalizing while another shard writes would race with its staging
    files."""
    pending = plan.pending(store)
    if pending:
        log(f"nex: note: {len(pending)} parts of other shards are not complete yet; the "
            "store is finalized by the last shard to finish (or `nex store finalize`)")
    else:
        store.finalize()
        summary.finalized = True


def run_capture(config: CaptureConfig,
                store_factory: Callable[[str, dict], object] | None = None,
                model_and_tokenizer: tuple | None = None,
                log: Log | None = None) -> CaptureSummary:
    """Run a capture: load prompts and the model, generate (or teacher-force), write parts.

    Args:
        config: the options.
        store_factory: ``(path, metadata) -> store`` (default ``ActivationStore.create``).
        model_and_tokenizer: an already loaded ``(model, tokenizer)`` (tests, benchmarks);
            ``config.model`` still names it.
        log: receives each note and warning line (default :func:`stderr_log`).

    Raises:
        NexError subclasses for every input problem, before anything is written.
    """
    from tqdm import tqdm

    from .models import context_length

    log = log or stderr_log
    started = time.perf_counter()
    if config.mode == "sample" and config.temperature == 0 and config.samples > 1:
        log("nex: note: --temperature 0 is greedy: every sample of a prompt is the same")
    inputs = load_inputs(config)
    loaded = load_capture_model(config, model_and_tokenizer)
    plan = plan_capture(config, loaded.spec.model_id, inputs)
    # Tokenize and check lengths of this shard's prompts before anything is written.
    tokens = tokenize_parts(plan.parts, loaded.tokenized, context_length(loaded.model),
                            config.max_new_tokens)
    params = capture_params(config, loaded)
    store = open_store(config, loaded, plan, params, store_factory, log)
    existing = existing_trace_ids(store)
    summary = CaptureSummary(store=str(config.out), parts_total=len(plan.parts), capture=params)
    bar = tqdm(total=sum(len(p.jobs) for p in plan.parts), unit="trace", file=sys.stderr,
               disable=not config.progress, dynamic_ncols=True,
               desc=f"capture {plan.model_id} shard {plan.shard_text}")
    capture = PartCapture(config, loaded, plan, tokens, store, summary, bar, log)
    summary.load_seconds = capture.clock - started
    try:
        for part in plan.parts:
            capture.run(part, existing)
    finally:
        bar.close()
    finalize(store, plan, summary, log)
    summary.seconds = time.perf_counter() - started
    return summary


def summary_dict(summary: CaptureSummary) -> dict:
    """A JSON-ready view of a :class:`CaptureSummary`."""
    data = asdict(summary)
    busy = summary.seconds - summary.load_seconds
    data["tokens_per_second"] = summary.tokens_written / busy if busy > 0 else 0.0
    return data


__all__ = ["CaptureSummary", "LoadedModel", "Log", "PartCapture", "capture_params", "finalize",
           "load_capture_model", "open_store", "run_capture", "stderr_log", "summary_dict"]
