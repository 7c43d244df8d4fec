"""The testbed's problems, tokenizer and presets (no training)."""

from __future__ import annotations

import json
import re

import pytest

from pipelines.testbed.presets import PRESETS, get_preset
from pipelines.testbed.problems import (ALPHABET, extract_answer, generate_problems,
                                        is_correct, prompt_records)
from pipelines.testbed.errors import TestbedError


def _replay(solution: str) -> int:
    """Recompute the answer from the solution's own arithmetic, line by line."""
    value = None
    for line in solution.splitlines():
        start = re.match(r"Start: \w+ has (\d+) ", line)
        if start:
            value = int(start.group(1))
        now = re.match(r"Now: (\d+)([+*-])(\d+)=(\d+) ", line)
        if now:
            a, op, b, c = int(now.group(1)), now.group(2), int(now.group(3)), int(now.group(4))
            assert {"+": a + b, "-": a - b, "*": a * b}[op] == c, line
            assert (a if op != "*" else b) == value, line
            value = c
    return value


def test_problems_are_deterministic_and_consistent():
    first, again = generate_problems(7, 200), generate_problems(7, 200)
    assert first == again
    assert generate_problems(8, 5) != first[:5]
    for problem in first:
        assert is_correct(problem.solution, problem.answer)
        assert _replay(problem.solution) == problem.answer
        assert problem.solution.endswith(f"#### {problem.answer}")
        assert 0 < problem.answer <= 60
        assert set(problem.question + problem.solution) <= set(ALPHABET)


def test_solutions_are_long_and_varied():
    problems = generate_problems(0, 500)
    lengths = [len(p.solution) for p in problems]
    assert min(lengths) >= 100 and sum(lengths) / len(lengths) > 200
    assert sum("Check:" in p.solution for p in problems) > 100
    assert sum("recount" in p.solution for p in problems) > 100
    assert len({p.n_steps for p in problems}) == 4


def test_heldout_excludes_given_questions():
    train = generate_problems(0, 300)
    seen = {p.question for p in train}
    held = generate_problems(0, 50, prefix="h", exclude=seen)
    assert not ({p.question for p in held} & seen)
    assert held[0].problem_id == "h0-0"


def test_extract_answer():
    assert extract_answer("Now: 2+3=5 eggs.\n#### 5") == 5
    assert extract_answer("#### 5\n#### 7") == 7
    assert extract_answer("#### -3") == -3
    assert extract_answer("So he has 5 eggs.") is None
    assert not is_correct("#### 50", 5) and is_correct("####5", "5")


def test_prompt_records_round_trip(tmp_path):
    from pipelines.capture.prompts import load_prompt_file
    from pipelines.testbed.train import write_prompts

    problems = generate_problems(3, 4)
    assert prompt_records(problems)[0]["answer"] == str(problems[0].answer)
    path = write_prompts(problems, tmp_path / "p.jsonl")
    items = load_prompt_file(path)
    assert [i.prompt_id for i in items] == [p.problem_id for p in problems]
    assert [i.reference_answer for i in items] == [str(p.answer) for p in problems]
    assert json.loads(path.read_text().splitlines()[0])["prompt"] == problems[0].question


def test_tokenizer_is_character_level_with_the_training_layout():
    from pipelines.testbed.tokenizer import EOS_ID, PAD_ID, build_tokenizer, format_prompt

    tokenizer = build_tokenizer()
    assert len(tokenizer) < 100 and tokenizer.pad_token_id == PAD_ID
    assert tokenizer.eos_token_id == EOS_ID
    for problem in generate_problems(1, 20):
        text = format_prompt(problem.question) + problem.solution
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert len(ids) == len(text) and tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == text
        rendered = tokenizer.apply_chat_template([{"role": "user", "content": problem.question}],
                                                 add_generation_prompt=True, tokenize=False)
        assert rendered == format_prompt(problem.question)


def test_presets():
    assert set(PRESETS) == {"ci", "results", "regime"}
    ci = get_preset("ci")
    assert ci.checkpoints[-1] == ci.steps and len([c for c in ci.checkpoints if c]) >= 4
    longer = get_preset("ci", steps=300)
    assert longer.steps == 300 and longer.checkpoints == ci.checkpoints + (300,)
    shorter = get_preset("ci", steps=50)
    assert shorter.checkpoints == (0, 30, 50) and shorter.warmup_steps == 5
    with pytest.raises(TestbedError, match="expected one of"):
        get_preset("huge")
    with pytest.raises(TestbedError, match="steps within"):
        get_preset("ci", checkpoints=(0, 500))
