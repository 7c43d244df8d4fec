"""The baseline the capture benchmarks compare against: plain batched Hugging Face
``generate`` (sampling, no hooks, no store), as a user would call it.

Kept apart from ``_shared`` on purpose: that module pins every library to one thread at
import, and the capture benchmarks measure torch with its own thread count.
"""

from __future__ import annotations


def generate_tokens(model, sequences: list[list[int]], *, batch: int, pad_id: int,
                    stops: list[int], temperature: float, top_p: float,
                    max_new_tokens: int) -> int:
    """Sample a response for each prompt of ``sequences`` (token ids) with
    ``model.generate`` in left-padded batches of ``batch``; the number of generated tokens
    up to each response's first stop token (what a capture of the same responses keeps)."""
    import torch

    from pipelines.capture.engine import left_pad

    device = next(model.parameters()).device
    tokens = 0
    for start in range(0, len(sequences), batch):
        ids, mask = left_pad(sequences[start:start + batch], pad_id, device)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True,
                                 temperature=temperature, top_p=top_p, top_k=0,
                                 max_new_tokens=max_new_tokens, eos_token_id=stops,
                                 pad_token_id=pad_id)
        for row in out[:, ids.shape[1]:].tolist():
            tokens += next((i for i, tok in enumerate(row) if tok in stops), len(row))
    return tokens
