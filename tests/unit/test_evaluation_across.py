"""Across models on the prompts they share: hand-made tables folders with different
prompt sets and sample counts, every number recomputed by plain loops and scipy."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from pipelines import tables
from pipelines.cli import main
from pipelines.evaluation.evaluate import evaluate, load_eval_data
from pipelines.evaluation.report import _markdown

BASELINE_COLUMNS = ("mean_entropy", "mean_self_certainty", "mean_token_logprob",
                    "deepconf_mean_confidence", "deepconf_lowest_group_confidence")

# model -> prompt -> number of samples
PLAN = {
    "a": {"p0": 3, "p1": 3, "p2": 3, "p3": 3},
    "b": {"p1": 2, "p2": 3, "p3": 3, "p4": 3},
    "c": {"p1": 3, "p2": 4, "p3": 3, "p5": 1},
}


def make_tables(root: Path, model: str, plan: dict, seed: int) -> tuple[Path, list[dict]]:
    """A tables folder (responses, models, run.json) of one model; returns it and its
    responses with a made-up correctness."""
    rng = np.random.default_rng(seed)
    rows = []
    for prompt, n in plan.items():
        for s in range(n):
            row = {"trace_id": f"{model}:{prompt}:{s}", "prompt_id": prompt, "sample_index": s,
                   "model_id": model, "gmf": float(rng.random()), "n_rows": 10,
                   "n_kept_rows": 10, "n_explore_rows": 4, "n_cycles": 2,
                   "n_effective_cycles": 1, "n_redundant_cycles": 0, "response_tokens": 40,
                   "late_novelty": 0.1, "distinct_neurons": 50, "pool_coverage": 0.05}
            row.update({c: float(rng.normal()) for c in BASELINE_COLUMNS})
            row["correct"] = bool(rng.random() < 0.5)
            rows.append(row)
    rows[0]["gmf"] = float("nan")        # an empty response: left out of the NEX mean
    folder = root / model
    folder.mkdir()
    columns = {k: [r[k] for r in rows] for k in tables.schema("responses").names}
    tables.write_table(folder / "responses.parquet", tables.to_table("responses", columns))
    model_row = {"model_id": [model], "calibration": ["per-model"], "calibration_key": [model],
                 "nex": [float(np.nanmean([r["gmf"] for r in rows]))], "log_gap": [0.1],
                 "n_responses": [len(rows)], "n_scored": [len(rows) - 1], "n_skipped": [0],
                 "n_cycles": [0], "n_effective_cycles": [0], "n_redundant_cycles": [0],
                 **{c: [0.0] for c in BASELINE_COLUMNS},
                 "n_nonzero_weights": [1], "n_positive_weights": [1], "n_negative_weights": [0],
                 "late_novelty": [0.1], "pool_coverage": [0.05], "hooked_neurons": [1000]}
    tables.write_table(folder / "models.parquet", tables.to_table("models", model_row))
    (folder / "run.json").write_text("{}")
    return folder, rows


@pytest.fixture()
def hand_made(tmp_path) -> dict:
    folders, rows = [], []
    for seed, (model, plan) in enumerate(PLAN.items()):
        folder, mine = make_tables(tmp_path, model, plan, seed)
        folders.append(folder)
        rows += mine
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps({"trace_id": r["trace_id"], "correct": r["correct"]})
                              + "\n" for r in rows))
    return {"folders": folders, "rows": rows, "labels": labels, "root": tmp_path}


def expected_across(rows: list[dict], models: list[str]) -> dict:
    """Independent recomputation: shared prompt ids, the smallest sample count per
    prompt, each model's lowest sample indices."""
    shared = sorted(set.intersection(*({r["prompt_id"] for r in rows if r["model_id"] == m}
                                       for m in models)))
    out = {"shared": shared, "models": {}}
    for m in models:
        kept = []
        for p in shared:
            k = min(sum(1 for r in rows if r["model_id"] == mm and r["prompt_id"] == p)
                    for mm in models)
            mine = sorted((r for r in rows if r["model_id"] == m and r["prompt_id"] == p),
                          key=lambda r: r["sample_index"])
            kept += mine[:k]
        gmf = [r["gmf"] for r in kept if not np.isnan(r["gmf"])]
        out["models"][m] = {
            "n_used": len(kept), "accuracy": np.mean([r["correct"] for r in kept]),
            "NEX": np.mean(gmf) if gmf else np.nan,
            "low entropy": -np.mean([r["mean_entropy"] for r in kept]),
            "log-prob": np.mean([r["mean_token_logprob"] for r in kept]),
            "n_left": sum(1 for r in rows if r["model_id"] == m) - len(kept)}
    return out


def test_three_models_compared_on_their_shared_prompts(hand_made):
    data = load_eval_data(hand_made["folders"], labels=hand_made["labels"])
    result = evaluate(data, n_boot=20)
    across = result["across_models"]
    want = expected_across(hand_made["rows"], ["a", "b", "c"])
    assert across["models"] == ["a", "b", "c"]
    assert across["shared_prompts"] == want["shared"] == ["p1", "p2", "p3"]
    assert (across["samples_min"], across["samples_max"]) == (2, 3)
    acc = [want["models"][m]["accuracy"] for m in across["models"]]
    assert across["accuracy"] == pytest.approx(acc)
    for k, m in enumerate(across["models"]):
        c = across["counts"][m]
        assert c["n_responses_used"] == want["models"][m]["n_used"] == 8
        assert c["n_responses_left_out"] == want["models"][m]["n_left"]
        assert c["n_prompts"] - c["n_prompts_left_out"] == c["n_prompts_used"] == 3
    for name in ("NEX", "low entropy", "log-prob"):
        entry = across["scores"][name]
        values = [want["models"][m][name] for m in across["models"]]
        assert entry["values"] == pytest.approx(values)
        assert entry["spearman"] == pytest.approx(stats.spearmanr(values, acc).statistic,
                                                  nan_ok=True)
        assert entry["kendall"] == pytest.approx(stats.kendalltau(values, acc).statistic,
                                                 nan_ok=True)
        top = across["models"][int(np.argmax(values))]
        assert entry["top_ranked"] == top
        assert entry["top_ranked_is_most_accurate"] == (acc[across["models"].index(top)]
                                                        == max(acc))
    # per-model sections keep all of each model's prompts
    for m, plan in PLAN.items():
        assert result["models"][m]["data"]["n_prompts_evaluated"] == len(plan)
        assert result["models"][m]["data"]["n_responses"] == sum(plan.values())
    assert across["note"] is None
    markdown = _markdown(result, {})
    assert "Computed on the 3 prompts every model has" in markdown
    assert "| a | 3 / 4 | 8 / 12 | 1 | 4 |" in markdown


def test_two_models_say_rank_correlations_are_only_signs(hand_made):
    data = load_eval_data(hand_made["folders"][:2], labels=hand_made["labels"])
    result = evaluate(data, n_boot=20)
    across = result["across_models"]
    assert across["shared_prompts"] == ["p1", "p2", "p3"]
    for entry in across["scores"].values():
        assert entry["spearman"] in (1.0, -1.0, None)
    assert "can only be +1, -1 or undefined" in across["note"]
    assert across["note"] in _markdown(result, {})


def test_no_shared_prompt_is_said_plainly(hand_made, tmp_path, capsys):
    (tmp_path / "other").mkdir()
    folder, rows = make_tables(tmp_path / "other", "d", {"q0": 2, "q1": 2}, seed=9)
    labels = tmp_path / "labels-d.jsonl"
    labels.write_text(hand_made["labels"].read_text() + "".join(
        json.dumps({"trace_id": r["trace_id"], "correct": r["correct"]}) + "\n" for r in rows))
    report = tmp_path / "report"
    assert main(["eval", str(hand_made["folders"][0]), str(folder), "--labels", str(labels),
                 "--report", str(report), "--bootstrap", "20"]) == 0
    err = capsys.readouterr().err
    assert "across models: expected prompts shared by all 2 models (a, d), got none" in err
    result = json.loads((report / "report.json").read_text())
    assert result["across_models"]["scores"] == {}
    assert "got none: no model-level comparison" in (report / "report.md").read_text()
    assert not (report / "plots" / "across_models.png").exists()
