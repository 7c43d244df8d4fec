"""The CI testbed end to end: `nex testbed run --preset ci` trains, merges, captures,
scores, evaluates, transfers and checks the annotations; every number of its reports is
recomputed here from the tables it was made from.

One run (a few minutes on 2 cores) is shared by the tests of this module.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from pipelines.tables import read_table

# The module's one run takes a few minutes on 2 free cores; on a loaded machine it took
# 15 minutes and hit the suite's default 900 s timeout.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    from pipelines.cli import main

    out = tmp_path_factory.mktemp("testbed") / "ci"
    given = os.environ.get("NEX_TESTBED_CI_RUN")  # a finished `nex testbed run --preset ci`
    if given:                                       # folder: check it instead of rerunning
        return Path(given)
    assert main(["testbed", "run", "--preset", "ci", "--out", str(out), "--threads", "2",
                 "--bootstrap", "200"]) == 0
    return out


def _models(run: Path) -> list[str]:
    return list(json.loads((run / "testbed.json").read_text())["models"])


def test_family_of_loadable_variants(run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    models = _models(run)
    assert len(models) >= 8
    summary = json.loads((run / "testbed.json").read_text())
    for model in models:
        folder = run / summary["models"][model]
        card = json.loads((folder / "testbed.json").read_text())
        assert card["kind"] in ("checkpoint", "merge")
        if card["kind"] == "merge":
            assert card["recipe"]["mergekit_config"]["merge_method"] == card["recipe"]["method"]
    final = run / summary["models"][models[len([m for m in models if m.startswith("step-")]) - 1]]
    AutoModelForCausalLM.from_pretrained(final)
    assert AutoTokenizer.from_pretrained(final).chat_template
    heldout = [json.loads(line) for line in (run / "heldout.jsonl").read_text().splitlines()]
    transfer = [json.loads(line) for line in
                (run / "transfer-prompts.jsonl").read_text().splitlines()]
    assert not {h["prompt"] for h in heldout} & {t["prompt"] for t in transfer}
    assert all(h["answer"].isdigit() for h in heldout)


def test_eval_numbers_recomputed_from_tables(run):
    report = json.loads((run / "report" / "report.json").read_text())
    import pyarrow.parquet as pq

    grades = pq.read_table(run / "report" / "grades.parquet").to_pydict()
    models = _models(run)
    accuracy, nex = {}, {}
    for model in models:
        responses = read_table(str(run / "tables" / model), "responses").to_pydict()
        traces = set(responses["trace_id"])
        correct = [bool(c) for t, c in zip(grades["trace_id"], grades["correct"]) if t in traces]
        assert len(correct) == len(traces)
        accuracy[model] = float(np.mean(correct))
        assert report["models"][model]["accuracy"] == pytest.approx(accuracy[model])
        gmf = np.array(responses["gmf"], dtype=float)
        row = read_table(str(run / "tables" / model), "models").to_pylist()[0]
        nex[model] = row["nex"]
        assert row["nex"] == pytest.approx(float(np.nanmean(gmf)) if np.isfinite(gmf).any()
                                           else row["nex"], nan_ok=True)
    across = report["across_models"]
    assert sorted(across["models"]) == sorted(models)
    models = across["models"]
    acc = np.array([accuracy[m] for m in models])
    values = np.array([nex[m] for m in models])
    entry = across["scores"]["NEX"]
    if np.ptp(values) > 0 and np.ptp(acc) > 0:
        assert entry["spearman"] == pytest.approx(stats.spearmanr(values, acc).statistic)
        assert entry["kendall"] == pytest.approx(stats.kendalltau(values, acc).statistic)
    else:
        assert entry["spearman"] is None or np.isnan(entry["spearman"])
    top = models[int(np.argmax(values))]
    assert entry["top_ranked"] == top
    assert entry["top_ranked_is_most_accurate"] == (accuracy[top] == acc.max())


def test_testbed_summary_numbers(run):
    text = (run / "testbed.md").read_text()
    report = json.loads((run / "report" / "report.json").read_text())
    for model in _models(run):
        responses = read_table(str(run / "tables" / model), "responses").to_pydict()
        fraction = sum(responses["n_explore_rows"]) / max(1, sum(responses["n_kept_rows"]))
        acc = report["models"][model]["accuracy"]
        line = next(l for l in text.splitlines() if l.startswith(f"| {model} |"))
        assert f"| {acc:.3f} |" in line and f"| {fraction:.3f} |" in line
    assert (run / "family-inverted-u.png").stat().st_size > 1000


def test_transfer_numbers_recomputed(run):
    skipped = json.loads((run / "testbed.json").read_text()).get("transfer_skipped")
    assert skipped is None, skipped
    result = json.loads((run / "transfer" / "transfer.json").read_text())
    neurons = read_table(str(run / "tables" / result["donor_model_id"]), "neurons").to_pydict()
    weight = np.array(neurons["weight"], dtype=float)
    key = np.array(neurons["key"], dtype=np.int64)
    k = result["k"]
    assert k == min(result["k_requested"], int((weight > 0).sum()), int((weight < 0).sum()))
    effective = set(result["sets"]["effective"]["keys"])
    redundant = set(result["sets"]["redundant"]["keys"])
    # every chosen Effective neuron weighs at least as much as every one left out
    assert min(weight[np.isin(key, list(effective))]) >= max(
        weight[~np.isin(key, list(effective))], default=-1)
    assert max(weight[np.isin(key, list(redundant))]) <= min(
        weight[~np.isin(key, list(redundant))], default=1)
    base = np.array(result["recipient_correct"])
    assert result["recipient_accuracy"] == pytest.approx(base.mean())
    for name, entry in result["sets"].items():
        assert len(entry["keys"]) == k
        correct = np.array(entry["correct"])
        assert entry["accuracy"] == pytest.approx(correct.mean())
        assert entry["delta"] == pytest.approx(correct.mean() - base.mean())
        assert entry["low"] <= entry["delta"] + 1e-12 and entry["delta"] <= entry["high"] + 1e-12
    randoms = [e["delta"] for n, e in result["sets"].items() if n.startswith("random-")]
    assert result["random_summary"]["mean_delta"] == pytest.approx(np.mean(randoms))


def test_annotation_agreement_recomputed(run):
    from sklearn.metrics import cohen_kappa_score

    from pipelines.testbed.annotations import load_annotations, row_labels
    from pipelines.testbed.run import DATA

    result = json.loads((run / "annotations.json").read_text())
    tables = run / "tables" / result["model_id"]
    phases = read_table(str(tables), "phases").to_pydict()
    responses = read_table(str(tables), "responses").to_pydict()
    labels = {(t, r): l for t, r, l in zip(phases["trace_id"], phases["row"], phases["label"])}
    n_rows = dict(zip(responses["prompt_id"], responses["n_rows"]))
    trace_of = dict(zip(responses["prompt_id"], responses["trace_id"]))
    gold, hmm = [], []
    for ann in load_annotations(DATA / "annotations.jsonl"):
        rows = row_labels(ann, n_rows[ann.prompt_id], result["row_size"])
        for row, label in enumerate(rows):
            if label is not None and (trace_of[ann.prompt_id], row) in labels:
                gold.append(label)
                hmm.append(labels[(trace_of[ann.prompt_id], row)])
    assert result["n_rows_compared"] == len(gold) > 0
    if len(set(gold) | set(hmm)) > 1:
        assert result["kappa"] == pytest.approx(cohen_kappa_score(gold, hmm))
    assert result["row_agreement"] == pytest.approx(np.mean(np.array(gold) == np.array(hmm)))


def test_regime_of_each_variant_recorded(run):
    """testbed.json and testbed.md give each variant's capture regime, recomputed here from
    its responses table (medians over scored responses; pool = layers x MLP width)."""
    from pipelines.testbed.run import REGIME_TARGETS

    summary = json.loads((run / "testbed.json").read_text())
    text = (run / "testbed.md").read_text()
    assert set(summary["regime"]) == set(_models(run))
    for model, entry in summary["regime"].items():
        r = read_table(str(run / "tables" / model), "responses").to_pydict()
        scored = np.isfinite(np.array(r["gmf"], dtype=float))
        late = np.array([np.nan if v is None else v for v in r["late_novelty"]], float)[scored]
        cover = np.array(r["pool_coverage"], dtype=float)[scored]
        assert entry["median_rows"] == pytest.approx(float(np.median(r["n_rows"])))
        assert entry["late_novelty"] == pytest.approx(float(np.median(late[np.isfinite(late)])))
        assert entry["pool_coverage"] == pytest.approx(float(np.median(cover)))
        assert 0 < entry["pool_coverage"] <= 1
        assert entry["in_regime"] == (entry["median_rows"] >= REGIME_TARGETS["min_rows"]
                                      and entry["late_novelty"] >= REGIME_TARGETS["min_late_novelty"]
                                      and entry["pool_coverage"] <= REGIME_TARGETS["max_pool_coverage"])
        line = next(l for l in text.splitlines() if l.startswith(f"| {model} | {entry['row_size']} |"))
        assert f"| {entry['late_novelty']:.3f} |" in line
        assert f"| {100 * entry['pool_coverage']:.1f} % |" in line
