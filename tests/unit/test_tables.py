"""Score tables and the pure parts of the engine core: tallies, batching, atomic output."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from nex_transforms import NexError
from pipelines import tables
from nex_transforms import trace_batches
from nex_transforms.baselines import BASELINES
from pipelines.engines.plan import EngineError, ScoreConfig
from pipelines.engines.tally import ModelTally, merge_tallies, tally_responses
from pipelines.engines.weights import SparseWeights


def rows(models, gmf, kept, cycles, baseline):
    n = len(models)
    out = {"model_id": list(models), "gmf": np.asarray(gmf, float),
           "n_kept_rows": np.asarray(kept), "n_cycles": np.asarray(cycles),
           "n_effective_cycles": np.asarray(cycles) // 2,
           "n_redundant_cycles": np.asarray(cycles) - np.asarray(cycles) // 2}
    for name in BASELINES:
        out[name] = np.asarray(baseline, float)
    assert all(len(v) == n for v in out.values())
    return out


def test_model_tallies_merge_to_the_tally_of_all_rows():
    all_rows = rows(["a", "b", "a", "a", "b"], [0.5, np.nan, 0.25, 1.0, 0.0],
                    [5, 0, 4, 2, 7], [2, 0, 1, 0, 3], [1.0, np.nan, 2.0, 3.0, 4.0])
    whole = tally_responses(all_rows, min_rows=3)
    halves = [tally_responses({k: v[:2] for k, v in all_rows.items()}, 3),
              tally_responses({k: v[2:] for k, v in all_rows.items()}, 3)]
    assert merge_tallies(halves) == merge_tallies(halves[::-1]) == whole
    a, b = whole["a"], whole["b"]
    assert (a.n_responses, a.n_scored, a.n_skipped, a.n_cycles) == (3, 3, 1, 3)
    assert a.nex == pytest.approx(np.mean([0.5, 0.25, 1.0]))
    assert (b.n_responses, b.n_scored, b.n_skipped) == (2, 1, 1)
    assert b.baseline_means()["mean_entropy"] == 4.0
    assert np.isnan(ModelTally().nex)


def test_model_tallies_keep_the_median_of_the_scored_responses():
    all_rows = rows(["a", "a", "a", "a", "b"], [0.5, np.nan, 0.25, 1.0, 0.0],
                    [5, 0, 4, 6, 7], [2, 0, 1, 0, 3], [1.0, np.nan, 2.0, 3.0, 4.0])
    all_rows["late_novelty"] = np.array([0.1, 0.9, np.nan, 0.3, 0.2])
    all_rows["pool_coverage"] = np.array([0.01, 0.5, 0.03, 0.02, np.nan])
    all_rows["hooked_neurons"] = np.array([100, 100, 100, 100, 0])
    whole = tally_responses(all_rows, min_rows=3)
    parts = [tally_responses({k: v[i:i + 1] for k, v in all_rows.items()}, 3)
             for i in range(5)]
    assert merge_tallies(parts) == merge_tallies(parts[::-1]) == whole
    # trace 1 is not scored (NaN GMF): its 0.9 and 0.5 are left out
    assert whole["a"].medians() == {"late_novelty": pytest.approx(0.2),
                                    "pool_coverage": pytest.approx(0.02)}
    assert whole["a"].hooked_neurons == 100
    b = whole["b"].medians()
    assert b["late_novelty"] == 0.2 and np.isnan(b["pool_coverage"])
    assert whole["b"].hooked_neurons == 0


def test_undefined_diagnostics_are_written_as_nulls():
    columns = {"model_id": ["a", "b"], "calibration": ["per-model"] * 2,
               "calibration_key": ["a", "b"], "late_novelty": [0.05, np.nan],
               "pool_coverage": [np.nan, 0.2], "hooked_neurons": [0, 512]}
    for name in tables.schema("models").names:
        columns.setdefault(name, [1, 1])
    table = tables.to_table("models", columns)
    assert table["late_novelty"].to_pylist() == [0.05, None]
    assert table["pool_coverage"].to_pylist() == [None, 0.2]
    assert table["hooked_neurons"].to_pylist() == [None, 512]


def test_trace_batches_keep_whole_traces_and_cover_the_part():
    entries = np.array([5, 5, 30, 1, 1, 1, 8])
    splits = trace_batches(entries, 10)
    assert splits[0][0] == 0 and splits[-1][1] == entries.size
    assert all(a < b for a, b in splits)
    assert all(splits[i][1] == splits[i + 1][0] for i in range(len(splits) - 1))
    assert all(entries[a:b].sum() <= 10 or b - a == 1 for a, b in splits)


def test_sparse_weights_round_trip():
    dense = np.zeros(1 << 22, np.float32)
    dense[[3, 70000, (5 << 16) | 9]] = [0.5, -0.25, 1.0]
    sparse = SparseWeights.from_dense(dense)
    np.testing.assert_array_equal(sparse.dense(), dense)
    assert (sparse.n_nonzero, sparse.n_positive, sparse.n_negative) == (3, 2, 1)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"calibration": "mixed"}, "calibration: expected one of"),
    ({"calibration": "weights"}, "weights file: expected one exactly"),
    ({"weights_file": "w.npz"}, "weights file: expected one exactly"),
    ({"batch_entries": 0}, "batch_entries: expected an integer >= 1"),
])
def test_score_config_is_validated(kwargs, fragment):
    with pytest.raises(EngineError, match=fragment):
        ScoreConfig(store="s", **kwargs)


def test_tables_have_their_documented_columns():
    assert tables.schema("responses").names == [
        "trace_id", "prompt_id", "sample_index", "model_id", "gmf", "n_rows", "n_kept_rows",
        "n_explore_rows", "n_cycles", "n_effective_cycles", "n_redundant_cycles",
        "response_tokens", "late_novelty", "distinct_neurons", "pool_coverage", *BASELINES]
    assert tables.schema("neurons").names == ["model_id", "key", "layer", "unit", "eff", "red",
                                              "weight"]
    assert tables.schema("phases").names == ["trace_id", "model_id", "row", "novelty_slope",
                                             "z", "label", "cycle", "credited"]
    assert tables.schema("phases").metadata[b"nex_tables_schema_version"] == b"3"
    models = tables.schema("models").names
    assert {"model_id", "nex", "log_gap", "n_responses", "n_scored", "n_skipped",
            "n_nonzero_weights", "calibration", *BASELINES, "late_novelty", "pool_coverage",
            "hooked_neurons"} <= set(models)
    empty = tables.to_table("neurons", {})
    assert empty.num_rows == 0 and empty.schema.names == tables.schema("neurons").names
    with pytest.raises(tables.TablesError):
        tables.schema("other")


def test_nan_is_stored_as_nan_not_null(tmp_path):
    table = tables.to_table("phases", {"trace_id": ["t"], "model_id": ["m"], "row": [0],
                                       "novelty_slope": [np.nan], "z": [1.0], "label": ["E"],
                                       "cycle": [-1], "credited": [False]})
    tables.write_table(tmp_path / "phases.parquet", table)
    (tmp_path / "run.json").write_text("{}")
    back = tables.read_table(tmp_path, "phases")
    assert back["novelty_slope"].null_count == 0
    assert np.isnan(back["novelty_slope"].to_numpy()[0])


def test_staged_output_publishes_only_complete_folders(tmp_path):
    out = tmp_path / "tables"
    with tables.staged_output(out) as staging:
        (staging / "run.json").write_text(json.dumps({"n": 1}))
        assert not out.exists()
    assert json.loads((out / "run.json").read_text()) == {"n": 1}

    with pytest.raises(RuntimeError):
        with tables.staged_output(out) as staging:
            (staging / "run.json").write_text(json.dumps({"n": 2}))
            raise RuntimeError("engine failed")
    assert json.loads((out / "run.json").read_text()) == {"n": 1}   # untouched

    with tables.staged_output(out) as staging:                     # a rerun replaces it
        (staging / "run.json").write_text(json.dumps({"n": 3}))
    assert json.loads((out / "run.json").read_text()) == {"n": 3}
    assert out.is_symlink()                                        # published by a link
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["tables", os.readlink(out)])


def test_staged_output_refuses_a_folder_that_is_not_a_tables_folder(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "precious.txt").write_text("keep")
    with pytest.raises(tables.TablesError, match="expected a new, empty or earlier tables"):
        with tables.staged_output(tmp_path / "data"):
            pass
    assert (tmp_path / "data" / "precious.txt").read_text() == "keep"
    assert issubclass(tables.TablesError, NexError)


def test_cli_and_core_never_import_engine_libraries():
    import subprocess
    import sys

    code = ("import sys, pipelines.cli as c; c.build_parser(); "
            "import pipelines.engines, pipelines.engines.local, "
            "pipelines.engines.plan, pipelines.engines.analysis, pipelines.store.reader, "
            "pipelines.tables; "
            "print(sorted(m for m in ('apache_beam', 'dask', 'distributed') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_engine_adapters_never_import_each_other():
    import ast
    from pathlib import Path

    import pipelines.engines as engines

    folder = Path(engines.__file__).parent
    siblings = {"local", "beam", "dask"}
    for name in siblings:
        tree = ast.parse((folder / f"{name}.py").read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
                imported.add(node.module.split(".")[0])
            if isinstance(node, ast.ImportFrom) and node.module and \
                    node.module.startswith("pipelines.engines."):
                imported.add(node.module.split(".")[2])
        assert not (imported & (siblings - {name})), (name, imported)
