"""CLI errors of the testbed commands: one `nex: error:` line, exit status 2."""

from __future__ import annotations

import json

import pytest

from pipelines.cli import main


@pytest.mark.parametrize("argv, message", [
    (["testbed", "train", "--preset", "huge", "--out", "OUT"], "--preset: expected one of"),
    (["testbed", "run", "--out", "OUT", "--stages", "train,bake"], "--stages: expected"),
    (["testbed", "run", "--out", "OUT", "--checkpoints", "0,7"], "--checkpoints: expected"),
    (["testbed", "run", "--out", "OUT", "--threads", "0"], "--threads: expected"),
    (["testbed", "problems", "--seed", "1", "--n", "0", "--out", "OUT/p.jsonl"], "--n: expected"),
    (["transfer", "--donor", "D", "--recipient", "R", "--out", "OUT"], "expected --keys, or"),
    (["transfer", "--donor", "D", "--recipient", "R", "--out", "OUT", "--keys", "1,x"],
     "--keys: expected"),
    (["transfer", "--donor", "D", "--recipient", "R", "--out", "OUT", "--keys", "1"],
     "model.safetensors"),
    (["annotate", "agree", "NOPE.jsonl", "--tables", "T"], "annotations: expected"),
    (["merge", "NOPE.yaml", "--out", "OUT"], "family file: expected"),
])
def test_bad_input_gives_one_error_line(tmp_path, capsys, argv, message):
    argv = [a.replace("OUT", str(tmp_path / "out")) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("nex: error: ") and err.count("\n") == 1, err
    assert message in err
    assert not (tmp_path / "out").exists()


def test_problems_command(tmp_path, capsys):
    path = tmp_path / "p.jsonl"
    assert main(["testbed", "problems", "--seed", "4", "--n", "3", "--out", str(path)]) == 0
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["p4-0", "p4-1", "p4-2"]
    assert all(r["answer"].isdigit() and r["prompt"].endswith("now?") for r in rows)
