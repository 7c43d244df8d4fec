"""Prompt files for the real-model results (``docs/results.md``).

The shipped ``arithmetic`` set asks bare questions (``"6 + 8 / 2 ="``) that a small chat
model answers in a handful of tokens: too few rows for E/X cycles. This writes a JSONL
prompt file (``id``, ``prompt``, ``answer``) from a shipped benchmark, with an instruction
to work step by step and end with "The answer is N", keeping the benchmark's ids and
gold answers. Which prompts are taken is fixed by the rule below, never by results.

    python -m pipelines.evaluation.prompt_sets arithmetic --limit 16 --out prompts.jsonl
    python -m pipelines.evaluation.prompt_sets gsm8k --limit 16 --out prompts.jsonl
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from ..capture.prompts import load_benchmark

INSTRUCTION = " Work it out step by step, then finish with 'The answer is N'."
SETS = ("arithmetic", "arithmetic-mixed", "gsm8k")


def prompt_set(name: str, limit: int) -> list[dict]:
    """Rows of a prompt set: ``arithmetic`` = the first ``limit`` arithmetic questions
    (the set begins with one-operator questions); ``arithmetic-mixed`` = the first ``limit`` arithmetic
    questions with two or more operators (order of operations matters); ``gsm8k`` = the
    first ``limit`` GSM8K test questions. Each with the instruction appended."""
    if name == "arithmetic":
        rows = [{"id": i.prompt_id, "answer": i.reference_answer,
                 "prompt": f"Calculate {i.text.rstrip(' =')}." + INSTRUCTION}
                for i in load_benchmark("arithmetic")]
    elif name == "arithmetic-mixed":
        items = [i for i in load_benchmark("arithmetic")
                 if len(re.findall(r"[-+*/]", i.text)) >= 2]
        rows = [{"id": i.prompt_id, "answer": i.reference_answer,
                 "prompt": f"Calculate {i.text.rstrip(' =')}." + INSTRUCTION} for i in items]
    elif name == "gsm8k":
        rows = [{"id": i.prompt_id, "answer": i.reference_answer,
                 "prompt": i.text + INSTRUCTION} for i in load_benchmark("gsm8k")]
    else:
        raise ValueError(f"prompt set: expected one of {SETS}, got {name!r}")
    return rows[:limit]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=SETS)
    parser.add_argument("--limit", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    rows = prompt_set(args.name, args.limit)
    Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(rows)} prompts written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
