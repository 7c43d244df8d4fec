"""A resumed ``nex capture`` refuses inputs that differ from what a part was written with
(prompt text, given responses, capture parameters), naming the field; ``--overwrite``
recaptures. Tiny model built from a config, real store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from pipelines.testing.models import build_tiny_model  # noqa: E402
from pipelines.cli import main  # noqa: E402
from pipelines.store import ActivationStore  # noqa: E402

TEXTS = ["two plus three is", "she sold ten eggs", "one plus one is"]
RESPONSES = ["five", "and two eggs", "two"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "llama", "llama", seed=2)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def prompts_file(path: Path, texts=TEXTS) -> Path:
    return write_jsonl(path, [{"id": f"q{i}", "prompt": t} for i, t in enumerate(texts)])


def responses_file(path: Path, responses=RESPONSES) -> Path:
    return write_jsonl(path, [{"prompt_id": f"q{i}", "response": r}
                              for i, r in enumerate(responses)])


def capture(model, prompts, out, *extra) -> list[str]:
    return ["capture", "--model", str(model), "--prompts", str(prompts), "--out", str(out),
            "--top-k-neurons", "20", "--row-size", "4", "--part-size", "2", "--no-progress",
            *extra]


def snapshot(path: Path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


def one_error(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines()
             if line.startswith("nex: error:")]
    assert len(lines) == 1, lines
    return lines[0]


def test_resume_with_other_given_responses_is_refused_then_overwritten(tiny, tmp_path, capsys):
    prompts = prompts_file(tmp_path / "p.jsonl")
    out = tmp_path / "store"
    assert main(capture(tiny, prompts, out, "--responses",
                        str(responses_file(tmp_path / "r.jsonl")))) == 0
    before = snapshot(out)
    changed = responses_file(tmp_path / "r2.jsonl", [RESPONSES[0], "and three eggs", RESPONSES[2]])
    capsys.readouterr()
    assert main(capture(tiny, prompts, out, "--responses", str(changed))) == 2
    error = one_error(capsys)
    assert "trace llama:q1:0 given response" in error and "--overwrite" in error
    assert snapshot(out) == before                       # nothing written or removed
    assert main(capture(tiny, prompts, out, "--responses", str(changed), "--overwrite")) == 0
    store = ActivationStore.open(out)
    texts = dict(zip(store.manifest()["trace_id"].to_pylist(),
                     store.manifest()["text"].to_pylist()))
    assert sorted(texts) == ["llama:q0:0", "llama:q1:0", "llama:q2:0"]  # each trace once
    assert texts["llama:q1:0"] == "and three eggs" and texts["llama:q0:0"] == "five"
    # the same inputs again: a plain resume, nothing to do
    capsys.readouterr()
    assert main(capture(tiny, prompts, out, "--responses", str(changed), "--json")) == 0
    assert json.loads(capsys.readouterr().out)["parts_written"] == 0


def test_resume_with_other_prompt_text_or_parameters_is_refused(tiny, tmp_path, capsys):
    prompts = prompts_file(tmp_path / "p.jsonl")
    out = tmp_path / "store"
    args = ["--max-new-tokens", "6", "--temperature", "1.0"]
    assert main(capture(tiny, prompts, out, *args)) == 0
    before = snapshot(out)
    edited = prompts_file(tmp_path / "p2.jsonl", [TEXTS[0], TEXTS[1], "one plus two is"])
    capsys.readouterr()
    assert main(capture(tiny, edited, out, *args)) == 2
    assert "trace llama:q2:0 prompt text" in one_error(capsys)
    assert main(capture(tiny, prompts, out, "--max-new-tokens", "7", "--temperature", "1.0")) == 2
    assert "generation" in one_error(capsys)
    assert snapshot(out) == before
    assert main(capture(tiny, edited, out, *args, "--overwrite")) == 0
    store = ActivationStore.open(out)
    assert sorted(store.manifest()["trace_id"].to_pylist()) == \
        ["llama:q0:0", "llama:q1:0", "llama:q2:0"]
    inputs = store.part_summary(store.parts()[-1])["extra_metadata"]["inputs"]
    assert "llama:q2:0" in inputs
