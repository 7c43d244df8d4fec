"""The flows' task functions called directly (no Prefect run): a workspace of three tiny
checkpoints captured, scored and published; reruns reuse the finished store and tables,
a killed capture resumes; ``nex rank`` orders the workspace; ``nex publish`` writes a
folder and a Hugging Face card and changes nothing the second time."""

from __future__ import annotations

import importlib
import json
import math
import os
from pathlib import Path

import pytest

for _module in ("torch", "transformers", "zarr", "prefect", "huggingface_hub"):
    if os.environ.get("CI", "").lower() == "true":  # required under CI, skipped locally
        importlib.import_module(_module)
    else:
        pytest.importorskip(_module)

import pyarrow.parquet as pq  # noqa: E402

from flows import tasks  # noqa: E402
from pipelines.testing.models import build_tiny_model  # noqa: E402
from pipelines.cli import main  # noqa: E402
from pipelines.workspace import (Checkpoint, Workspace, content_hash,  # noqa: E402
                                 load_calibration_set)

pytestmark = pytest.mark.timeout(900)  # the module's three captures run in the first test
PROMPTS = ["two plus three is", "how many apples are left ?", "she sold ten eggs"]


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """Three tiny checkpoints captured, scored and published through the task functions."""
    root = tmp_path_factory.mktemp("ws3")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": text}) + "\n"
                               for i, text in enumerate(PROMPTS)))
    calset = dict(name="tiny", prompts=str(prompts), samples=2, max_new_tokens=48, row_size=2,
                  top_k_neurons=40, temperature=1.0, part_size=1, batch_size=6)
    workspace = str(root / "ws")
    checkpoints, first = [], {}
    for seed in (1, 2, 3):
        folder = build_tiny_model(root / f"ckpt{seed}", "llama", seed=seed)
        ckpt = Checkpoint(f"ckpt{seed}", str(folder), content_hash(folder), {"kind": "directory"})
        checkpoints.append(ckpt)
        first[ckpt.name] = (tasks.capture(workspace, ckpt.__dict__, calset),
                            tasks.score(workspace, ckpt.__dict__, calset),
                            tasks.publish(workspace, ckpt.__dict__, calset, ["folder", "hf"]))
    return {"root": root, "workspace": workspace, "calset": calset, "checkpoints": checkpoints,
            "first": first}


def test_tasks_build_one_store_tables_and_catalog_row_per_checkpoint(scored):
    ws = Workspace(scored["workspace"])
    calset = load_calibration_set(scored["calset"])
    for ckpt in scored["checkpoints"]:
        capture, score, publish = scored["first"][ckpt.name]
        assert not capture["reused"] and capture["traces_written"] == 6
        assert not score["reused"] and score["n_traces"] == 6
        assert publish["changes"][f"folder:{ws.root / 'published'}"] == {"tables": 1, "catalog_rows": 1}
        assert publish["changes"][f"hf:{ckpt.path}"] == {"card": 1}
        models = pq.read_table(ws.tables_path(ckpt, calset) / "models.parquet").to_pylist()
        assert [m["model_id"] for m in models] == [ckpt.key]
        assert publish["row"]["nex"] == models[0]["nex"]
        assert "model-index" in (Path(ckpt.path) / "README.md").read_text()
    catalog = pq.read_table(ws.root / "catalog" / "models.parquet").to_pylist()
    assert sorted(r["checkpoint"] for r in catalog) == ["ckpt1", "ckpt2", "ckpt3"]
    published = pq.read_table(ws.root / "published" / "catalog.parquet").to_pylist()
    assert sorted(r["checkpoint"] for r in published) == ["ckpt1", "ckpt2", "ckpt3"]
    # the model card written by publishing is not part of the checkpoint's content hash
    assert all(content_hash(c.path) == c.content_hash for c in scored["checkpoints"])


def test_rerun_reuses_store_and_tables_and_publishes_nothing_new(scored):
    ckpt = scored["checkpoints"][0]
    ws = Workspace(scored["workspace"])
    calset = load_calibration_set(scored["calset"])
    tables = ws.tables_path(ckpt, calset)
    before = {p.name: p.stat().st_mtime_ns for p in tables.iterdir()}
    assert tasks.capture(scored["workspace"], ckpt.__dict__, scored["calset"])["reused"]
    assert tasks.score(scored["workspace"], ckpt.__dict__, scored["calset"])["reused"]
    again = tasks.publish(scored["workspace"], ckpt.__dict__, scored["calset"], ["folder", "hf"])
    assert all(not any(v for v in change.values()) for change in again["changes"].values())
    assert {p.name: p.stat().st_mtime_ns for p in tables.iterdir()} == before


@pytest.mark.slow
def test_a_half_finished_capture_resumes_from_its_complete_parts(scored, tmp_path):
    ckpt = scored["checkpoints"][1]
    ws = Workspace(tmp_path / "ws")
    calset = load_calibration_set(scored["calset"])
    full = tasks.capture(str(ws.root), ckpt.__dict__, scored["calset"])
    assert full["parts_written"] == 3
    # simulate a crash after the first part: drop the marker and the other parts' manifests
    (ws.entry_dir(ckpt, calset) / "capture.json").unlink()
    manifests = sorted((ws.store_path(ckpt, calset) / "manifests").glob("*.parquet"))
    for manifest in manifests[1:]:
        manifest.unlink()
    (ws.store_path(ckpt, calset) / "manifest.parquet").unlink()
    resumed = tasks.capture(str(ws.root), ckpt.__dict__, scored["calset"])
    assert not resumed["reused"]
    assert resumed["parts_skipped"] == 1 and resumed["parts_written"] == 2


def test_tasks_retry_transient_failures_only():
    from prefect.states import Completed, Failed

    from pipelines.workspace import CheckpointError, StageError

    assert tasks.transient_only(tasks.capture_task, None, Failed(data=OSError("disk hiccup")))
    assert tasks.transient_only(tasks.capture_task, None, Failed(data=ConnectionError("reset")))
    assert not tasks.transient_only(tasks.capture_task, None, Failed(data=CheckpointError("bad")))
    assert not tasks.transient_only(tasks.capture_task, None,
                                    Failed(data=StageError("c", "capture", "bad")))
    assert not tasks.transient_only(tasks.capture_task, None, Completed(data=1))
    for task in (tasks.capture_task, tasks.score_task, tasks.publish_task, tasks.scan_task):
        assert task.retries == 2 and task.retry_condition_fn is tasks.transient_only


def test_nex_rank_orders_the_workspace_by_nex(scored, capsys):
    assert main(["rank", scored["workspace"], "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["rank"] for r in rows] == [1, 2, 3]
    keyed = [(-r["nex"] if r["nex"] is not None else math.inf, r["checkpoint"]) for r in rows]
    assert keyed == sorted(keyed)
    catalog = {r["checkpoint"]: r["nex"] for r in Workspace(scored["workspace"]).entries()}
    assert {r["checkpoint"]: r["nex"] for r in rows} == catalog
    assert main(["rank", scored["workspace"]]) == 0
    text = capsys.readouterr().out
    assert text.index(rows[0]["checkpoint"]) < text.index(rows[2]["checkpoint"])
    assert "log-gap" in text and "DeepConf" in text
    assert main(["rank", str(Path(scored["workspace"]) / "nope")]) == 2
    assert capsys.readouterr().err.startswith("nex: error: workspace: expected")


def test_nex_publish_to_a_folder_and_a_card_is_idempotent(scored, tmp_path, capsys):
    ckpt = scored["checkpoints"][2]
    tables = Workspace(scored["workspace"]).tables_path(ckpt, load_calibration_set(scored["calset"]))
    out = tmp_path / "out"
    assert main(["publish", str(tables), "--to", str(out), "--calibration-set", "tiny", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["changes"] == {"tables": 1, "catalog_rows": 1}
    assert main(["publish", str(tables), "--to", f"folder:{out}", "--calibration-set", "tiny",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["changes"] == {"tables": 0, "catalog_rows": 0}
    card = tmp_path / "card"
    card.mkdir()
    assert main(["publish", str(tables), "--to", f"hf:{card}", "--calibration-set", "tiny"]) == 0
    assert main(["publish", str(tables), "--to", f"hf:{card}", "--calibration-set", "tiny"]) == 0
    assert "already up to date" in capsys.readouterr().out.splitlines()[-1]
    assert main(["publish", str(tables), "--to", "mlflow:nope"]) == 2
    assert "mlflow:models:/NAME/VERSION" in capsys.readouterr().err
