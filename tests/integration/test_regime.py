"""Regime diagnostics end to end: the engines' columns, `nex score`'s and `nex eval`'s
warnings on a saturated capture, none on the published reference example."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nex_transforms import analyse
from nex_transforms.diagnostics import distinct_neurons, late_novelty, median_over
from pipelines import tables
from pipelines.cli import main
from pipelines.testing.stores import synthetic_store
from pipelines.store import ActivationStore

pytestmark = pytest.mark.timeout(180)

REGIME = "outside the method's regime"


@pytest.fixture(scope="module")
def saturated(tmp_path_factory) -> Path:
    """A store whose responses use most of a 2 x 64 neuron pool (like the old testbed)."""
    path = tmp_path_factory.mktemp("saturated") / "store"
    synthetic_store(path, n_traces=16, models=("small-pool",), traces_per_part=8,
                    min_rows=20, max_rows=30, keys_per_row=40, n_layers=2,
                    units_per_layer=64, seed=5)
    return path


def test_columns_are_the_core_diagnostics(saturated, tmp_path, capfd):
    out = tmp_path / "tables"
    assert main(["score", str(saturated), "--out", str(out), "--batch-entries", "3000"]) == 0
    store = ActivationStore.open(saturated)
    ids = store.manifest()["trace_id"].to_pylist()
    corpus = store.read_corpus(trace_ids=ids)
    analysis = analyse(corpus)
    responses = tables.read_table(out, "responses", sort=False)
    assert responses["trace_id"].to_pylist() == ids
    np.testing.assert_array_equal(responses["late_novelty"].to_numpy(),
                                  late_novelty(analysis.rows, analysis.novelty))
    distinct = distinct_neurons(corpus.aggregate())
    np.testing.assert_array_equal(responses["distinct_neurons"].to_numpy(), distinct)
    np.testing.assert_array_equal(responses["pool_coverage"].to_numpy(), distinct / 128)
    (model,) = tables.read_table(out, "models").to_pylist()
    scored = np.isfinite(responses["gmf"].to_numpy())
    assert model["hooked_neurons"] == 128
    assert model["late_novelty"] == median_over(responses["late_novelty"].to_numpy()[scored])
    assert model["pool_coverage"] == median_over(responses["pool_coverage"].to_numpy()[scored])
    assert model["pool_coverage"] > 0.25
    err = capfd.readouterr().err
    assert f"nex: warning: the capture of small-pool is {REGIME}" in err
    assert "a response uses" in err and "a larger model" in err


def test_eval_report_has_the_regime_table_and_warning(saturated, tmp_path, capfd):
    out = tmp_path / "tables"
    assert main(["score", str(saturated), "--out", str(out)]) == 0
    responses = tables.read_table(out, "responses").to_pylist()
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps({"trace_id": r["trace_id"], "correct": i % 3 == 0})
                              + "\n" for i, r in enumerate(responses)))
    capfd.readouterr()
    report = tmp_path / "report"
    assert main(["eval", str(out), "--labels", str(labels), "--report", str(report),
                 "--bootstrap", "20"]) == 0
    assert REGIME in capfd.readouterr().err
    text = (report / "report.md").read_text()
    assert "### Is the capture in the method's regime?" in text
    assert "| published example (Qwen3-4B, rows of 32) | 83 | 0.0554 | 1.0 % | 1 of 1 |" in text
    (model,) = tables.read_table(out, "models").to_pylist()
    assert "| small-pool | " in text and f"{100 * model['pool_coverage']:.1f} %" in text
    coverage = json.loads((report / "report.json").read_text())["models"]["small-pool"]["coverage"]
    assert coverage["pool_coverage"] == pytest.approx(model["pool_coverage"])
    assert coverage["late_novelty"] == pytest.approx(model["late_novelty"])
    assert REGIME in coverage["regime_warning"]


def test_reference_example_is_in_regime(reference_dir, tmp_path, capfd):
    store = tmp_path / "store"
    assert main(["store", "import-rows-cache", str(reference_dir / "example_cache"),
                 str(store), "--model-id", "qwen3"]) == 0
    out = tmp_path / "tables"
    assert main(["score", str(store), "--out", str(out)]) == 0
    (model,) = tables.read_table(out, "models").to_pylist()
    assert round(model["late_novelty"], 5) == 0.05542
    # an imported row cache does not say how many neurons were hooked
    assert model["pool_coverage"] is None and model["hooked_neurons"] is None
    (response,) = tables.read_table(out, "responses").to_pylist()
    assert response["distinct_neurons"] == 3514 and response["pool_coverage"] is None
    captured = capfd.readouterr()
    assert REGIME not in captured.err
    assert "regime: median late novelty 0.0554, pool coverage unknown" in captured.out
