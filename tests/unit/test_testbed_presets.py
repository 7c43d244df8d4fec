"""Every testbed preset's prompts leave room for its token budget: a prompt longer than
``max_positions - max_new_tokens - 1`` would stop the capture stage part-way through a run."""

from __future__ import annotations

import pytest

from pipelines.testbed.presets import PRESETS
from pipelines.testbed.tokenizer import build_tokenizer, format_prompt
from pipelines.testbed.train import heldout_problems, training_problems

pytest.importorskip("transformers")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_prompts_fit_the_context_with_the_token_budget(name):
    preset = PRESETS[name]
    tokenizer = build_tokenizer()
    exclude = {p.question for p in training_problems(preset)}
    heldout = heldout_problems(preset, exclude=exclude)
    transfer = heldout_problems(preset, seed=preset.transfer_heldout_seed,
                                n=preset.n_transfer_prompts,
                                exclude=exclude | {p.question for p in heldout})
    longest = max(len(tokenizer(format_prompt(p.question), add_special_tokens=False)["input_ids"])
                  for p in heldout + transfer)
    assert longest + preset.max_new_tokens + 1 <= preset.max_positions, (name, longest)

