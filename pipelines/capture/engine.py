"""The capture engine: hooks that reduce MLP activations on the fly, sampling, teacher forcing.

For a batch of sequences (prompts left-padded to a common length ``P``, responses
starting at position ``P``) the hooks keep, for every response token, its top-K
``(layer, unit)`` activations over all kept layers:

* inside each layer's forward pre-hook the site's input ``[B, S, I]`` is sanitised
  (non-finite -> 0, counted) and reduced to its per-token top-K' (K' = min(K, I)),
  then merged into a running per-token top-K across the layers seen so far;
* nothing of size ``tokens x layers x intermediate`` is ever held.

The top-K entries of a row of tokens are a subset of the union of its tokens' per-token
top-K, so :meth:`SparseCapture.finish` computes each row's exact top-K from these
candidates, keeps positive values and sums them per neuron.

Sampling uses one :class:`torch.Generator` per sequence, seeded from (seed, prompt id,
sample index), so tokens do not depend on batch composition or on resuming.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from nex_transforms.params import UNIT_BITS

from ..records import TOKEN_STAT_NAMES, SparseRows
from .errors import CaptureError

from .models import MlpSite

TOPK_CONFIDENCE_K = 20
#: Positions per lm_head chunk when computing teacher-forced logit statistics.
LOGIT_CHUNK = 256


def sequence_seed(seed: int, prompt_id: str, sample_index: int) -> int:
    """A 63-bit seed for one (prompt, sample), stable across runs, batches and resumes."""
    digest = hashlib.sha256(f"{seed}:{prompt_id}:{sample_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


# --------------------------------------------------------------------------- statistics


def token_statistics(logits: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-position logit statistics (METHOD.md section 8) of raw logits ``[N, V]``.

    ``entropy`` = -sum p log p; ``self_certainty`` = -log V - mean_v log p_v;
    ``token_logprob`` = log p of ``tokens``; ``topk_confidence`` = -mean log p over the
    top-20 tokens. All float32 ``[N]``.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    probs = logp.exp()
    vocab = logp.shape[-1]
    entropy = -torch.where(probs > 0, probs * logp, torch.zeros_like(logp)).sum(-1)
    self_certainty = -float(np.log(vocab)) - logp.mean(-1)
    token_logprob = logp.gather(-1, tokens.long().view(-1, 1)).squeeze(-1)
    topk_confidence = -logp.topk(min(TOPK_CONFIDENCE_K, vocab), dim=-1).values.mean(-1)
    return {"entropy": entropy, "self_certainty": self_certainty,
            "token_logprob": token_logprob, "topk_confidence": topk_confidence}


def final_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The model's logits from final hidden states (lm_head plus known output scalings)."""
    logits = model.get_output_embeddings()(hidden)
    config = model.config
    scaling = getattr(config, "logits_scaling", None)
    if scaling:
        logits = logits / scaling
    scale = getattr(config, "logit_scale", None)
    if isinstance(scale, (int, float)) and scale != 1:
        logits = logits * scale
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


# --------------------------------------------------------------------------- reduction


def rows_from_candidates(values: np.ndarray, keys: np.ndarray, n_tokens: int, row_size: int,
                         top_k: int) -> tuple[np.ndarray, ...]:
    """Exact sparse rows from per-token candidates of one response.

    Args:
        values, keys: ``[T, C]`` per-token candidate values and packed keys, ``T >= n_tokens``.
        n_tokens: response length; tokens beyond it are ignored.
        row_size: tokens per row (the last row may be shorter).
        top_k: entries kept per row (positive values only).

    Returns:
        ``(row_entry_ptr, row_tokens, keys, masses, agg_keys, agg_masses)``: keys sorted
        ascending per row, masses float32, aggregate = per-key sums over rows.
    """
    n_rows = -(-n_tokens // row_size)
    row_tokens = np.array([min(row_size, n_tokens - r * row_size) for r in range(n_rows)],
                          dtype=np.int64)
    if n_rows == 0:
        empty_k, empty_m = np.zeros(0, np.uint32), np.zeros(0, np.float32)
        return np.zeros(1, np.int64), row_tokens, empty_k, empty_m, empty_k, empty_m
    width = values.shape[1]
    vals = np.zeros((n_rows * row_size, width), dtype=np.float32)
    keyz = np.zeros((n_rows * row_size, width), dtype=np.int64)
    vals[:n_tokens] = values[:n_tokens]
    keyz[:n_tokens] = keys[:n_tokens]
    vals = vals.reshape(n_rows, row_size * width)
    keyz = keyz.reshape(n_rows, row_size * width)
    k = min(top_k, vals.shape[1])
    if k < vals.shape[1]:
        part = np.argpartition(-vals, k - 1, axis=1)[:, :k]
        vals = np.take_along_axis(vals, part, axis=1)
        keyz = np.take_along_axis(keyz, part, axis=1)
    row_index = np.broadcast_to(np.arange(n_rows, dtype=np.int64)[:, None], vals.shape)
    keep = vals > 0
    combined = (row_index[keep] << 32) | keyz[keep]
    unique, inverse = np.unique(combined, return_inverse=True)
    sums = np.bincount(inverse, weights=vals[keep].astype(np.float64), minlength=unique.size)
    out_rows = unique >> 32
    out_keys = (unique & 0xFFFFFFFF).astype(np.uint32)
    ptr = np.zeros(n_rows + 1, dtype=np.int64)
    ptr[1:] = np.cumsum(np.bincount(out_rows, minlength=n_rows))
    agg_keys, agg_inverse = np.unique(out_keys, return_inverse=True)
    agg = np.bincount(agg_inverse, weights=sums, minlength=agg_keys.size)
    return (ptr, row_tokens, out_keys, sums.astype(np.float32),
            agg_keys.astype(np.uint32), agg.astype(np.float32))


class SparseCapture:
    """Forward pre-hooks on MLP sites that keep per-token top-K candidates of response tokens.

    Use as a context manager around the forwards of ONE batch whose responses start at
    position ``prompt_len``; every forward call advances the position counter by its
    sequence length (prefill, then one token a step; or one teacher-forced pass).
    """

    def __init__(self, sites: list[MlpSite], top_k: int, prompt_len: int):
        if not sites:
            raise CaptureError("capture sites: expected at least one MLP site, got none")
        self.sites = sites
        self.top_k = top_k
        self.prompt_len = prompt_len
        self.last_layer = sites[-1].layer
        self._fed = {site.layer: 0 for site in sites}
        self._running: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._start = 0
        self._pieces: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._handles: list = []

    def __enter__(self) -> "SparseCapture":
        for site in self.sites:
            self._handles.append(site.module.register_forward_pre_hook(self._hook(site.layer)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, layer: int):
        def hook(module, args):
            self._observe(layer, args[0])
        return hook

    @torch.no_grad()
    def _observe(self, layer: int, acts: torch.Tensor) -> None:
        seq = acts.shape[1]
        start = self._fed[layer]
        self._fed[layer] = start + seq
        skip = max(0, self.prompt_len - start)
        if skip >= seq:
            return
        acts = acts[:, skip:]
        finite = torch.isfinite(acts)
        nonfinite = (~finite).sum(-1, dtype=torch.int32)
        acts = torch.where(finite, acts, torch.zeros((), dtype=acts.dtype, device=acts.device))
        k = min(self.top_k, acts.shape[-1])
        values, units = acts.topk(k, dim=-1, sorted=False)
        values = values.float()
        keys = units.to(torch.int32) | (layer << UNIT_BITS)
        if self._running is None:
            self._start = start + skip - self.prompt_len
            self._running = (values, keys, nonfinite)
        else:
            run_values, run_keys, run_nonfinite = self._running
            values = torch.cat([run_values, values], dim=-1)
            keys = torch.cat([run_keys, keys], dim=-1)
            nonfinite = run_nonfinite + nonfinite
            if values.shape[-1] > self.top_k:
                values, index = values.topk(self.top_k, dim=-1, sorted=False)
                keys = keys.gather(-1, index)
            self._running = (values, keys, nonfinite)
        if layer == self.last_layer:
            self._pieces.append((self._start, *self._running))
            self._running = None

    def finish(self, lengths: list[int], row_size: int) -> list[tuple[SparseRows, int]]:
        """Sparse rows of every sequence of the batch, given its response lengths, each with
        its count of non-finite activations (set to 0 before the reduction)."""
        n_batch = len(lengths)
        if not self._pieces:
            values = np.zeros((n_batch, 0, 1), np.float32)
            keys = np.zeros((n_batch, 0, 1), np.int64)
            nonfinite = np.zeros((n_batch, 0), np.int64)
        else:
            pieces = sorted(self._pieces, key=lambda piece: piece[0])
            position = 0
            for start, piece_values, _, _ in pieces:
                if start != position:
                    raise RuntimeError(f"capture: expected token {position} next, got {start}")
                position += piece_values.shape[1]
            values = torch.cat([p[1] for p in pieces], dim=1).cpu().numpy()
            keys = torch.cat([p[2] for p in pieces], dim=1).cpu().numpy().astype(np.int64)
            nonfinite = torch.cat([p[3] for p in pieces], dim=1).cpu().numpy().astype(np.int64)
        self._pieces.clear()
        out = []
        for b, n_tokens in enumerate(lengths):
            if n_tokens > values.shape[1]:
                raise RuntimeError(f"capture: {values.shape[1]} tokens captured, {n_tokens} needed")
            arrays = rows_from_candidates(values[b], keys[b], n_tokens, row_size, self.top_k)
            out.append((SparseRows(*arrays), int(nonfinite[b, :n_tokens].sum())))
        return out


# --------------------------------------------------------------------------- sampling


class SeededSampler:
    """A logits processor that samples each sequence with its own generator.

    It returns scores with ``-inf`` everywhere except the chosen token, so greedy
    ``generate`` picks it. ``temperature == 0`` means greedy. If ``stats`` is set, the
    raw logits of each step (stashed by :class:`LogitStatsHook`) give per-token statistics.
    """

    def __init__(self, seeds: list[int], temperature: float, top_p: float, top_k: int,
                 device: torch.device, stats: "LogitStatsHook | None" = None):
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k
        self.stats = stats
        self.generators = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]

    @torch.no_grad()
    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.float()
        scores = torch.nan_to_num(scores, nan=float("-inf"))
        dead = torch.isneginf(scores).all(-1, keepdim=True)
        scores = torch.where(dead, torch.zeros_like(scores), scores)
        if self.temperature <= 0:
            chosen = scores.argmax(-1)
        else:
            warped = scores / self.temperature
            if self.top_k and self.top_k < warped.shape[-1]:
                kth = warped.topk(self.top_k, dim=-1).values[:, -1:]
                warped = warped.masked_fill(warped < kth, float("-inf"))
            if self.top_p < 1.0:
                sorted_logits, order = warped.sort(dim=-1, descending=True)
                sorted_probs = sorted_logits.softmax(-1)
                cumulative = sorted_probs.cumsum(-1)
                remove = (cumulative - sorted_probs) > self.top_p
                remove[:, 0] = False
                warped = warped.scatter(-1, order, sorted_logits.masked_fill(remove, float("-inf")))
            probs = warped.softmax(-1)
            chosen = torch.stack([torch.multinomial(probs[b], 1, generator=gen)[0]
                                  for b, gen in enumerate(self.generators)])
        if self.stats is not None:
            self.stats.record(chosen)
        out = torch.full_like(scores, float("-inf"))
        out.scatter_(-1, chosen.view(-1, 1), 0.0)
        return out


class LogitStatsHook:
    """A forward hook on the causal LM that stashes each step's raw last-position logits;
    :meth:`record` (called by the sampler with the chosen tokens) turns them into stats."""

    def __init__(self, model: nn.Module):
        self.model = model
        self._last: torch.Tensor | None = None
        self.steps: list[dict[str, torch.Tensor]] = []
        self._handle = None

    def __enter__(self) -> "LogitStatsHook":
        self._handle = self.model.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _hook(self, module, args, output) -> None:
        self._last = output.logits[:, -1]

    def record(self, chosen: torch.Tensor) -> None:
        self.steps.append(token_statistics(self._last, chosen))
        self._last = None

    def as_arrays(self) -> dict[str, np.ndarray]:
        """name -> ``[B, steps]`` float32."""
        if not self.steps:
            return {}
        return {name: torch.stack([s[name] for s in self.steps], dim=1).cpu().numpy()
                .astype(np.float32) for name in self.steps[0]}


# --------------------------------------------------------------------------- batches


@dataclass
class BatchResult:
    """One sequence of a batch: response tokens, finish reason, rows (None when nothing was
    captured), token stats and the non-finite activations set to 0 in its rows."""

    token_ids: np.ndarray
    finish_reason: str
    rows: SparseRows | None
    token_stats: dict[str, np.ndarray]
    nan_activations: int = 0


def left_pad(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token lists to a ``[B, P]`` batch with its attention mask."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for b, prompt in enumerate(prompts):
        if prompt:
            ids[b, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            mask[b, width - len(prompt):] = 1
    return ids.to(device), mask.to(device)


@torch.no_grad()
def sample_batch(model: nn.Module, prompts: list[list[int]], seeds: list[int], *,
                 max_new_tokens: int, temperature: float, top_p: float, top_k: int,
                 stop_ids: list[int], pad_id: int, sites: list[MlpSite] | None = None,
                 top_k_neurons: int = 500, row_size: int = 32) -> list[BatchResult]:
    """Sample one response per prompt with ``generate``; with ``sites`` also capture rows
    and per-token statistics on the fly (hooks only read; tokens are the same either way)."""
    from transformers import GenerationConfig, LogitsProcessorList

    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_id, device)
    capture = sites is not None
    # One extra step feeds the last kept token through the model, so its activations exist.
    steps = max_new_tokens + (1 if capture else 0)
    config = GenerationConfig(
        max_new_tokens=steps, do_sample=False, num_beams=1, eos_token_id=list(stop_ids),
        pad_token_id=pad_id, use_cache=True, repetition_penalty=1.0, no_repeat_ngram_size=0,
        min_new_tokens=0, renormalize_logits=False, suppress_tokens=[], begin_suppress_tokens=[],
        bad_words_ids=None, forced_bos_token_id=None, forced_eos_token_id=None)
    stats = LogitStatsHook(model) if capture else None
    sampler = SeededSampler(seeds, temperature, top_p, top_k, device, stats)
    if capture:
        with SparseCapture(sites, top_k_neurons, ids.shape[1]) as sparse, stats:
            sequences = model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                       logits_processor=LogitsProcessorList([sampler]))
    else:
        sequences = model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                   logits_processor=LogitsProcessorList([sampler]))
    generated = sequences[:, ids.shape[1]:].cpu().numpy()
    stop = np.isin(generated, np.asarray(stop_ids, dtype=generated.dtype))
    lengths, reasons = [], []
    for b in range(len(prompts)):
        hits = np.flatnonzero(stop[b, :max_new_tokens])
        if hits.size:
            lengths.append(int(hits[0]))
            reasons.append("stop")
        else:
            lengths.append(min(max_new_tokens, generated.shape[1]))
            reasons.append("length")
    rows = sparse.finish(lengths, row_size) if capture else [(None, 0)] * len(prompts)
    arrays = stats.as_arrays() if capture else {}
    return [BatchResult(generated[b, :lengths[b]].astype(np.int32), reasons[b], rows[b][0],
                        {name: values[b, :lengths[b]].copy() for name, values in arrays.items()},
                        rows[b][1])
            for b in range(len(prompts))]


@torch.no_grad()
def force_batch(model: nn.Module, prompts: list[list[int]], responses: list[list[int]], *,
                pad_id: int, sites: list[MlpSite], top_k_neurons: int = 500,
                row_size: int = 32) -> list[BatchResult]:
    """Teacher-force given responses: one forward over prompt + response with the hooks on,
    rows of the response positions and statistics from the logits that predicted them."""
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_id, device)
    prompt_len = ids.shape[1]
    width = max((len(r) for r in responses), default=0)
    resp = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    resp_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for b, response in enumerate(responses):
        if response:
            resp[b, :len(response)] = torch.tensor(response, dtype=torch.long)
            resp_mask[b, :len(response)] = 1
    ids = torch.cat([ids, resp.to(device)], dim=1)
    mask = torch.cat([mask, resp_mask.to(device)], dim=1)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    with SparseCapture(sites, top_k_neurons, prompt_len) as sparse:
        hidden = model.base_model(input_ids=ids, attention_mask=mask, position_ids=position_ids,
                                  use_cache=False).last_hidden_state
    rows = sparse.finish([len(r) for r in responses], row_size)
    names = None
    chunks: list[dict[str, torch.Tensor]] = []
    for start in range(0, width, LOGIT_CHUNK):
        stop = min(width, start + LOGIT_CHUNK)
        logits = final_logits(model, hidden[:, prompt_len - 1 + start:prompt_len - 1 + stop])
        flat = logits.reshape(-1, logits.shape[-1])
        chunks.append({k: v.view(len(prompts), stop - start)
                       for k, v in token_statistics(flat, resp[:, start:stop].to(device).reshape(-1)).items()})
        names = list(chunks[-1])
    stats = {name: torch.cat([c[name] for c in chunks], dim=1).cpu().numpy().astype(np.float32)
             for name in (names or [])}
    return [BatchResult(np.asarray(responses[b], dtype=np.int32), "forced", rows[b][0],
                        {name: values[b, :len(responses[b])].copy() for name, values in stats.items()}
                        if stats else {name: np.zeros(0, np.float32) for name in TOKEN_STAT_NAMES},
                        rows[b][1])
            for b in range(len(prompts))]
