"""The `make demo` job, small: without and with the real-model stages.

The synthetic stages' numbers are recomputed here from the corpus the demo's recorded
arguments describe: with the core's own entry points (``learn_weights``, ``score_corpus``,
``analyse``) and with the straightforward per-trace implementation
(tests/reference/straightforward.py), so a wrong number fails, not only one outside (0, 1).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from nex_transforms import NexParams, analyse, learn_weights, score_corpus
from pipelines.demo import main
from pipelines.testing.corpora import SyntheticSpec, synthetic_corpus
from tests.reference import straightforward


def _check_synthetic(entry: dict, corpus, params: NexParams) -> None:
    """A synthetic stage's report entry against the core run afresh on its corpus."""
    scores = score_corpus(corpus, learn_weights(corpus, params))
    credit = analyse(corpus, params).credit
    assert (entry["responses"], entry["rows"], entry["entries"]) == \
        (corpus.n_traces, corpus.n_rows, corpus.n_entries)
    assert entry["nex"] == scores.nex and entry["log_gap"] == scores.log_gap
    gmf = scores.gmf[np.isfinite(scores.gmf)]
    assert entry["gmf_quantiles"] == dict(zip(("min", "q25", "median", "q75", "max"),
                                              np.quantile(gmf, [0, .25, .5, .75, 1]).tolist()))
    assert (entry["cycles"], entry["effective_cycles"], entry["redundant_cycles"]) == \
        (int(credit.trace_cycles.sum()), int(credit.trace_effective.sum()),
         int(credit.trace_redundant.sum()))
    # not a degenerate corpus, where agreement would be trivial
    assert entry["effective_cycles"] > 0 and entry["redundant_cycles"] > 0
    assert 0 < gmf.min() < gmf.max() < 1


def _cycles(labels: list) -> int:
    """E->X cycles of one trace's row labels: an E run followed by an X run."""
    runs = [labels[0]] + [b for a, b in zip(labels, labels[1:]) if a != b]
    return sum(1 for a, b in zip(runs, runs[1:]) if a and not b)


def test_demo_without_capture(tmp_path, reference_dir, capsys):
    out = tmp_path / "demo"
    assert main(["--out", str(out), "--skip-capture", "--synthetic-traces", "30",
                 "--reference", str(reference_dir)]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    ref = report["reference_example"]
    assert round(ref["published_weights"]["nex"], 5) == 0.99831
    assert round(ref["self_calibrated"]["nex"], 5) == 0.98684
    assert "self-calibrated NEX 0.98684" in printed
    arguments = report["arguments"]
    assert (arguments["synthetic_traces"], arguments["seed"]) == (30, 0)
    corpus = synthetic_corpus(SyntheticSpec(n_traces=arguments["synthetic_traces"],
                                            seed=arguments["seed"]))
    syn = report["synthetic"]
    _check_synthetic(syn, corpus, NexParams())
    _check_synthetic(report["synthetic_fit_hmm_extension"], corpus, NexParams(fit_hmm=True))
    # the same numbers from code that shares nothing with the core
    plain_weights, plain_labels = straightforward.learn(corpus)
    plain_gmf = straightforward.score(corpus, plain_weights)
    assert syn["nex"] == pytest.approx(float(np.nanmean(plain_gmf)), abs=1e-12)
    assert syn["cycles"] == sum(_cycles(labels) for labels in plain_labels if labels)
    assert (f"synthetic corpus: 30 responses, {syn['rows']} rows -> NEX {syn['nex']:.5f} "
            f"(log-gap {syn['log_gap']:.4f}), {syn['cycles']} cycles "
            f"({syn['effective_cycles']} effective)") in printed


@pytest.mark.slow
def test_demo_with_a_real_capture_and_two_engines(tmp_path, reference_dir):
    out = tmp_path / "demo"
    assert main(["--out", str(out), "--limit", "1", "--samples", "2", "--max-new-tokens",
                 "24", "--engines", "local,dask", "--synthetic-traces", "20",
                 "--reference", str(reference_dir)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["engines"]) == {"local", "dask"}
    assert report["engines"]["dask"]["max_abs_gmf_diff_vs_local"] <= 1e-6
    models = report["engines"]["local"]["models"]
    assert [m["model_id"] for m in models] == ["smollm2-135m"]
    assert models[0]["n_responses"] == 2
    assert (out / "tables-local" / "responses.parquet").exists()
    # stage 6: score_checkpoint_flow on the shipped model, one catalog row
    assert report["flows"]["catalog_rows"] == 1
    assert (out / "workspace" / "catalog" / "models.parquet").exists()
    evaluation = report["evaluation"]
    assert (out / "eval-report" / "report.html").is_file()
    assert evaluation["html"] == str(out / "eval-report" / "report.html")
    assert list(evaluation["accuracy"]) == ["smollm2-135m"]
    # stage 8: the explorer site of the same capture
    assert (out / "explore" / "index.html").is_file() and report["explore"]["site"]
