"""Synthetic multi-step arithmetic word problems with long step-by-step solutions.

A problem is a short story about one quantity (a person's apples, coins, ...) that goes
through 2-5 operations (buy bags of k items, give some away, double, ...). Its solution
works through the story one step per line, keeps a running total, sometimes checks a
step by the inverse operation and sometimes restarts from the beginning to recount
(re-deriving every intermediate quantity), and ends with the answer in the fixed
format ``#### N``. Solutions are about 120-500 characters, i.e. as many tokens under the
character-level tokenizer of :mod:`pipelines.testbed.tokenizer`.

Everything is deterministic in the seed (``random.Random(seed)``); held-out sets use a
different seed from the training stream.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

NAMES = ("Ana", "Ben", "Cleo", "Dan", "Eva", "Finn", "Gus", "Hana", "Ivo", "Jade", "Kai", "Lea")
ITEMS = ("apples", "coins", "books", "eggs", "stamps", "pens", "shells", "cards")
CONTAINERS = ("bags", "boxes", "packs", "jars")
#: Every character a question or a solution can contain (the tokenizer's alphabet).
ALPHABET = ("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
            " .,:;?!'*+-=#/()\n")
ANSWER_RE = re.compile(r"####\s*(-?\d+)")
MAX_VALUE = 60


@dataclass(frozen=True)
class Problem:
    """One problem: a stable id, the question, the reference solution and the answer."""

    problem_id: str
    question: str
    solution: str
    answer: int
    n_steps: int


def _operation(rng: random.Random, value: int, item: str, pronoun: str) -> tuple[str, str, int, str]:
    """One story step: (question sentence, solution lines, new value, inverse check)."""
    choices = []
    if value + 4 <= MAX_VALUE:
        choices.append("find")
    if value + 8 <= MAX_VALUE:
        choices.append("buy_groups")
    if value >= 3:
        choices += ["give", "lose"]
    if 2 * value <= MAX_VALUE and value <= 15:
        choices.append("double")
    kind = rng.choice(choices)
    if kind == "buy_groups":
        container = rng.choice(CONTAINERS)
        groups = rng.randint(2, min(3, (MAX_VALUE - value) // 4))
        each = rng.randint(2, min(5, (MAX_VALUE - value) // groups))
        added = groups * each
        new = value + added
        sentence = f"{pronoun} buys {groups} {container} with {each} {item} in each."
        lines = (f"{groups} {container} of {each} {item} is {groups}*{each}={added} {item}.\n"
                 f"Now: {value}+{added}={new} {item}.")
        check = f"Check: {new}-{added}={value}. ok"
        return sentence, lines, new, check
    if kind == "find":
        added = rng.randint(2, min(9, MAX_VALUE - value))
        new = value + added
        sentence = f"{pronoun} finds {added} more {item}."
        lines = f"{pronoun} finds {added} {item}.\nNow: {value}+{added}={new} {item}."
        return sentence, lines, new, f"Check: {new}-{added}={value}. ok"
    if kind == "give":
        other = rng.choice(NAMES)
        taken = rng.randint(1, min(9, value - 1))
        new = value - taken
        sentence = f"{pronoun} gives {taken} {item} to {other}."
        lines = f"{pronoun} gives away {taken} {item}.\nNow: {value}-{taken}={new} {item}."
        return sentence, lines, new, f"Check: {new}+{taken}={value}. ok"
    if kind == "lose":
        taken = rng.randint(1, min(9, value - 1))
        new = value - taken
        sentence = f"{pronoun} loses {taken} {item}."
        lines = f"{pronoun} loses {taken} {item}.\nNow: {value}-{taken}={new} {item}."
        return sentence, lines, new, f"Check: {new}+{taken}={value}. ok"
    new = 2 * value
    sentence = f"{pronoun} doubles the {item}."
    lines = f"{pronoun} doubles the {item}.\nNow: 2*{value}={new} {item}."
    return sentence, lines, new, f"Check: {new}/2={value}. ok"


def make_problem(rng: random.Random, problem_id: str, min_steps: int = 2,
                 max_steps: int = 5) -> Problem:
    """Draw one problem from ``rng`` (its whole state advances deterministically)."""
    name = rng.choice(NAMES)
    pronoun = "She" if name in ("Ana", "Cleo", "Eva", "Hana", "Jade", "Lea") else "He"
    item = rng.choice(ITEMS)
    start = rng.randint(2, 15)
    n_steps = rng.randint(min_steps, max_steps)
    sentences = [f"{name} has {start} {item}."]
    lines = [f"Start: {name} has {start} {item}."]
    values = [start]
    step_lines: list[str] = []
    value = start
    for step in range(1, n_steps + 1):
        sentence, work, value, check = _operation(rng, value, item, pronoun)
        sentences.append(sentence)
        block = f"Step {step}: {work}"
        step_lines.append(block)
        values.append(value)
        lines.append(block)
        if rng.random() < 0.35:
            lines.append(check)
    # An optional restart: recount from the start, reusing every intermediate quantity.
    if rng.random() < 0.4:
        recount = " ".join(str(v) for v in values)
        lines.append(f"Wait, let me recount from the start: {recount}.")
        lines.append(f"So {name} has {value} {item}.")
    else:
        lines.append(f"So {name} has {value} {item}.")
    sentences.append(f"How many {item} does {name} have now?")
    lines.append(f"#### {value}")
    return Problem(problem_id, " ".join(sentences), "\n".join(lines), value, n_steps)


def generate_problems(seed: int, n: int, prefix: str = "p", min_steps: int = 2,
                      max_steps: int = 5, exclude: set[str] | frozenset = frozenset()) -> list[Problem]:
    """``n`` problems from ``seed``; questions in ``exclude`` are skipped (held-out sets
    exclude the training questions). Ids are ``{prefix}{seed}-{i}``."""
    rng = random.Random(seed)
    out: list[Problem] = []
    i = 0
    while len(out) < n:
        problem = make_problem(rng, f"{prefix}{seed}-{len(out)}", min_steps, max_steps)
        i += 1
        if problem.question in exclude:
            continue
        out.append(problem)
    return out


def extract_answer(text: str) -> int | None:
    """The integer after the last ``####`` of a response (as ``nex eval --grader hash``
    reads it), or None when there is none."""
    found = ANSWER_RE.findall(text)
    return int(found[-1]) if found else None


def is_correct(text: str, answer: int | str) -> bool:
    """Whether a response's ``#### N`` answer equals ``answer``."""
    got = extract_answer(text)
    return got is not None and str(got) == str(int(answer))


def prompt_records(problems: list[Problem]) -> list[dict]:
    """Rows of a prompts JSONL for ``nex capture --prompts``: id, prompt, answer."""
    return [{"id": p.problem_id, "prompt": p.question, "answer": str(p.answer),
             "n_steps": p.n_steps} for p in problems]
