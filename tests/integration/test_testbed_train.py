"""Training a (very) small testbed model: deterministic, loadable, not repeated."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np

from pipelines.testbed.presets import get_preset
from pipelines.testbed.train import train

TINY = replace(get_preset("ci"), hidden_size=32, intermediate_size=64, num_layers=1,
               num_heads=2, num_kv_heads=1, head_dim=16, steps=4, batch_size=2,
               warmup_steps=1, checkpoints=(0, 2, 4))


def _weights(folder) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


def test_training_is_deterministic_and_resumable(tmp_path):
    first = train(TINY, tmp_path / "a", threads=1)
    second = train(TINY, tmp_path / "b", threads=1)
    assert sorted(first.checkpoints) == [0, 2, 4]
    assert first.losses == second.losses and len(first.losses) == 4
    for step in (0, 2, 4):
        a, b = (_weights(tmp_path / x / "checkpoints" / f"step-{step:06d}") for x in "ab")
        assert all(np.array_equal(a[k], b[k]) for k in a)
    final = tmp_path / "a" / "checkpoints" / "step-000004"
    card = json.loads((final / "testbed.json").read_text())
    assert card["step"] == 4 and card["kind"] == "checkpoint"
    assert card["train_loss"] == first.losses[-1]
    stamp = (final / "model.safetensors").stat().st_mtime_ns
    again = train(TINY, tmp_path / "a", threads=1)          # finished: not repeated
    assert again.losses == first.losses
    assert (final / "model.safetensors").stat().st_mtime_ns == stamp
    # the capture loads the checkpoint unchanged (chat template, eos, MLP sites)
    from pipelines.capture.models import load_model, mlp_sites, resolve_model

    model, tokenizer = load_model(resolve_model(str(final)), progress=False)
    assert len(mlp_sites(model)) == 1 and tokenizer.chat_template
