"""`nex merge`: mergekit outputs against hand-computed tensors on tiny Qwen3 models.

Every merge goes through the CLI (family YAML -> mergekit -> model folder); the expected
tensors are computed here with numpy from the inputs' weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


def _config():
    from transformers import Qwen3Config

    return Qwen3Config(vocab_size=83, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=4,
                       tie_word_embeddings=True, pad_token_id=0, eos_token_id=1)


def _save(folder: Path, tensors: dict[str, np.ndarray]) -> Path:
    import torch
    from transformers import Qwen3ForCausalLM

    from pipelines.testbed.tokenizer import build_tokenizer
    from pipelines.testbed.train import save_checkpoint

    model = Qwen3ForCausalLM(_config())
    state = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
             for k, v in tensors.items()}
    model.load_state_dict(state, strict=False)
    save_checkpoint(model, build_tokenizer(), folder, {"kind": "test"})
    return folder


def _names_shapes() -> dict[str, tuple]:
    from transformers import Qwen3ForCausalLM

    return {k: tuple(v.shape) for k, v in Qwen3ForCausalLM(_config()).state_dict().items()
            if k != "lm_head.weight"}


def _random(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=s).astype(np.float32) for k, s in _names_shapes().items()}


def _load(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(folder / "model.safetensors"))


def _merge(tmp: Path, family: str) -> Path:
    from pipelines.cli import main

    (tmp / "family.yaml").write_text(family)
    assert main(["merge", str(tmp / "family.yaml"), "--out", str(tmp / "out")]) == 0
    return tmp / "out"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    a, b = _random(1), _random(2)
    zero = {k: np.zeros_like(v) for k, v in a.items()}
    twice = {k: 2 * v for k, v in a.items()}
    # TIES: three task vectors over a zero base (merged deltas are then exact).
    d1, d2, d3 = _random(3), _random(4), _random(5)
    d1["model.layers.0.mlp.down_proj.weight"][0, :3] = [1.0, -2.0, 3.0]
    d2["model.layers.0.mlp.down_proj.weight"][0, :3] = [2.0, 1.0, -1.0]
    d3["model.layers.0.mlp.down_proj.weight"][0, :3] = [-4.0, 1.0, -1.0]
    arrays = {"a": a, "b": b, "zero": zero, "twice": twice, "d1": d1, "d2": d2, "d3": d3}
    for name, tensors in arrays.items():
        _save(root / name, tensors)
    return root, arrays


def test_linear(models, tmp_path):
    root, arrays = models
    out = _merge(tmp_path, f"""
variants:
  - name: lin
    method: linear
    models: [{{model: {root}/a, weight: 1.0}}, {{model: {root}/b, weight: 3.0}}]
""")
    merged = _load(out / "lin")
    for name, a in arrays["a"].items():
        np.testing.assert_allclose(merged[name], (1 * a + 3 * arrays["b"][name]) / 4,
                                   rtol=1e-6, atol=1e-6)
    card = json.loads((out / "lin" / "testbed.json").read_text())
    assert card["recipe"]["method"] == "linear"
    assert card["recipe"]["mergekit_config"]["merge_method"] == "linear"
    assert (out / "lin" / "tokenizer.json").is_file() and (out / "lin" / "README.md").is_file()


def _slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """SLERP of two tensors taken as flat vectors (mergekit interpolates each tensor as
    one vector), linear when they are (anti)parallel."""
    x, y = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    dot = np.clip(np.dot(x / np.linalg.norm(x), y / np.linalg.norm(y)), -1, 1)
    if abs(dot) > 0.9995:
        out = (1 - t) * x + t * y
    else:
        theta = np.arccos(dot)
        out = (np.sin((1 - t) * theta) * x + np.sin(t * theta) * y) / np.sin(theta)
    return out.reshape(a.shape)


def test_slerp_endpoints_parallel_and_interior(models, tmp_path):
    root, arrays = models
    out = _merge(tmp_path, f"""
variants:
  - {{name: t0, method: slerp, models: [{root}/a, {root}/b], t: 0.0}}
  - {{name: t1, method: slerp, models: [{root}/a, {root}/b], t: 1.0}}
  - {{name: par, method: slerp, models: [{root}/a, {root}/twice], t: 0.25}}
  - {{name: mid, method: slerp, models: [{root}/a, {root}/b], t: 0.3}}
""")
    t0, t1, par, mid = (_load(out / n) for n in ("t0", "t1", "par", "mid"))
    for name, a in arrays["a"].items():
        b = arrays["b"][name]
        np.testing.assert_array_equal(t0[name], a)          # t = 0: the base, exactly
        np.testing.assert_array_equal(t1[name], b)          # t = 1: the other, exactly
        np.testing.assert_allclose(par[name], 1.25 * a, rtol=1e-6, atol=1e-6)  # parallel: lerp
        np.testing.assert_allclose(mid[name], _slerp(a, b, 0.3), rtol=1e-5, atol=1e-6)
    # a hand-checked case: orthogonal unit vectors at t = 0.5 give cos(pi/4) of each
    e1, e2 = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    np.testing.assert_allclose(_slerp(e1, e2, 0.5), [0.5 ** 0.5] * 2)


def test_ties_sign_election(models, tmp_path):
    root, arrays = models
    out = _merge(tmp_path, f"""
base: {root}/zero
variants:
  - name: ties
    method: ties
    models: [{{model: {root}/d1, weight: 1.0, density: 1.0}},
             {{model: {root}/d2, weight: 1.0, density: 1.0}},
             {{model: {root}/d3, weight: 1.0, density: 1.0}}]
""")
    merged = _load(out / "ties")
    name = "model.layers.0.mlp.down_proj.weight"
    # column 0: sum -1 -> sign -, only -4 agrees; column 1: sum 1 -> +, mean of 1, 1;
    # column 2: sum 1 -> +, only 3 agrees
    np.testing.assert_allclose(merged[name][0, :3], [-4.0, 1.0, 3.0], rtol=1e-6)
    for name, d1 in arrays["d1"].items():
        deltas = np.stack([d1, arrays["d2"][name], arrays["d3"][name]]).astype(np.float64)
        elected = np.where(deltas.sum(axis=0) >= 0, 1.0, -1.0)
        agree = np.sign(deltas) == elected
        expected = (deltas * agree).sum(axis=0) / np.maximum(agree.sum(axis=0), 1)
        np.testing.assert_allclose(merged[name], expected, rtol=1e-5, atol=1e-6)


def test_dare_rescaling(models, tmp_path):
    root, arrays = models
    out = _merge(tmp_path, f"""
base: {root}/zero
variants:
  - name: full
    method: dare_linear
    models: [{{model: {root}/a, weight: 1.0, density: 1.0}}]
  - name: half
    method: dare_linear
    seed: 3
    models: [{{model: {root}/a, weight: 1.0, density: 0.5}}]
""")
    full, half = _load(out / "full"), _load(out / "half")
    kept_total = entries = 0
    for name, a in arrays["a"].items():
        np.testing.assert_array_equal(full[name], a)          # density 1: nothing dropped
        kept = half[name] != 0
        kept_total, entries = kept_total + int(kept.sum()), entries + a.size
        if not kept.any():
            continue
        # every kept entry is the task vector times one factor per tensor, which
        # mergekit 0.1.5 sets to restore the L1 norm (1/density in expectation)
        scale = half[name][kept] / a[kept]
        np.testing.assert_allclose(scale, scale[0], rtol=1e-5)
        np.testing.assert_allclose(scale[0], np.abs(a).sum() / np.abs(a[kept]).sum(), rtol=1e-5)
        np.testing.assert_allclose(np.abs(half[name]).sum(), np.abs(a).sum(), rtol=1e-5)
    assert 0.4 < kept_total / entries < 0.6


def test_merge_rerun_keeps_finished_variants(models, tmp_path):
    root, _ = models
    family = f"""
variants:
  - {{name: t0, method: slerp, models: [{root}/a, {root}/b], t: 0.0}}
"""
    out = _merge(tmp_path, family)
    stamp = (out / "t0" / "model.safetensors").stat().st_mtime_ns
    _merge(tmp_path, family)
    assert (out / "t0" / "model.safetensors").stat().st_mtime_ns == stamp


@pytest.mark.parametrize("family, message", [
    ("variants: []", "non-empty 'variants'"),
    ("variants:\n  - {name: x, method: magic, models: [a]}", "method: expected one of"),
    ("variants:\n  - {name: x, method: slerp, models: [MODEL, MODEL], t: 2}", "t: expected a number"),
    ("variants:\n  - {name: x, method: ties, models: [MODEL]}", "base: expected a base"),
    ("variants:\n  - {name: x, method: linear, models: [nowhere]}", "config.json"),
])
def test_bad_family_files(models, tmp_path, capsys, family, message):
    from pipelines.cli import main

    root, _ = models
    (tmp_path / "f.yaml").write_text(family.replace("MODEL", str(root / "a")))
    assert main(["merge", str(tmp_path / "f.yaml"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nex: error: ") and message in err and err.count("\n") == 1
