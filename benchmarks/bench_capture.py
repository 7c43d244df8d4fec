"""Capture vs plain ``generate``: the cost of capturing MLP rows and logit statistics.

Runs SmolLM2-135M (the shipped ``smollm2-135m``) on a few GSM8K prompts, batch size 4,
the same prompts, sampling settings and seed, on the CPU by default:

* ``generate``: plain Hugging Face ``model.generate(do_sample=True, ...)``;
* ``generate (seeded sampler)``: the capture's own per-sequence seeded sampler, no hooks;
* ``capture``: ``run_capture`` end to end (hooks, per-token statistics, top-K rows, the
  store write and finalize), model already loaded.

Prints tokens/s, bytes per token and per entry on disk, peak memory, and LAST the ratio
capture / generate in seconds per generated token (target <= 1.15).

    .venv/bin/python benchmarks/bench_capture.py [--prompts 4] [--max-new-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each (best kept)")
    args = parser.parse_args()

    import torch

    from pipelines.capture import CaptureConfig, run_capture
    from pipelines.capture.engine import sample_batch, sequence_seed
    from pipelines.capture.job import Tokenized, stop_token_ids
    from pipelines.capture.models import load_model, resolve_model
    from pipelines.capture.prompts import load_prompts

    spec = resolve_model(args.model)
    t0 = time.perf_counter()
    model, tokenizer = load_model(spec, args.dtype, args.device)
    load_s = time.perf_counter() - t0
    prompts = load_prompts("gsm8k", limit=args.prompts)
    tokenized = Tokenized(tokenizer, "auto")
    prompt_ids = [tokenized.prompt(p) for p in prompts]
    stops = stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    print(f"model {spec.model_id} ({spec.revision}) loaded in {load_s:.1f}s; device {args.device}, "
          f"dtype {args.dtype}, torch threads {torch.get_num_threads()}")
    print(f"{len(prompts)} gsm8k prompts ({[len(p) for p in prompt_ids]} prompt tokens), batch "
          f"{args.batch_size}, max_new_tokens {args.max_new_tokens}, temperature "
          f"{args.temperature}, top_p {args.top_p}, seed {args.seed}")
    rss_after_load = _peak_mib()

    def batches():
        for start in range(0, len(prompt_ids), args.batch_size):
            yield start, prompt_ids[start:start + args.batch_size]

    def plain_generate() -> tuple[float, int]:
        from pipelines.capture.engine import left_pad

        torch.manual_seed(args.seed)
        tokens, t = 0, time.perf_counter()
        for _, batch in batches():
            ids, mask = left_pad(batch, pad_id, model.device)
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True,
                                     temperature=args.temperature, top_p=args.top_p, top_k=0,
                                     max_new_tokens=args.max_new_tokens, eos_token_id=stops,
                                     pad_token_id=pad_id)
            generated = out[:, ids.shape[1]:]
            for row in generated.tolist():
                stop = next((i for i, tok in enumerate(row) if tok in stops), len(row))
                tokens += stop
        return time.perf_counter() - t, tokens

    def seeded_generate() -> tuple[float, int]:
        tokens, t = 0, time.perf_counter()
        for start, batch in batches():
            seeds = [sequence_seed(args.seed, prompts[start + i].prompt_id, 0)
                     for i in range(len(batch))]
            results = sample_batch(model, batch, seeds, max_new_tokens=args.max_new_tokens,
                                   temperature=args.temperature, top_p=args.top_p, top_k=0,
                                   stop_ids=stops, pad_id=pad_id, sites=None)
            tokens += sum(r.token_ids.size for r in results)
        return time.perf_counter() - t, tokens

    store_root = Path(tempfile.mkdtemp(prefix="bench-capture-"))
    runs = {"capture": 0}

    def capture() -> tuple[float, int]:
        runs["capture"] += 1
        out = store_root / f"store{runs['capture']}"
        config = CaptureConfig(model=args.model, prompts="gsm8k", out=str(out), samples=1,
                               max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                               top_p=args.top_p, top_k=0, seed=args.seed,
                               batch_size=args.batch_size, device=args.device, dtype=args.dtype,
                               limit=args.prompts, progress=False)
        t = time.perf_counter()
        summary = run_capture(config, model_and_tokenizer=(model, tokenizer))
        return time.perf_counter() - t, summary.tokens_written

    # warm-up (first calls allocate and pick kernels)
    with torch.no_grad():
        model.generate(input_ids=torch.tensor([prompt_ids[0]]), max_new_tokens=4, do_sample=False,
                       pad_token_id=pad_id)

    # Interleaved repeats, best (lowest s/token) of each kept: this machine may be shared.
    kinds = (("generate", plain_generate), ("generate (seeded sampler)", seeded_generate),
             ("capture", capture))
    results: dict[str, tuple[float, int]] = {}
    peaks = {}
    for _ in range(args.repeats):
        for name, fn in kinds:
            seconds, tokens = fn()
            best = results.get(name)
            if best is None or seconds / max(tokens, 1) < best[0] / max(best[1], 1):
                results[name] = (seconds, tokens)
            peaks.setdefault(name, _peak_mib())  # ru_maxrss after the first run of each
    for name, _ in kinds:
        best = results[name]
        print(f"{name:28s} {best[1]:5d} tokens in {best[0]:7.2f}s = {best[1] / best[0]:7.2f} tok/s "
              f"({1000 * best[0] / max(best[1], 1):.1f} ms/token)")

    from pipelines.store import ActivationStore

    store = ActivationStore.open(store_root / f"store{runs['capture']}")
    corpus = store.read_corpus()
    table = store.manifest()
    disk = _dir_bytes(store.path)
    tokens = int(sum(table["response_tokens"].to_pylist()))
    print(f"store: {corpus.n_traces} traces, {corpus.n_rows} rows, {corpus.n_entries} entries "
          f"({corpus.n_entries / max(corpus.n_rows, 1):.0f} per row), {tokens} tokens, "
          f"{disk} bytes on disk = {disk / max(tokens, 1):.1f} bytes/token, "
          f"{disk / max(corpus.n_entries, 1):.2f} bytes/entry")
    print(f"peak RSS (ru_maxrss): after load {rss_after_load:.0f} MiB, after the generate runs "
          f"{peaks['generate (seeded sampler)']:.0f} MiB, after the first capture "
          f"{peaks['capture']:.0f} MiB (+{peaks['capture'] - peaks['generate (seeded sampler)']:.0f} "
          f"MiB for capture)")
    per_token = {k: v[0] / max(v[1], 1) for k, v in results.items()}
    summary = {"tok_s": {k: v[1] / v[0] for k, v in results.items()},
               "bytes_per_token": disk / max(tokens, 1),
               "bytes_per_entry": disk / max(corpus.n_entries, 1),
               "peak_rss_mib": peaks["capture"]}
    print("json:", json.dumps(summary, sort_keys=True))
    print(f"hooks+stats+store vs seeded generate: "
          f"{per_token['capture'] / per_token['generate (seeded sampler)']:.3f}x")
    print(f"ratio capture/generate (s per token): {per_token['capture'] / per_token['generate']:.3f}x "
          f"(target <= 1.15)")


if __name__ == "__main__":
    main()
