"""The workspace's pure file logic: calibration sets, checkpoint readiness, content hashes,
publish targets, the Hugging Face publisher, and that infra/prefect.yaml names deployments
whose entry points exist (claims: test_workspace_claims.py; triage and the failure
taxonomy: test_workspace_triage.py)."""

from __future__ import annotations

import importlib
import json
import os
import time
from pathlib import Path

import pytest

from pipelines.publish import PublishError, parse_target
from pipelines.workspace import (CALIBRATION_SET_DIR, CalibrationSet, Checkpoint, Workspace,
                                 WorkspaceError, checkpoint_state, content_hash,
                                 load_calibration_set)

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[2]


def need(module: str):
    """Import an optional dependency: skipped locally when missing, a failure under CI."""
    if os.environ.get("CI", "").lower() == "true":
        return importlib.import_module(module)
    return pytest.importorskip(module)


def test_shipped_calibration_sets_load_and_have_distinct_keys():
    sets = {p.stem: load_calibration_set(p.stem) for p in CALIBRATION_SET_DIR.glob("*.yaml")}
    assert {"gsm8k", "arithmetic"} <= set(sets)
    assert sets["gsm8k"].prompts == "gsm8k" and sets["arithmetic"].prompts == "arithmetic"
    assert len({s.key for s in sets.values()}) == len(sets)
    # the key follows the parameters, not the description or the deadlines
    base = sets["gsm8k"].to_dict()
    assert load_calibration_set(base) == sets["gsm8k"]
    assert load_calibration_set(dict(base, description="x")).key == sets["gsm8k"].key
    assert load_calibration_set(dict(base, capture_deadline_seconds=9)).key == sets["gsm8k"].key
    assert load_calibration_set(dict(base, samples=3)).key != sets["gsm8k"].key


def test_a_calibration_set_records_only_the_capture_parameters_it_sets():
    from pipelines.capture import CaptureConfig

    calset = load_calibration_set({"name": "x", "prompts": "gsm8k", "samples": 3})
    assert calset.capture_params() == {"prompts": "gsm8k", "samples": 3}
    assert calset.to_dict() == {"name": "x", "prompts": "gsm8k", "samples": 3,
                                "engine": "local", "calibration": "per-model"}
    # every other capture parameter is CaptureConfig's own default
    config = calset.capture_config("/m", "/s", "m-1")
    defaults = CaptureConfig(model="/m", prompts="gsm8k", out="/s")
    assert (config.max_new_tokens, config.row_size, config.device, config.dtype) == \
        (defaults.max_new_tokens, defaults.row_size, "cpu", defaults.dtype)
    assert config.samples == 3 and config.model_id == "m-1"
    # device and dtype come from the run (a deployment's parameters, or the command)
    run = calset.capture_config("/m", "/s", "m-1", {"device": "cuda", "dtype": "bfloat16"})
    assert (run.device, run.dtype) == ("cuda", "bfloat16")
    # ... unless the set pins them: a different run value is refused, not silently used
    pinned = load_calibration_set({"name": "p", "prompts": "gsm8k", "dtype": "float32"})
    with pytest.raises(WorkspaceError, match="dtype of this run: expected 'float32'"):
        pinned.capture_config("/m", "/s", "m-1", {"dtype": "bfloat16"})
    assert "dtype" not in load_calibration_set("gsm8k").capture_params()


def test_stage_deadlines_follow_the_calibration_set():
    from pipelines.workspace.calibration import (DEADLINE_TOKENS_PER_SECOND,
                                                 SCORE_SECONDS_PER_TRACE, STARTUP_SECONDS,
                                                 UNBOUNDED_DEADLINE_SECONDS)

    calset = load_calibration_set({"name": "x", "prompts": "gsm8k", "limit": 4, "samples": 2,
                                   "max_new_tokens": 100})
    assert calset.deadline("capture") == STARTUP_SECONDS + 800 / DEADLINE_TOKENS_PER_SECOND
    assert calset.deadline("score") == STARTUP_SECONDS + 8 * SCORE_SECONDS_PER_TRACE
    assert load_calibration_set({"name": "x", "prompts": "gsm8k"}).deadline("capture") == \
        UNBOUNDED_DEADLINE_SECONDS
    short = load_calibration_set(dict(calset.to_dict(), capture_deadline_seconds=5,
                                      score_deadline_seconds=7))
    assert (short.deadline("capture"), short.deadline("score")) == (5.0, 7.0)


@pytest.mark.parametrize("data, message", [
    ({"name": "x", "prompts": "gsm8k", "sample": 2}, "unknown ['sample']"),
    ({"name": "x"}, "expected a 'prompts' key"),
    ({"name": "x", "prompts": "gsm8k", "samples": 0},
     "calibration set x: --samples: expected a positive integer, got 0"),
    ({"name": "x", "prompts": "gsm8k", "limit": 0}, "limit: expected an integer >= 1 or null"),
    ({"name": "x", "prompts": "gsm8k", "model": "m"}, "unknown ['model']"),
    ({"name": "x", "prompts": "gsm8k", "score_deadline_seconds": -1},
     "score_deadline_seconds: expected a number of seconds > 0"),
    ({"name": "bad name", "prompts": "gsm8k"}, "calibration set name"),
    ({"name": "x", "prompts": "gsm8k", "engine": "spark"}, "engine: expected local, beam or dask"),
])
def test_bad_calibration_sets_are_refused_with_what_was_expected(data, message):
    with pytest.raises(WorkspaceError) as err:
        load_calibration_set(data)
    assert message in str(err.value)
    assert isinstance(err.value, ValueError)


def test_unknown_calibration_set_names_the_shipped_ones():
    with pytest.raises(WorkspaceError) as err:
        load_calibration_set("nosuchset")
    assert "'arithmetic'" in str(err.value) and "'gsm8k'" in str(err.value)


def _folder(path: Path, files: dict, age: float = 3600) -> Path:
    path.mkdir(parents=True)
    for name, data in files.items():
        (path / name).write_bytes(data)
    old = time.time() - age
    for entry in [path, *path.iterdir()]:
        os.utime(entry, (old, old))
    return path


def test_checkpoint_state_ready_pending_broken(tmp_path):
    config = {"config.json": b"{}"}
    index = {"model.safetensors.index.json": json.dumps(
        {"weight_map": {"a": "m-1.safetensors", "b": "m-2.safetensors"}}).encode()}
    cases = {
        "ready": (dict(config, **{"model.safetensors": b"w"}), 3600, "ready"),
        "sharded": (dict(config, **index, **{"m-1.safetensors": b"w", "m-2.safetensors": b"w"}),
                    3600, "ready"),
        "fresh": (dict(config, **{"model.safetensors": b"w"}), 0, "pending"),
        "tmpfile": (dict(config, **{"model.safetensors.tmp": b"w"}), 3600, "pending"),
        "missing-shard-recent": (dict(config, **index, **{"m-1.safetensors": b"w"}), 0, "pending"),
        "missing-shard-old": (dict(config, **index, **{"m-1.safetensors": b"w"}), 3600, "broken"),
        "no-weights": (config, 3600, "broken"),
        "no-config": ({"model.safetensors": b"w"}, 3600, "broken"),
        "gguf": ({"m.gguf": b"w", "__init__.py": b""}, 3600, "ready"),
        "two-ggufs": ({"a.gguf": b"w", "b.gguf": b"w"}, 3600, "broken"),
    }
    for name, (files, age, state) in cases.items():
        got, why = checkpoint_state(_folder(tmp_path / name, files, age), settle_seconds=60)
        assert got == state, (name, why)
    assert "1 missing (['m-2.safetensors'])" in checkpoint_state(
        tmp_path / "missing-shard-old", 60)[1]
    assert checkpoint_state(tmp_path / "no-weights", 60)[1].startswith("weights: expected")
    assert checkpoint_state(tmp_path / "nothing")[0] == "broken"


def test_content_hash_follows_files_not_names_or_the_model_card(tmp_path):
    a = _folder(tmp_path / "a", {"config.json": b"{}", "model.safetensors": b"w1"})
    b = _folder(tmp_path / "b", {"config.json": b"{}", "model.safetensors": b"w1"})
    assert content_hash(a) == content_hash(b)
    (b / "README.md").write_text("---\nmodel-index: []\n---\n")
    (b / ".nex-downloaded").write_text("x")
    assert content_hash(a) == content_hash(b)
    (b / "model.safetensors").write_bytes(b"w2")
    assert content_hash(a) != content_hash(b)
    # a GGUF checkpoint (no config.json) is its .gguf file, whatever else the folder holds
    g1 = _folder(tmp_path / "g1", {"m.gguf": b"q4", "__init__.py": b""})
    g2 = _folder(tmp_path / "g2", {"m.gguf": b"q4", "__init__.py": b"# other"})
    assert content_hash(g1) == content_hash(g2)


def test_checkpoint_keys_are_name_slug_and_hash_prefix():
    assert Checkpoint("my model/1", "/x", "ab" * 32).key == "my-model-1-" + "ab" * 6


@pytest.mark.parametrize("target, parsed", [
    ("mlflow:models:/fam/3", ("mlflow", "models:/fam/3")),
    ("hf:/models/a", ("huggingface", "/models/a")),
    ("folder:/out", ("folder", "/out")),
    ("out/dir", ("folder", "out/dir")),
])
def test_publish_targets(target, parsed):
    assert parse_target(target) == parsed


@pytest.mark.parametrize("target", ["mlflow:fam/3", "s3x://bucket"])
def test_bad_publish_targets(target):
    with pytest.raises(PublishError):
        parse_target(target)


def _row(nex=0.75, calset="gsm8k", fingerprint="f" * 64):
    return {"checkpoint": "ck", "checkpoint_key": "ck-1", "checkpoint_hash": "1" * 64,
            "checkpoint_path": "", "source": "{}", "calibration_set": calset,
            "calibration_key": f"{calset}-1", "model_id": "ck-1", "nex": nex, "log_gap": 0.6,
            "n_responses": 4, "n_scored": 4, "n_cycles": 9, "responses_with_credit": 2,
            "credited_cycles": 5, "late_novelty": 0.05, "pool_coverage": 0.01,
            "mean_entropy": 1.0,
            "mean_self_certainty": 2.0, "mean_token_logprob": -1.0,
            "deepconf_mean_confidence": 3.0, "deepconf_lowest_group_confidence": 3.0,
            "store": "s", "tables": "t", "tables_fingerprint": fingerprint,
            "store_fingerprint": "sha256:x", "scored_at": "now"}


def test_published_tags_and_metrics_follow_the_catalog_list():
    from pipelines.catalog import PUBLISHED, catalog_schema, published_metrics, published_tags

    tags = published_tags(_row())
    assert tags == {"nex": "0.75", "nex.gsm8k": "0.75", "nex_log_gap": "0.6",
                    "nex_log_gap.gsm8k": "0.6", "nex_responses_with_credit": "2",
                    "nex_responses_with_credit.gsm8k": "2", "nex_credited_cycles": "5",
                    "nex_credited_cycles.gsm8k": "5", "nex_late_novelty": "0.05",
                    "nex_late_novelty.gsm8k": "0.05", "nex_pool_coverage": "0.01",
                    "nex_pool_coverage.gsm8k": "0.01", "nex_calibration_set": "gsm8k",
                    "nex_tables_fingerprint.gsm8k": "f" * 64}
    metrics = published_metrics(_row())
    assert metrics["nex.gsm8k"] == 0.75 and metrics["nex_credited_cycles.gsm8k"] == 5.0
    assert metrics["nex_responses_with_credit.gsm8k"] == 2.0
    assert metrics["nex_late_novelty.gsm8k"] == 0.05 and metrics["nex_pool_coverage.gsm8k"] == 0.01
    assert len(metrics) == len(PUBLISHED)
    # a NEX that rests on nothing: published as such, with its coverage
    empty = dict(_row(nex=float("nan")), responses_with_credit=0, credited_cycles=0)
    assert published_tags(empty)["nex"] == "nan" and "nex.gsm8k" not in published_metrics(empty)
    assert published_metrics(empty)["nex_credited_cycles.gsm8k"] == 0.0
    # every published column is a catalog column
    assert {p.column for p in PUBLISHED} <= set(catalog_schema().names)


def test_huggingface_card_keeps_text_and_other_results(tmp_path):
    need("huggingface_hub")
    from huggingface_hub import ModelCard

    from pipelines.publish.huggingface import publish_huggingface

    (tmp_path / "README.md").write_text(
        "---\nlicense: apache-2.0\nmodel-index:\n- name: ck\n  results:\n  - task:\n"
        "      type: text-generation\n    dataset:\n      name: GSM8K\n      type: gsm8k\n"
        "    metrics:\n    - type: accuracy\n      value: 0.5\n---\n\n# My model\n\nHand-written text.\n")
    assert publish_huggingface(_row(), tmp_path) == {"card": 1}
    assert publish_huggingface(_row(), tmp_path) == {"card": 0}
    text = (tmp_path / "README.md").read_text()
    assert "Hand-written text." in text and "license: apache-2.0" in text
    results = ModelCard.load(tmp_path / "README.md").data.eval_results
    got = {(r.dataset_type, r.metric_type): r.metric_value for r in results}
    assert got == {("gsm8k", "accuracy"): 0.5, ("nex/gsm8k", "nex"): 0.75,
                   ("nex/gsm8k", "nex_log_gap"): 0.6, ("nex/gsm8k", "nex_late_novelty"): 0.05,
                   ("nex/gsm8k", "nex_pool_coverage"): 0.01}
    publish_huggingface(dict(_row(nex=0.8), pool_coverage=None), tmp_path)  # ours replaced
    results = ModelCard.load(tmp_path / "README.md").data.eval_results
    assert sorted(r.metric_value for r in results) == [0.05, 0.5, 0.6, 0.8]


def test_infra_prefect_yaml_names_deployments_whose_entry_points_exist():
    need("prefect")
    import yaml
    from prefect.flows import Flow

    spec = yaml.safe_load((REPO / "infra" / "prefect.yaml").read_text())
    deployments = spec["deployments"]
    names = set()
    for deployment in deployments:
        path, function = deployment["entrypoint"].split(":")
        assert (REPO / path).is_file(), path
        module = importlib.import_module(path[:-3].replace("/", "."))
        flow = getattr(module, function)
        assert isinstance(flow, Flow)
        names.add(f"{flow.name}/{deployment['name']}")
        assert deployment["work_pool"]["name"] in {p["name"] for p in spec["definitions"]["work_pools"]}
        signature = set(flow.parameters.properties)
        assert set(deployment.get("parameters") or {}) <= signature, deployment["name"]
        load_calibration_set((deployment.get("parameters") or {}).get("calibration_set", "gsm8k"))
    for deployment in deployments:  # stages sent to other pools name declared deployments
        for key in ("capture_deployment", "score_deployment"):
            value = (deployment.get("parameters") or {}).get(key)
            assert value is None or value in names, value
    watch = [d for d in deployments if d["entrypoint"].endswith(":watch_checkpoints_flow")]
    assert watch and all(s.get("cron") for d in watch for s in d["schedules"])


def test_stage_errors_name_checkpoint_and_stage_and_tell_transient_causes():
    from pipelines.workspace import CheckpointError, StageError

    bad = StageError("ck", "capture", CheckpointError("weights: expected a file, got none"))
    assert str(bad) == "checkpoint ck, stage capture: CheckpointError: weights: expected a file, got none"
    assert not bad.transient and isinstance(bad, ValueError)
    assert StageError("ck", "publish", ConnectionError("refused")).transient
    assert not StageError("ck", "capture", "deployment run ended Failed").transient


@pytest.mark.parametrize("argv, message", [
    (["flows", "run", "WS"], "CHECKPOINT: expected a model folder"),
    (["flows", "watch", "WS"], "sources: expected --checkpoints DIR or --mlflow-model NAME"),
    (["flows", "watch", "WS", "extra", "--checkpoints", "D"], "CHECKPOINT: expected none"),
    (["flows", "serve", "WS", "--checkpoints", "D", "--cron", "* * * * *", "--interval", "5"],
     "--cron/--interval: expected one of them"),
    (["flows", "run", "WS", "M", "--calibration-set", "nosuchset"], "calibration set: expected"),
])
def test_nex_flows_refuses_bad_arguments_before_starting_prefect(argv, message, capsys):
    from pipelines.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("nex: error: ") and message in err and err.count("\n") == 1
