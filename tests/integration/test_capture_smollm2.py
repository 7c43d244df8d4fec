"""A real capture: SmolLM2-135M (shipped GGUF) on GSM8K prompts, scored with the NEX core."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from nex_transforms import accumulate, learn_weights, score_corpus  # noqa: E402
from pipelines.cli import main  # noqa: E402
from pipelines.records import TOKEN_STAT_NAMES  # noqa: E402

from tests.shipped import needs_smollm2_gsm8k as needs_packages  # noqa: E402


@pytest.mark.slow
@needs_packages
def test_smollm2_gsm8k_capture_gives_a_finite_nex(tmp_path, capsys):
    from pipelines.store import ActivationStore

    out = tmp_path / "store"
    argv = ["capture", "--model", "smollm2-135m", "--prompts", "gsm8k", "--limit", "3",
            "--samples", "2", "--max-new-tokens", "48", "--row-size", "4", "--batch-size", "6",
            "--temperature", "0.8", "--seed", "1", "--out", str(out), "--no-progress", "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["traces_written"] == 6 and summary["nan_activations"] == 0
    capture = summary["capture"]
    assert capture["model_id"] == "smollm2-135m" and capture["prompt_format"] == "chat"
    assert capture["architecture"] == "LlamaForCausalLM" and capture["n_model_layers"] == 30
    assert capture["intermediate_size"] == 1536

    store = ActivationStore.open(out)
    table = store.manifest()
    assert sorted(table["trace_id"].to_pylist()) == sorted(
        f"smollm2-135m:gsm8k-{i}:{s}" for i in range(3) for s in range(2))
    assert all(a for a in table["reference_answer"].to_pylist())
    assert all(t.strip() for t in table["text"].to_pylist())
    corpus = store.read_corpus()
    assert corpus.n_traces == 6 and corpus.n_rows >= 6 * 3
    per_row = np.diff(corpus.row_entry_ptr)
    assert per_row.min() > 0 and per_row.max() <= 500
    layers = np.unique(corpus.keys >> 16)
    assert layers.min() >= 0 and layers.max() <= 29 and layers.size > 5
    stats = store.read_token_stats()
    for name in TOKEN_STAT_NAMES:
        assert np.isfinite(stats[name][1]).all(), name
    assert (stats["token_logprob"][1] <= 0).all()

    # NEX: finite (responses this short seldom have two valid cycles, so weights may be 0)
    acc = accumulate(corpus)
    assert acc.n_analysed == 6
    weights = acc.finalize(1e-6)
    result = score_corpus(corpus, weights)
    assert np.isfinite(result.nex) and 0.0 <= result.nex <= 1.0
    assert np.isfinite(learn_weights(corpus)).all()
    assert main(["store", "verify", str(out)]) == 0

    # The real model, teacher-forced on the stored tokens of one trace as a single
    # sequence, gives the rows captured during batched, padded, KV-cached sampling.
    from pipelines.capture.engine import force_batch
    from pipelines.capture.tokens import Tokenized
    from pipelines.capture.models import load_model, mlp_sites, resolve_model
    from pipelines.capture.prompts import load_prompts

    model, tokenizer = load_model(resolve_model("smollm2-135m"))
    prompt = Tokenized(tokenizer, "auto").prompt(load_prompts("gsm8k", limit=1)[0])
    t = table["trace_id"].to_pylist().index("smollm2-135m:gsm8k-0:1")
    ptr, token_ids = stats["token_ids"]
    response = token_ids[ptr[t]:ptr[t + 1]].tolist()
    forced = force_batch(model, [prompt], [response], pad_id=tokenizer.pad_token_id,
                         sites=mlp_sites(model), top_k_neurons=500, row_size=4)[0]
    a0, a1 = corpus.aggregates.row_ptr[t], corpus.aggregates.row_ptr[t + 1]
    stored = dict(zip(corpus.aggregates.keys[a0:a1].tolist(),
                      corpus.aggregates.masses[a0:a1].astype(np.float64)))
    fresh = dict(zip(forced.rows.agg_keys.tolist(), forced.rows.agg_masses.astype(np.float64)))
    shared = set(stored) & set(fresh)
    assert len(shared) >= 0.99 * max(len(stored), len(fresh))
    total = sum(fresh.values())
    diff = sum(abs(stored.get(k, 0.0) - fresh.get(k, 0.0)) for k in set(stored) | set(fresh))
    assert diff <= 2e-3 * total  # float16 storage
    # stored statistics are quantised (schema 2, pipelines.store.schema.TOKEN_STAT_STEP):
    # each value within one step, running sums within half a step; 2e-3 is recomputation noise
    from pipelines.store.schema import TOKEN_STAT_STEP

    for name in TOKEN_STAT_NAMES:
        fresh_values = np.asarray(forced.token_stats[name], dtype=np.float64)
        stored_values = stats[name][1][ptr[t]:ptr[t + 1]].astype(np.float64)
        np.testing.assert_allclose(stored_values, fresh_values, rtol=2e-3,
                                   atol=TOKEN_STAT_STEP + 2e-3, err_msg=name)
        assert abs(stored_values.mean() - fresh_values.mean()) <= \
            TOKEN_STAT_STEP / 2 / len(fresh_values) + 2e-3, name
