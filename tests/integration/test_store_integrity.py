"""Per-chunk integrity: a deleted shard, a flipped byte in a chunk in the middle of a part
and a truncated shard are each named (part, and trace when known) by ``nex store verify``,
``nex score`` on every engine and ``export-rows-cache``, and nothing is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipelines.cli import main
from pipelines.store import ActivationStore, StoreError, schema
from pipelines.testing.traces import synthetic_records

pytestmark = pytest.mark.timeout(300)

CAPTURE = {"model_id": "tiny", "top_k": 8}
PART = "p-middle"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """Three parts; arrays of 256-element chunks so that each part has many chunks."""
    path = tmp_path_factory.mktemp("integrity") / "store"
    patch = pytest.MonkeyPatch()
    patch.setattr(schema, "CHUNK_ELEMENTS", 256)
    patch.setattr(schema, "CHUNKS_PER_SHARD", 4)
    try:
        store = ActivationStore.create(path, {"capture": CAPTURE})
        for i, part in enumerate(("p-first", PART, "p-last")):
            store.write_part(part, synthetic_records(6, seed=10 + i, prefix=part,
                                                     n_tokens=200), {})
        store.finalize()
    finally:
        patch.undo()
    return path


def shard_files(store: Path, array: str) -> list[Path]:
    return sorted((store / "parts" / PART / array / "c").iterdir(), key=lambda p: int(p.name))


def flip_middle(store: Path) -> str:
    """Flip one byte inside the middle chunk of the middle shard of ``keys``."""
    shards = shard_files(store, "keys")
    assert len(shards) >= 3, "the part should span several shards"
    target = shards[len(shards) // 2]
    data = bytearray(target.read_bytes())
    data[len(data) // 3] ^= 0x5A
    target.write_bytes(bytes(data))
    return "keys"


def delete_shard(store: Path) -> str:
    shards = shard_files(store, "masses")
    shards[len(shards) // 2].unlink()
    return "masses"


def truncate_shard(store: Path) -> str:
    target = shard_files(store, "pointers")[-1]
    target.write_bytes(target.read_bytes()[:target.stat().st_size // 2])
    return "pointers"


def empty_shard(store: Path) -> str:
    """Truncated to nothing: zarr alone would read the shard back as fill values."""
    target = shard_files(store, "agg_residuals")[0]
    target.write_bytes(b"")
    return "agg_residuals"


DAMAGE = {"flipped-byte": flip_middle, "deleted-shard": delete_shard,
          "truncated-shard": truncate_shard, "emptied-shard": empty_shard}


@pytest.fixture(params=sorted(DAMAGE))
def damaged(request, pristine, tmp_path) -> tuple[Path, str]:
    copy = tmp_path / "store"
    shutil.copytree(pristine, copy)
    return copy, DAMAGE[request.param](copy)


def test_the_codec_chain_checksums_every_inner_chunk_and_the_shard_index(pristine):
    node = json.loads((pristine / "parts" / PART / "keys" / "zarr.json").read_text())
    (sharding,) = node["codecs"]
    assert sharding["name"] == "sharding_indexed"
    inner = [c["name"] for c in sharding["configuration"]["codecs"]]
    assert inner == ["bytes", "blosc", "crc32c"]
    assert [c["name"] for c in sharding["configuration"]["index_codecs"]][-1] == "crc32c"


def test_a_flipped_byte_fails_the_zarr_read_itself(pristine, tmp_path):
    copy = tmp_path / "store"
    shutil.copytree(pristine, copy)
    flip_middle(copy)
    array = zarr.open_array(str(copy / "parts" / PART / "keys"), mode="r")
    with pytest.raises(ValueError, match="checksum"):
        array[...]


def one_error(capfd) -> str:
    err = capfd.readouterr().err.strip().splitlines()
    lines = [line for line in err if line.startswith("nex: error:")]
    assert len(lines) == 1, err
    return lines[0]


def test_verify_names_the_damage(damaged, capfd):
    store, array = damaged
    capfd.readouterr()
    assert main(["store", "verify", str(store)]) == 2
    error = one_error(capfd)
    assert f"part {PART}" in error and array in error


def test_export_names_the_damage_and_writes_nothing(damaged, tmp_path, capfd):
    store, array = damaged
    capfd.readouterr()
    assert main(["store", "export-rows-cache", str(store), str(tmp_path / "cache")]) == 2
    error = one_error(capfd)
    assert f"part {PART}" in error and array in error
    assert not (tmp_path / "cache").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["store"]


def test_python_readers_name_the_damage(damaged):
    store, array = damaged
    opened = ActivationStore.open(store)
    with pytest.raises(StoreError, match=f"part {PART}.*{array}"):
        opened.read_corpus()
    with pytest.raises(StoreError, match=f"part {PART}"):
        opened.read_records(PART)
    ids = opened.manifest(["p-first"])["trace_id"].to_pylist()
    assert opened.read_corpus(trace_ids=ids).n_traces == 6  # undamaged parts still read


@pytest.mark.parametrize("engine", ["local", "beam", "dask"])
def test_score_names_the_damage_and_writes_no_table(damaged, tmp_path, capfd, engine):
    store, array = damaged
    out = tmp_path / "tables"
    extra = ["--workers", "2"] if engine == "dask" else []
    capfd.readouterr()
    assert main(["score", str(store), "--out", str(out), "--engine", engine, *extra]) == 2
    error = one_error(capfd)
    assert f"part {PART}" in error and array in error
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["store"]


def test_an_undamaged_store_reads_the_same_through_every_reader(pristine, tmp_path):
    store = ActivationStore.open(pristine)
    corpus = store.read_corpus()
    records = [r for part in store.parts() for r in store.read_records(part)]
    assert corpus.n_traces == len(records) == 18
    assert np.array_equal(corpus.keys, np.concatenate([r.keys for r in records]))
    assert main(["store", "verify", str(pristine)]) == 0
