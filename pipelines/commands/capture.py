"""``nex capture``: prompts + model -> sparse MLP rows and logit statistics in a store.

torch and transformers are imported inside the command function, so ``nex --help``
stays light.
"""

from __future__ import annotations

import argparse
import json


def cmd_capture(args: argparse.Namespace) -> int:
    from ..capture import CaptureConfig, run_capture, summary_dict
    from ..store.fs import apply_storage_options

    apply_storage_options(args.storage_options)

    config = CaptureConfig(
        model=args.model, prompts=args.prompts, out=args.out, samples=args.samples,
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
        top_k=args.top_k, seed=args.seed, batch_size=args.batch_size, device=args.device,
        dtype=args.dtype, top_k_neurons=args.top_k_neurons, row_size=args.row_size,
        layers=args.layers, limit=args.limit, responses=args.responses,
        part_size=args.part_size, shard=args.shard, prompt_format=args.prompt_format,
        model_id=args.model_id, revision=args.revision, id_column=args.id_column,
        prompt_column=args.prompt_column, answer_column=args.answer_column,
        hash_ids=args.hash_ids, progress=not args.no_progress, overwrite=args.overwrite)
    summary = summary_dict(run_capture(config))
    if args.json:
        print(json.dumps(summary, sort_keys=True, default=str))
    else:
        print(f"capture {summary['capture']['model_id']} -> {summary['store']}: "
              f"{summary['parts_written']} parts written, {summary['parts_skipped']} skipped "
              f"(complete), {summary['traces_written']} traces, {summary['tokens_written']} tokens, "
              f"{summary['tokens_per_second']:.1f} tok/s, "
              f"{summary['nan_activations']} non-finite activations")
    return 0


def register(subparsers) -> None:
    """Register ``nex capture``."""
    p = subparsers.add_parser(
        "capture", help="generate (or teacher-force) responses and store sparse MLP rows",
        description="Turn prompts and a model into traces in an activation store: per row of "
                    "--row-size response tokens the top --top-k-neurons (token, neuron) MLP "
                    "activations (positive only, summed per neuron), a whole-response aggregate "
                    "and per-token logit statistics. Responses stop at EOS (not stored) or "
                    "--max-new-tokens. Resumable: rerun with the same arguments to finish a "
                    "killed capture; disjoint --shard values may write one store at once.")
    p.add_argument("--model", required=True,
                   help="smollm2-135m, qwen2.5-0.5b, a .gguf file, a Hugging Face model "
                        "directory or hub id")
    p.add_argument("--prompts", required=True,
                   help="gsm8k, math500, arithmetic, or a .jsonl/.parquet file with id and "
                        "prompt columns")
    p.add_argument("--out", required=True, help="activation store (created or appended to)")
    p.add_argument("--samples", type=int, default=1, help="responses per prompt (default 1)")
    p.add_argument("--max-new-tokens", type=int, default=512, help="default %(default)s")
    p.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (default %(default)s)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (default %(default)s)")
    p.add_argument("--top-k", type=int, default=0, help="sampling top-k, 0 = off (default 0)")
    p.add_argument("--seed", type=int, default=0,
                   help="sampling seed; each (prompt, sample) gets its own stream (default 0)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward (default 8)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--top-k-neurons", type=int, default=500,
                   help="(token, neuron) entries kept per row (default %(default)s)")
    p.add_argument("--row-size", type=int, default=32, help="tokens per row (default 32)")
    p.add_argument("--layers", default="all", help="'all' or indices/ranges like '0-5,8'")
    p.add_argument("--limit", type=int, default=None, help="use the first N prompts")
    p.add_argument("--responses", default=None,
                   help="JSONL with prompt_id, response[, sample_index]: teacher-force these "
                        "responses instead of sampling")
    p.add_argument("--part-size", type=int, default=16,
                   help="prompts per store part (unit of resume; default %(default)s)")
    p.add_argument("--shard", default="0/1",
                   help="I/N: this process takes parts I, I+N, ... (default 0/1)")
    p.add_argument("--prompt-format", default="auto", choices=["auto", "chat", "raw", "fewshot"],
                   help="auto: the chat template when the model has one, else the raw prompt; "
                        "fewshot: the benchmark's few-shot context")
    p.add_argument("--model-id", default=None, help="id used in trace ids (default from --model)")
    p.add_argument("--revision", default=None, help="hub revision of a hub model")
    p.add_argument("--id-column", default="id")
    p.add_argument("--prompt-column", default="prompt")
    p.add_argument("--answer-column", default=None,
                   help="reference answer column (default: answer or reference_answer if present)")
    p.add_argument("--hash-ids", action="store_true",
                   help="derive prompt ids from the prompt text (files without an id column)")
    p.add_argument("--overwrite", action="store_true",
                   help="on resume, recapture parts whose traces were written from a different "
                        "prompt text or given response (default: refuse, naming the field)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    from ..store.fs import add_storage_options_flag

    add_storage_options_flag(p)
    p.set_defaults(func=cmd_capture)
