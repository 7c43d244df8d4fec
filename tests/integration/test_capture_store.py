"""``nex capture`` end to end with tiny models and a real activation store: round trip,
teacher forcing, bad input, kill-and-resume and concurrent shards (real processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("zarr")

from pipelines.capture import CaptureConfig, run_capture  # noqa: E402
from pipelines.testing.models import build_tiny_model  # noqa: E402
from pipelines.cli import main  # noqa: E402
from pipelines.records import TOKEN_STAT_NAMES  # noqa: E402
from pipelines.store import SCHEMA_VERSION, ActivationStore  # noqa: E402
from pipelines.store.schema import TOKEN_STAT_LIMIT, TOKEN_STAT_STEP  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TEXTS = ["how many apples are left ?", "two plus three is", "she sold ten eggs",
         "what is five times six ?", "the ducks have four eggs", "he bought two cars",
         "how much money does she have ?", "one plus one is", "they gave three toys",
         "what is ten minus four ?", "the trees are twenty", "we have six pears"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "llama", "llama", seed=1)


def write_prompts(path: Path, texts=TEXTS, id_column="id") -> Path:
    with open(path, "w") as handle:
        for i, text in enumerate(texts):
            handle.write(json.dumps({id_column: f"q{i}", "prompt": text, "answer": str(i)}) + "\n")
    return path


def capture_args(model, prompts, out, *extra) -> list[str]:
    return ["capture", "--model", str(model), "--prompts", str(prompts), "--out", str(out),
            "--max-new-tokens", "40", "--top-k-neurons", "50", "--row-size", "8",
            "--temperature", "1.0", "--no-progress", *extra]


def run_cli(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("nex: error:")]


def test_capture_round_trip_through_the_store(tiny, tmp_path, capsys):
    prompts = write_prompts(tmp_path / "p.jsonl", TEXTS[:5])
    out = tmp_path / "store"
    code, _ = run_cli(capture_args(tiny, prompts, out, "--samples", "2", "--part-size", "2"), capsys)
    assert code == 0
    store = ActivationStore.open(out)
    table = store.manifest()
    ids = table["trace_id"].to_pylist()
    assert sorted(ids) == sorted(f"llama:q{i}:{s}" for i in range(5) for s in range(2))
    assert set(table["reference_answer"].to_pylist()) == {"0", "1", "2", "3", "4"}
    assert set(table["finish_reason"].to_pylist()) <= {"stop", "length"}
    capture = store.metadata["capture"]
    assert capture["top_k_neurons"] == 50 and capture["row_size"] == 8
    assert capture["activation_site"].startswith("gated:mlp.down_proj")
    assert capture["generation"]["max_new_tokens"] == 40 and capture["layers"] == [0, 1]
    assert len(store.parts()) == 3
    # the same capture in memory: the store keeps keys exactly and masses to float16
    records = {}

    class Memory:
        def has_part(self, part):
            return False

        def write_part(self, part, recs, extra_metadata=None):
            records.update({r.trace_id: r for r in recs})

        def manifest(self):
            return None

        def finalize(self):
            pass

    run_capture(CaptureConfig(model=str(tiny), prompts=str(prompts), out="-", samples=2,
                              max_new_tokens=40, top_k_neurons=50, row_size=8, temperature=1.0,
                              part_size=2, progress=False), store_factory=lambda p, m: Memory())
    corpus = store.read_corpus()
    stats = store.read_token_stats()
    for t, trace in enumerate(ids):
        record = records[trace]
        r0, r1 = corpus.trace_row_ptr[t], corpus.trace_row_ptr[t + 1]
        assert corpus.row_tokens[r0:r1].tolist() == record.row_tokens.tolist()
        e0, e1 = corpus.row_entry_ptr[r0], corpus.row_entry_ptr[r1]
        assert corpus.keys[e0:e1].tolist() == record.keys.tolist()
        np.testing.assert_allclose(corpus.masses[e0:e1], record.masses, rtol=2e-3)
        ptr, token_ids = stats["token_ids"]
        assert token_ids[ptr[t]:ptr[t + 1]].tolist() == record.token_ids.tolist()
        for name in TOKEN_STAT_NAMES:  # float16, running sums kept (see docs/STORE.md)
            exact = record.token_stats[name].astype(np.float64)
            stored = stats[name][1][ptr[t]:ptr[t + 1]].astype(np.float64)
            small = np.abs(exact) < TOKEN_STAT_LIMIT
            assert np.all(np.abs(stored - exact)[small] <= TOKEN_STAT_STEP)
            assert np.all(np.abs(stored - exact)[~small] <= 2.0 ** -11 * np.abs(exact[~small]))
            assert abs(stored[small].sum() - exact[small].sum()) <= TOKEN_STAT_STEP / 2 + 1e-9
    assert main(["store", "verify", str(out)]) == 0


def test_rerun_skips_complete_parts_and_teacher_forcing(tiny, tmp_path, capsys):
    prompts = write_prompts(tmp_path / "p.jsonl", TEXTS[:4])
    out = tmp_path / "store"
    assert main(capture_args(tiny, prompts, out, "--part-size", "2", "--json")) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["parts_written"] == 2 and first["finalized"]
    assert main(capture_args(tiny, prompts, out, "--part-size", "2", "--json")) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["parts_written"] == 0 and again["parts_skipped"] == 2
    # teacher-force the sampled responses: same rows as sampling with hooks on
    store = ActivationStore.open(out)
    table = store.manifest()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    ptr, token_ids = store.read_token_stats()["token_ids"]
    responses = tmp_path / "r.jsonl"
    with open(responses, "w") as handle:
        for t, row in enumerate(table.to_pylist()):
            text = tokenizer.decode(token_ids[ptr[t]:ptr[t + 1]].tolist(), skip_special_tokens=False)
            handle.write(json.dumps({"prompt_id": row["prompt_id"], "response": text,
                                     "sample_index": row["sample_index"]}) + "\n")
    forced_out = tmp_path / "forced"
    assert main(capture_args(tiny, prompts, forced_out, "--responses", str(responses))) == 0
    forced = ActivationStore.open(forced_out)
    ftable = forced.manifest()
    assert set(ftable["finish_reason"].to_pylist()) == {"forced"}
    assert forced.metadata["capture"]["mode"] == "forced"
    by_id = {r["trace_id"]: r for r in ftable.to_pylist()}
    sampled_tokens = store.read_token_stats()["token_ids"]
    forced_tokens = forced.read_token_stats()["token_ids"]
    for t, row in enumerate(table.to_pylist()):
        f = [r["trace_id"] for r in ftable.to_pylist()].index(row["trace_id"])
        assert by_id[row["trace_id"]]["text"] == row["text"]
        assert by_id[row["trace_id"]]["n_entries"] == row["n_entries"]
        a = sampled_tokens[1][sampled_tokens[0][t]:sampled_tokens[0][t + 1]]
        b = forced_tokens[1][forced_tokens[0][f]:forced_tokens[0][f + 1]]
        assert a.tolist() == b.tolist()  # word-level tokenizer: text round-trips to the same ids


def test_bad_input_gives_one_error_line_and_exit_2(tiny, tmp_path, capsys):
    good = write_prompts(tmp_path / "p.jsonl", TEXTS[:2])
    out = tmp_path / "store"
    assert main(capture_args(tiny, good, out)) == 0
    capsys.readouterr()
    before = sorted(p.name for p in (out / "manifests").iterdir())
    (tmp_path / "empty.jsonl").write_text("")
    no_id = write_prompts(tmp_path / "noid.jsonl", TEXTS[:2], id_column="key")
    long_prompt = write_prompts(tmp_path / "long.jsonl", [" ".join(["apples"] * 300)])
    moe = build_tiny_model(tmp_path / "moe", "mixtral")
    cases = [
        (capture_args(tiny, tmp_path / "empty.jsonl", out), "at least one prompt"),
        (capture_args(tiny, no_id, out), "an id column 'id'"),
        (capture_args(tiny, long_prompt, out), "within the model's context of 256 tokens"),
        (capture_args("no-such-model", good, out), "smollm2-135m"),
        (capture_args(moe, good, tmp_path / "moe-store"), "mixture-of-experts"),
        (capture_args(tiny, good, out, "--top-k-neurons", "60"), "capture parameters"),
        (capture_args(tiny, tmp_path / "missing.jsonl", out), "existing .jsonl/.parquet"),
        (capture_args(tiny, good, out, "--shard", "2/2"), "--shard"),
        (capture_args(tiny, good, out, "--layers", "0-9"), "--layers"),
    ]
    for argv, message in cases:
        code, err = run_cli(argv, capsys)
        assert code == 2, (argv, err)
        lines = error_lines(err)
        assert len(lines) == 1 and message in lines[0], (message, err)
    assert sorted(p.name for p in (out / "manifests").iterdir()) == before
    assert not (tmp_path / "moe-store").exists()
    # a store written by another schema version
    zarr_json = out / "zarr.json"
    node = json.loads(zarr_json.read_text())
    node["attributes"]["schema_version"] = SCHEMA_VERSION + 1
    zarr_json.write_text(json.dumps(node))
    code, err = run_cli(capture_args(tiny, good, out), capsys)
    assert code == 2 and "schema_version" in error_lines(err)[0]
    assert sorted(p.name for p in (out / "manifests").iterdir()) == before


def _spawn(argv: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "pipelines", *argv], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _trace_counts(store_path: Path) -> dict[str, int]:
    store = ActivationStore.open(store_path)
    counts: dict[str, int] = {}
    for trace in store.manifest()["trace_id"].to_pylist():
        counts[trace] = counts.get(trace, 0) + 1
    return counts


def _tokens_by_trace(store_path: Path) -> dict[str, list[int]]:
    store = ActivationStore.open(store_path)
    ptr, tokens = store.read_token_stats()["token_ids"]
    ids = store.manifest()["trace_id"].to_pylist()
    return {t: tokens[ptr[i]:ptr[i + 1]].tolist() for i, t in enumerate(ids)}


@pytest.mark.slow
def test_sigkill_then_resume_gives_every_trace_once(tiny, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl")
    out = tmp_path / "store"
    argv = capture_args(tiny, prompts, out, "--samples", "2", "--part-size", "1",
                        "--max-new-tokens", "64")
    proc = _spawn(argv)
    manifests = out / "manifests"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if manifests.is_dir() and any(p.suffix == ".parquet" for p in manifests.iterdir()):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "capture finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done = len([p for p in manifests.iterdir() if p.suffix == ".parquet"])
    assert 1 <= done < len(TEXTS)
    rerun = _spawn(argv)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    counts = _trace_counts(out)
    assert counts == {f"llama:q{i}:{s}": 1 for i in range(len(TEXTS)) for s in range(2)}
    # an uninterrupted run gives the same tokens (seeds per prompt and sample)
    clean = tmp_path / "clean"
    assert main(capture_args(tiny, prompts, clean, "--samples", "2", "--part-size", "3",
                             "--max-new-tokens", "64")) == 0
    assert _tokens_by_trace(clean) == _tokens_by_trace(out)
    assert main(["store", "verify", str(out)]) == 0


@pytest.mark.slow
def test_two_concurrent_shards_write_one_store(tiny, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl")
    out = tmp_path / "store"
    base = capture_args(tiny, prompts, out, "--samples", "2", "--part-size", "2")
    procs = [_spawn(base + ["--shard", f"{i}/2"]) for i in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    counts = _trace_counts(out)
    assert counts == {f"llama:q{i}:{s}": 1 for i in range(len(TEXTS)) for s in range(2)}
    store = ActivationStore.open(out)
    assert store.consolidated_manifest() is not None  # the last shard finalized
    shards = {store.part_summary(p)["extra_metadata"]["shard"] for p in store.parts()}
    assert shards == {"0/2", "1/2"}
    assert main(["store", "verify", str(out)]) == 0


def test_nan_activations_are_counted_in_the_part_metadata(tiny, tmp_path):
    import torch

    from pipelines.capture.models import load_model, resolve_model

    model, tokenizer = load_model(resolve_model(str(tiny)))
    with torch.no_grad():  # unit 5 of layer 1 is NaN at every position (so are the logits)
        model.model.layers[1].mlp.up_proj.weight[5] = float("nan")
    prompts = write_prompts(tmp_path / "p.jsonl", TEXTS[:3])
    out = tmp_path / "store"
    summary = run_capture(CaptureConfig(model=str(tiny), prompts=str(prompts), out=str(out),
                                        samples=2, max_new_tokens=20, top_k_neurons=40,
                                        row_size=8, progress=False),
                          model_and_tokenizer=(model, tokenizer))
    store = ActivationStore.open(out)
    tokens = int(sum(store.manifest()["response_tokens"].to_pylist()))
    assert tokens > 0 and summary.nan_activations == tokens  # one NaN unit per response token
    (part,) = store.parts()
    assert store.part_summary(part)["extra_metadata"]["nan_activations"] == tokens
    corpus = store.read_corpus()
    assert np.isfinite(corpus.masses.astype(np.float64)).all() and corpus.n_entries > 0
    assert ((1 << 16) | 5) not in set(corpus.keys.tolist())


def test_extending_the_limit_adds_each_new_trace_once(tiny, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", TEXTS[:6])
    out = tmp_path / "store"
    assert main(capture_args(tiny, prompts, out, "--part-size", "2", "--limit", "3")) == 0
    assert main(capture_args(tiny, prompts, out, "--part-size", "2", "--limit", "6")) == 0
    assert _trace_counts(out) == {f"llama:q{i}:0": 1 for i in range(6)}
    assert main(["store", "verify", str(out)]) == 0


def test_notes_go_to_the_log_callback_and_by_default_to_stderr(tiny, tmp_path, capsys):
    prompts = write_prompts(tmp_path / "p.jsonl", TEXTS[:2])
    out = tmp_path / "store"

    def config(shard: str) -> CaptureConfig:
        return CaptureConfig(model=str(tiny), prompts=str(prompts), out=str(out), samples=2,
                             temperature=0, max_new_tokens=4, top_k_neurons=20, row_size=4,
                             part_size=1, shard=shard, progress=False)

    lines: list[str] = []
    first = run_capture(config("0/2"), log=lines.append)
    assert lines == [
        "nex: note: --temperature 0 is greedy: every sample of a prompt is the same",
        "nex: note: 1 parts of other shards are not complete yet; the store is finalized by "
        "the last shard to finish (or `nex store finalize`)"]
    assert not first.finalized and "nex:" not in capsys.readouterr().err
    last = run_capture(config("1/2"))
    assert last.finalized
    assert capsys.readouterr().err.splitlines() == lines[:1]
