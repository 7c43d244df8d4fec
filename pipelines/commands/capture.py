"""``nex capture``: prompts + model -> sparse MLP rows and logit statistics in a store.

The capture package loads torch and transformers only when a capture runs, so ``nex --help``
and ``nex capture --help`` stay light.
"""

from __future__ import annotations

import argparse
import json

from ..capture import CaptureConfig, run_capture, summary_dict
from ..capture.config import CAPTURE_DEFAULTS, DTYPE_NAMES, PROMPT_FORMATS
from ..store.fs import add_storage_options_flag, apply_storage_options


def config_from_args(args: argparse.Namespace):
    """The :class:`CaptureConfig` of parsed ``nex capture`` arguments (every field is a
    flag of the same name; ``--no-progress`` sets ``progress`` False)."""
    values = {name: getattr(args, name) for name in CaptureConfig.__dataclass_fields__
              if name != "progress"}
    return CaptureConfig(progress=not args.no_progress, **values)


def cmd_capture(args: argparse.Namespace) -> int:
    apply_storage_options(args.storage_options)

    summary = summary_dict(run_capture(config_from_args(args)))
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
    """Register ``nex capture``: one flag per :class:`CaptureConfig` field, defaulting to it."""
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
    d = CAPTURE_DEFAULTS  # every default is CaptureConfig's (pipelines/capture/config.py)
    p.add_argument("--samples", type=int, default=d["samples"],
                   help="responses per prompt (default %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=d["max_new_tokens"],
                   help="default %(default)s")
    p.add_argument("--temperature", type=float, default=d["temperature"],
                   help="0 = greedy (default %(default)s)")
    p.add_argument("--top-p", type=float, default=d["top_p"],
                   help="nucleus sampling (default %(default)s)")
    p.add_argument("--top-k", type=int, default=d["top_k"],
                   help="sampling top-k, 0 = off (default %(default)s)")
    p.add_argument("--seed", type=int, default=d["seed"],
                   help="sampling seed; each (prompt, sample) gets its own stream "
                        "(default %(default)s)")
    p.add_argument("--batch-size", type=int, default=d["batch_size"],
                   help="sequences per forward (default %(default)s)")
    p.add_argument("--device", default=d["device"], help="cpu or cuda[:N] (default %(default)s)")
    p.add_argument("--dtype", default=d["dtype"], choices=DTYPE_NAMES)
    p.add_argument("--top-k-neurons", type=int, default=d["top_k_neurons"],
                   help="(token, neuron) entries kept per row (default %(default)s)")
    p.add_argument("--row-size", type=int, default=d["row_size"],
                   help="tokens per row (default %(default)s)")
    p.add_argument("--layers", default=d["layers"], help="'all' or indices/ranges like '0-5,8'")
    p.add_argument("--limit", type=int, default=d["limit"], help="use the first N prompts")
    p.add_argument("--responses", default=d["responses"],
                   help="JSONL with prompt_id, response[, sample_index]: teacher-force these "
                        "responses instead of sampling")
    p.add_argument("--part-size", type=int, default=d["part_size"],
                   help="prompts per store part (unit of resume; default %(default)s)")
    p.add_argument("--shard", default=d["shard"],
                   help="I/N: this process takes parts I, I+N, ... (default %(default)s)")
    p.add_argument("--prompt-format", default=d["prompt_format"], choices=PROMPT_FORMATS,
                   help="auto: the chat template when the model has one, else the raw prompt; "
                        "fewshot: the benchmark's few-shot context")
    p.add_argument("--model-id", default=d["model_id"],
                   help="id used in trace ids (default from --model)")
    p.add_argument("--revision", default=d["revision"], help="hub revision of a hub model")
    p.add_argument("--id-column", default=d["id_column"])
    p.add_argument("--prompt-column", default=d["prompt_column"])
    p.add_argument("--answer-column", default=d["answer_column"],
                   help="reference answer column (default: answer or reference_answer if present)")
    p.add_argument("--hash-ids", action="store_true",
                   help="derive prompt ids from the prompt text (files without an id column)")
    p.add_argument("--overwrite", action="store_true",
                   help="on resume, recapture parts whose traces were written from a different "
                        "prompt text or given response (default: refuse, naming the field)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")

    add_storage_options_flag(p)
    p.set_defaults(func=cmd_capture)
