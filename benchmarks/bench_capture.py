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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _generate import generate_tokens  # noqa: E402


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
    from pipelines.capture.tokens import Tokenized, pad_token_id, stop_token_ids
    from pipelines.capture.models import load_model, mlp_sites, resolve_model
    from pipelines.capture.prompts import load_prompts

    spec = resolve_model(args.model)
    t0 = time.perf_counter()
    model, tokenizer = load_model(spec, args.dtype, args.device)
    load_s = time.perf_counter() - t0
    prompts = load_prompts("gsm8k", limit=args.prompts)
    tokenized = Tokenized(tokenizer, "auto")
    prompt_ids = [tokenized.prompt(p) for p in prompts]
    stops = stop_token_ids(model, tokenizer)
    pad_id = pad_token_id(model, tokenizer)
    print(f"model {spec.model_id} ({spec.revision}) loaded in {load_s:.1f}s; device {args.device}, "
          f"dtype {args.dtype}, torch threads {torch.get_num_threads()}")
    print(f"{len(prompts)} gsm8k prompts ({[len(p) for p in prompt_ids]} prompt tokens), batch "
          f"{args.batch_size}, max_new_tokens {args.max_new_tokens}, temperature "
          f"{args.temperature}, top_p {args.top_p}, seed {args.seed}")
    rss_after_load = _peak_mib()

    def batches():
        for start in range(0, len(prompt_ids), args.batch_size):
            yield start, prompt_ids[start:start + args.batch_size]

    def plain_generate() -> int:
        torch.manual_seed(args.seed)
        return generate_tokens(model, prompt_ids, batch=args.batch_size, pad_id=pad_id,
                               stops=stops, temperature=args.temperature, top_p=args.top_p,
                               max_new_tokens=args.max_new_tokens)

    def seeded(sites) -> int:
        tokens = 0
        for start, batch in batches():
            seeds = [sequence_seed(args.seed, prompts[start + i].prompt_id, 0)
                     for i in range(len(batch))]
            results = sample_batch(model, batch, seeds, max_new_tokens=args.max_new_tokens,
                                   temperature=args.temperature, top_p=args.top_p, top_k=0,
                                   stop_ids=stops, pad_id=pad_id, sites=sites)
            tokens += sum(r.token_ids.size for r in results)
        return tokens

    store_root = Path(tempfile.mkdtemp(prefix="bench-capture-"))
    runs = {"capture": 0}

    def capture() -> int:
        runs["capture"] += 1
        out = store_root / f"store{runs['capture']}"
        config = CaptureConfig(model=args.model, prompts="gsm8k", out=str(out), samples=1,
                               max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                               top_p=args.top_p, top_k=0, seed=args.seed,
                               batch_size=args.batch_size, device=args.device, dtype=args.dtype,
                               limit=args.prompts, progress=False)
        return run_capture(config, model_and_tokenizer=(model, tokenizer)).tokens_written

    # warm-up (first calls allocate and pick kernels)
    with torch.no_grad():
        model.generate(input_ids=torch.tensor([prompt_ids[0]]), max_new_tokens=4, do_sample=False,
                       pad_token_id=pad_id)

    # Interleaved repeats; the best wall and the best CPU time per token of each kind are
    # kept (this machine may be shared: CPU time is less disturbed by other processes).
    all_sites = mlp_sites(model)
    kinds = (("generate", plain_generate),
             ("generate (seeded sampler)", lambda: seeded(None)),
             ("generate + hooks, no store", lambda: seeded(all_sites)),
             ("capture (end to end)", capture))
    wall: dict[str, tuple[float, int]] = {}
    cpu: dict[str, tuple[float, int]] = {}
    peaks = {}
    for _ in range(args.repeats):
        for name, fn in kinds:
            w0, c0 = time.perf_counter(), time.process_time()
            tokens = fn()
            seconds, cpu_seconds = time.perf_counter() - w0, time.process_time() - c0
            for table_, value in ((wall, seconds), (cpu, cpu_seconds)):
                best = table_.get(name)
                if best is None or value / max(tokens, 1) < best[0] / max(best[1], 1):
                    table_[name] = (value, tokens)
            peaks.setdefault(name, _peak_mib())  # ru_maxrss after the first run of each
    for name, _ in kinds:
        (seconds, tokens), (cpu_seconds, cpu_tokens) = wall[name], cpu[name]
        print(f"{name:28s} {tokens:5d} tokens in {seconds:7.2f}s = {tokens / seconds:7.2f} tok/s "
              f"({1000 * seconds / max(tokens, 1):.1f} ms/token wall, "
              f"{1000 * cpu_seconds / max(cpu_tokens, 1):.1f} ms/token CPU)")

    from pipelines.store import ActivationStore

    store = ActivationStore.open(store_root / f"store{runs['capture']}")
    corpus = store.read_corpus()
    table = store.manifest()
    disk = _dir_bytes(store.path)
    tokens = int(sum(table["response_tokens"].to_pylist()))
    arrays = _dir_bytes(store.path / "parts")
    print(f"store arrays only (parts/, without manifests and metadata): {arrays} bytes = "
          f"{arrays / max(tokens, 1):.1f} bytes/token, {arrays / max(corpus.n_entries, 1):.2f} "
          f"bytes/entry (payload per row entry: uint32 key + float16 mass, zstd)")
    print(f"store: {corpus.n_traces} traces, {corpus.n_rows} rows, {corpus.n_entries} entries "
          f"({corpus.n_entries / max(corpus.n_rows, 1):.0f} per row), {tokens} tokens, "
          f"{disk} bytes on disk = {disk / max(tokens, 1):.1f} bytes/token, "
          f"{disk / max(corpus.n_entries, 1):.2f} bytes/entry")
    print(f"peak RSS (ru_maxrss): after load {rss_after_load:.0f} MiB, after the generate runs "
          f"{peaks['generate (seeded sampler)']:.0f} MiB, after hooks "
          f"{peaks['generate + hooks, no store']:.0f} MiB, after the first capture "
          f"{peaks['capture (end to end)']:.0f} MiB")
    wall_pt = {k: v[0] / max(v[1], 1) for k, v in wall.items()}
    cpu_pt = {k: v[0] / max(v[1], 1) for k, v in cpu.items()}
    summary = {"tok_s": {k: v[1] / v[0] for k, v in wall.items()},
               "bytes_per_token": disk / max(tokens, 1),
               "bytes_per_entry": disk / max(corpus.n_entries, 1),
               "array_bytes_per_entry": arrays / max(corpus.n_entries, 1),
               "peak_rss_mib": max(peaks.values())}
    print("json:", json.dumps(summary, sort_keys=True))
    hooks = "generate + hooks, no store"
    print(f"hooks + statistics vs seeded generate: wall {wall_pt[hooks] / wall_pt['generate (seeded sampler)']:.3f}x, "
          f"CPU {cpu_pt[hooks] / cpu_pt['generate (seeded sampler)']:.3f}x")
    end = "capture (end to end)"
    print(f"ratio capture/generate (s per generated token): wall {wall_pt[end] / wall_pt['generate']:.3f}x, "
          f"CPU {cpu_pt[end] / cpu_pt['generate']:.3f}x (target <= 1.15)")

if __name__ == "__main__":
    main()
