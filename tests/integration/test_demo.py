"""The `make demo` job, small: without and with the real-model stages."""

from __future__ import annotations

import json

import pytest

from pipelines.demo import main


def test_demo_without_capture(tmp_path, reference_dir, capsys):
    out = tmp_path / "demo"
    assert main(["--out", str(out), "--skip-capture", "--synthetic-traces", "30",
                 "--reference", str(reference_dir)]) == 0
    report = json.loads((out / "report.json").read_text())
    ref = report["reference_example"]
    assert round(ref["published_weights"]["nex"], 5) == 0.99831
    assert round(ref["self_calibrated"]["nex"], 5) == 0.98684
    assert report["synthetic"]["responses"] == 30
    assert 0 < report["synthetic"]["nex"] < 1
    assert "synthetic_fit_hmm_extension" in report
    assert "self-calibrated NEX 0.98684" in capsys.readouterr().out


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
