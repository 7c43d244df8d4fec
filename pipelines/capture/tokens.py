"""Tokenising a capture's inputs: prompt formats, stop and pad ids, and the length check
that refuses a prompt the model's context cannot hold before anything is written."""

from __future__ import annotations

from dataclasses import dataclass, field

from nex_transforms.errors import expected

from .errors import PromptError
from .plan import Job, Part
from .prompts import PromptItem


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


def pad_token_id(model, tokenizer) -> int:
    """The tokenizer's pad id, else the first stop id, else 0."""
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return (stop_token_ids(model, tokenizer) or [0])[0]


@dataclass
class JobTokens:
    """Token ids of the jobs of some parts: per prompt id, and per (prompt id, sample)
    for given responses."""

    prompts: dict[str, list[int]] = field(default_factory=dict)
    responses: dict[tuple[str, int], list[int]] = field(default_factory=dict)

    def prompt(self, job: Job) -> list[int]:
        return self.prompts[job.prompt.prompt_id]

    def response(self, job: Job) -> list[int]:
        return self.responses[(job.prompt.prompt_id, job.sample_index)]


def tokenize_parts(parts: list[Part], tokenized: Tokenized, context: int | None,
                   max_new_tokens: int) -> JobTokens:
    """Tokenise the prompts (and given responses) of ``parts`` and check that each job fits
    the model's ``context`` (None: no limit): a sampled one with ``max_new_tokens + 1``
    more tokens, a teacher-forced one with its response.

    Raises:
        PromptError: an empty prompt, or a job longer than the context.
    """
    tokens = JobTokens()
    for part in parts:
        for job in part.jobs:
            pid = job.prompt.prompt_id
            if pid not in tokens.prompts:
                tokens.prompts[pid] = tokenized.prompt(job.prompt)
                if not tokens.prompts[pid]:
                    raise PromptError(expected(f"prompt {pid}", "at least one token", "none"))
            need = len(tokens.prompts[pid])
            if job.response is not None:
                tokens.responses[(pid, job.sample_index)] = tokenized.response(job.response.text)
                need += len(tokens.response(job))
                what = "prompt + given response"
            else:
                need += max_new_tokens + 1
                what = "prompt + max_new_tokens + 1"
            if context is not None and need > context:
                raise PromptError(expected(f"prompt {pid} ({len(tokens.prompts[pid])} tokens)",
                                           f"{what} within the model's context of {context} tokens",
                                           f"{need} tokens"))
    return tokens


__all__ = ["JobTokens", "Tokenized", "pad_token_id", "stop_token_ids", "tokenize_parts"]
