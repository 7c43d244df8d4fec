"""Text for the explorer: a response's rows as text, and the prompts it answered.

The store keeps each response's token ids, its decoded text and its rows' token counts,
but not the text of each row, nor the prompt. Rows are decoded with the model's tokenizer
(:func:`load_tokenizer`: ``--tokenizer``, else what the capture recorded); prompts come
from the capture's prompt source (``--prompts``), checked against the digest of the
prompt text the capture recorded for each trace.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from nex_transforms import NexError

from .inputs import ExploreError

#: Tokens decoded before a piece so that its first token decodes as it does in context
#: (leading spaces, bytes of a character split over tokens).
LEAD_TOKENS = 16


class Detokenizer:
    """Decodes spans of a response's token ids as they read inside the whole response.

    A span ``[a, b)`` is the text ``decode(ids[a - L:b])`` adds to ``decode(ids[a - L:a])``
    (``L`` = :data:`LEAD_TOKENS`), so concatenated spans read like the whole text. Without
    a tokenizer every token is shown as its id.
    """

    def __init__(self, tokenizer=None, source: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.source = source

    @property
    def available(self) -> bool:
        return self.tokenizer is not None

    def _decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)

    def span(self, ids, a: int, b: int) -> str:
        """The text of tokens ``[a, b)`` of ``ids`` (token ids in brackets without a
        tokenizer)."""
        if b <= a:
            return ""
        if self.tokenizer is None:
            return " ".join(f"[{int(i)}]" for i in ids[a:b])
        lead = max(0, a - LEAD_TOKENS)
        head = self._decode(ids[lead:a]) if a > lead else ""
        full = self._decode(ids[lead:b])
        return full[len(head):] if full.startswith(head) else self._decode(ids[a:b])

    def pieces(self, ids, a: int, b: int) -> list[str]:
        """The text of each token of ``[a, b)``."""
        return [self.span(ids, i, i + 1) for i in range(a, b)]

    def whole(self, ids) -> str:
        return self.span(ids, 0, len(ids))


def _from_pretrained(path: str, gguf_file: str | None = None):
    import transformers
    from transformers import AutoTokenizer

    transformers.utils.logging.set_verbosity_error()
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    return AutoTokenizer.from_pretrained(path, **kwargs)


def _given_tokenizer(given: str):
    path = Path(given).expanduser()
    try:
        if path.is_file() and path.suffix == ".gguf":
            return _from_pretrained(str(path.parent), path.name)
        return _from_pretrained(str(path) if path.exists() else given)
    except ImportError as err:
        raise ExploreError(f"--tokenizer {given}: expected transformers installed "
                           f"(pip install 'nex-pipeline[capture]'), got {err}") from None
    except Exception as err:  # loaders raise many types
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise ExploreError(f"--tokenizer {given}: expected a tokenizer folder, .gguf file or "
                           f"name transformers can load, got {first}") from None


def _recorded_tokenizer(model_id: str, capture: dict):
    """The tokenizer of a capture's model (a shipped short name, or a model file or folder
    that still exists), or ``(None, why)``."""
    try:
        from ..capture.model_cache import CONVERTED_MARKER, converted_dir
        from ..capture.models import SHORT_NAMES, ModelSpec, resolve_model
    except ImportError as err:
        return None, f"the capture libraries are not installed ({err})"
    source, gguf = capture.get("model_source"), capture.get("gguf_file")
    try:
        if model_id in SHORT_NAMES:
            spec = resolve_model(model_id)
        elif source and Path(source).exists():
            spec = ModelSpec(model_id, str(source), gguf, str(capture.get("model_revision")))
        else:
            return None, ("the capture recorded no model source" if not source else
                          f"the capture's model source {source} is not on this machine")
        cached = converted_dir(spec, str(capture.get("dtype") or "float32"))
        if cached is not None and (cached / CONVERTED_MARKER).is_file():
            return _from_pretrained(str(cached)), str(cached)
        return _from_pretrained(spec.path, spec.gguf_file), \
            str(Path(spec.path) / spec.gguf_file) if spec.gguf_file else spec.path
    except Exception as err:  # noqa: BLE001 - no tokenizer is not fatal: ids are shown
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        return None, f"loading the capture's tokenizer failed ({first})"


def load_tokenizer(store, model_id: str, given: str | None = None) -> tuple[Detokenizer, str | None]:
    """A :class:`Detokenizer` for ``model_id``'s responses and a note when there is no
    tokenizer (rows then show token ids). ``given`` (``--tokenizer``) must load."""
    if given:
        return Detokenizer(_given_tokenizer(given), given), None
    capture = store.capture_metadata(model_id) or {}
    tokenizer, where = _recorded_tokenizer(model_id, capture)
    if tokenizer is None:
        return Detokenizer(None), (f"row text needs the model's tokenizer: {where}; rerun with "
                                   "--tokenizer PATH (token ids are shown instead)")
    return Detokenizer(tokenizer, where), None


# --------------------------------------------------------------------------- prompts
def _sha(text: str | None) -> str | None:
    return None if text is None else hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class PromptTexts:
    """Prompt texts by trace id, and a note for pages when they are not known."""

    by_trace: dict
    note: str | None = None


def recorded_prompt_digests(store) -> dict:
    """``trace id -> sha256 of the prompt text`` the capture recorded (traces written by
    other tools have none)."""
    out = {}
    for summary in store.part_summaries().values():
        inputs = (summary.get("extra_metadata") or {}).get("inputs") or {}
        for trace, digests in inputs.items():
            if isinstance(digests, dict) and digests.get("prompt_text"):
                out[str(trace)] = str(digests["prompt_text"])
    return out


def load_prompt_texts(source: str | None, store, traces: list[dict]) -> PromptTexts:
    """The prompt of each trace (rows with ``trace_id`` and ``prompt_id``) from the prompt
    source ``source`` (a benchmark name or a JSONL/Parquet file, as given to ``nex
    capture``). Each text must have the digest the capture recorded for that trace (the
    plain question or its few-shot form, whichever the model saw)."""
    if source is None:
        return PromptTexts({}, "the store keeps no prompt text; pass --prompts SOURCE (the "
                               "prompt source given to nex capture) to show it")
    try:
        from ..capture.prompts import load_prompts
    except ImportError as err:
        raise ExploreError(f"--prompts {source}: expected the capture libraries installed "
                           f"(pip install 'nex-pipeline[capture]'), got {err}") from None
    try:
        items = {p.prompt_id: p for p in load_prompts(source)}
    except NexError as err:
        raise ExploreError(f"--prompts {source}: expected a prompt source, got {err}") from None
    digests = recorded_prompt_digests(store)
    out = {}
    for trace in traces:
        trace_id, prompt_id = str(trace["trace_id"]), str(trace["prompt_id"])
        item = items.get(prompt_id)
        if item is None:
            raise ExploreError(f"--prompts {source}: expected prompt {prompt_id!r} (of trace "
                               f"{trace_id}), got no such prompt id")
        recorded = digests.get(trace_id)
        if recorded is None or recorded == _sha(item.text):
            out[trace_id] = item.text
        elif recorded == _sha(item.fewshot):
            out[trace_id] = item.fewshot
        else:
            raise ExploreError(f"--prompts {source}: expected the prompt text trace {trace_id} "
                               f"was captured from (sha256 {recorded[:12]}), got a different "
                               f"text for prompt {prompt_id!r}")
    return PromptTexts(out)


__all__ = ["Detokenizer", "PromptTexts", "load_prompt_texts", "load_tokenizer",
           "recorded_prompt_digests"]
