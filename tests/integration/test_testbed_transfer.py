"""`nex transfer` on tiny Qwen3 models: exactly the chosen rows and columns change."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.testbed.errors import TestbedError
from pipelines.testbed.transfer import choose_sets, paired_bootstrap


def _model(folder: Path, seed: int) -> Path:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from pipelines.testbed.tokenizer import build_tokenizer
    from pipelines.testbed.train import save_checkpoint

    torch.manual_seed(seed)
    config = Qwen3Config(vocab_size=83, hidden_size=8, intermediate_size=12, num_hidden_layers=3,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=4,
                         tie_word_embeddings=True, pad_token_id=0, eos_token_id=1)
    return save_checkpoint(Qwen3ForCausalLM(config), build_tokenizer(), folder, {"seed": seed})


def _load(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


def test_transfer_changes_exactly_the_chosen_rows_and_columns(tmp_path):
    from pipelines.cli import main

    donor, recipient = _model(tmp_path / "donor", 1), _model(tmp_path / "recipient", 2)
    chosen = {(0, 3), (0, 11), (2, 0), (2, 5)}
    keys = ",".join(str(layer << 16 | unit) for layer, unit in sorted(chosen))
    assert main(["transfer", "--donor", str(donor), "--recipient", str(recipient),
                 "--keys", keys, "--out", str(tmp_path / "out")]) == 0
    d, r, o = _load(donor), _load(recipient), _load(tmp_path / "out")
    assert set(o) == set(r)
    changed = 0
    for name, got in o.items():
        expected = r[name].copy()
        parts = name.split(".")
        if ".mlp." in name:
            layer, kind = int(parts[2]), parts[4]
            for unit in (u for (l, u) in chosen if l == layer):
                if kind in ("gate_proj", "up_proj"):
                    expected[unit, :] = d[name][unit, :]
                else:
                    expected[:, unit] = d[name][:, unit]
        np.testing.assert_array_equal(got, expected, err_msg=name)
        changed += int((got != r[name]).sum())
    # 4 neurons x (gate row + up row + down column) x 8 hidden values, all different
    assert changed == 4 * 3 * 8
    # the folder loads and keeps the recipient's config and tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert AutoTokenizer.from_pretrained(tmp_path / "out").chat_template


def test_transfer_rejects_out_of_range_keys(tmp_path, capsys):
    from pipelines.cli import main

    donor, recipient = _model(tmp_path / "donor", 1), _model(tmp_path / "recipient", 2)
    status = main(["transfer", "--donor", str(donor), "--recipient", str(recipient),
                   "--keys", str(3 << 16 | 1), "--out", str(tmp_path / "out")])
    assert status == 2 and "layer < 3 and unit < 12" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _neurons():
    return {"model_id": ["m"] * 7 + ["other"],
            "key": [1, 2, 3, 65536, 65537, 65538, 4, 5],
            "weight": [0.9, 0.9, -0.5, -0.99, 0.2, -0.99, 0.0, 0.95],
            "eff": [5.0, 7.0, 1.0, 0.0, 2.0, 0.0, 1.0, 9.0],
            "red": [0.0, 0.0, 3.0, 8.0, 1.0, 9.0, 1.0, 0.0]}


def test_choose_sets_orders_by_weight_then_credit():
    sets, k = choose_sets(_neurons(), "m", 2, n_layers=2, width=4, draws=3, seed=0)
    assert k == 2
    assert sets["effective"].tolist() == [1, 2]            # weight 0.9 twice: larger eff first
    assert sets["redundant"].tolist() == [65536, 65538]    # weight -0.99 twice
    randoms = [sets[f"random-{i}"] for i in range(3)]
    for keys in randoms:
        assert len(set(keys.tolist())) == 2
        assert all((key >> 16) < 2 and (key & 0xFFFF) < 4 for key in keys.tolist())
    again, _ = choose_sets(_neurons(), "m", 2, n_layers=2, width=4, draws=3, seed=0)
    assert all(np.array_equal(again[n], sets[n]) for n in sets)
    sets, k = choose_sets(_neurons(), "m", 10, n_layers=2, width=4, draws=1, seed=0)
    assert k == 3 and len(sets["random-0"]) == 3           # limited by 3 negative weights
    with pytest.raises(TestbedError, match="credited neurons"):
        choose_sets(_neurons(), "nobody", 2, n_layers=2, width=4, draws=1, seed=0)


def test_paired_bootstrap():
    base = np.array([1, 0, 0, 1, 0, 0, 1, 0], dtype=float)
    other = np.array([1, 1, 0, 1, 1, 0, 1, 0], dtype=float)
    result = paired_bootstrap(base, other, n_boot=500, seed=1)
    assert result["delta"] == pytest.approx(0.25)
    assert result["low"] <= 0.25 <= result["high"] and result["low"] >= 0.0
    same = paired_bootstrap(base, base, n_boot=100)
    assert same["delta"] == same["low"] == same["high"] == 0.0
