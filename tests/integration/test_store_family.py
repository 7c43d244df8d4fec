"""One store holding a family of models: capture metadata is recorded per model id, so
``nex capture`` appends a second model to an existing store and ``nex score`` gives each
model its own row."""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

for _module in ("torch", "transformers", "zarr"):  # required under CI, skipped locally if missing
    if os.environ.get("CI", "").lower() == "true":
        importlib.import_module(_module)
    else:
        pytest.importorskip(_module)

from pipelines.testing.models import build_tiny_model  # noqa: E402
from pipelines.cli import main  # noqa: E402
from pipelines.store import ActivationStore, StoreError  # noqa: E402
from pipelines.store.root import model_dir_name  # noqa: E402

CAPTURE = {"model_id": "m1", "dtype": "float32", "top_k": 8}


def test_a_second_model_records_its_own_parameters(tmp_path):
    path = tmp_path / "store"
    ActivationStore.create(path, {"capture": dict(CAPTURE)})
    other = dict(CAPTURE, model_id="org/m2", dtype="bfloat16", top_k=16)
    store = ActivationStore.create(path, {"capture": other})
    assert store.captures == {"m1": CAPTURE, "org/m2": other}
    assert store.capture_metadata("org/m2") == other
    assert store.capture_metadata("m1") == CAPTURE
    assert store.capture_metadata("m3") is None
    assert store.metadata["capture"] == CAPTURE  # the root keeps the first model's record
    assert (path / "models" / model_dir_name("org/m2") / "zarr.json").is_file()
    assert model_dir_name("org/m2") != model_dir_name("org_m2")
    # appending either model again with its own parameters is accepted ...
    ActivationStore.create(path, {"capture": dict(other)})
    ActivationStore.create(path, {"capture": dict(CAPTURE)})
    # ... with other parameters refused, naming the model and the keys, nothing changed
    before = sorted(str(p.relative_to(path)) for p in path.rglob("*"))
    with pytest.raises(StoreError) as err:
        ActivationStore.create(path, {"capture": dict(other, top_k=32)})
    assert "model 'org/m2'" in str(err.value) and "['top_k']" in str(err.value)
    with pytest.raises(StoreError) as err:
        ActivationStore.create(path, {"capture": dict(CAPTURE, dtype="float16")})
    assert "model 'm1'" in str(err.value) and "['dtype']" in str(err.value)
    assert sorted(str(p.relative_to(path)) for p in path.rglob("*")) == before
    assert ActivationStore.open(path).info()["captures"] == {"m1": CAPTURE, "org/m2": other}


def _capture(model: Path, prompts: Path, out: Path, model_id: str, *extra: str) -> int:
    return main(["capture", "--model", str(model), "--prompts", str(prompts), "--out", str(out),
                 "--model-id", model_id, "--max-new-tokens", "48", "--top-k-neurons", "40",
                 "--row-size", "4", "--temperature", "1.0", "--no-progress", *extra])


def test_nex_capture_appends_a_second_model_and_score_gives_each_its_row(tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": text}) + "\n" for i, text in
                               enumerate(["two plus three is", "how many apples are left ?"])))
    first = build_tiny_model(tmp_path / "a", "llama", seed=1)
    second = build_tiny_model(tmp_path / "b", "llama", seed=2)
    store = tmp_path / "store"
    assert _capture(first, prompts, store, "ckpt-a", "--samples", "2") == 0
    assert _capture(second, prompts, store, "ckpt-b", "--samples", "2") == 0
    # the second model with other parameters is refused, the store unchanged
    assert _capture(second, prompts, store, "ckpt-b", "--samples", "2", "--row-size", "8") == 2
    err = capsys.readouterr().err
    assert "capture parameters of model 'ckpt-b'" in err and "row_size" in err
    opened = ActivationStore.open(store)
    assert sorted(opened.captures) == ["ckpt-a", "ckpt-b"]
    assert opened.captures["ckpt-a"]["model_id"] == "ckpt-a"
    assert opened.captures["ckpt-b"]["row_size"] == 4
    assert opened.info()["models"] == {"ckpt-a": 4, "ckpt-b": 4}
    assert main(["store", "verify", str(store)]) == 0
    assert main(["score", str(store), "--out", str(tmp_path / "tables")]) == 0
    models = pq.read_table(tmp_path / "tables" / "models.parquet").to_pylist()
    assert sorted(m["model_id"] for m in models) == ["ckpt-a", "ckpt-b"]
    assert all(m["n_responses"] == 4 and m["calibration_key"] == m["model_id"] for m in models)
