"""The `nex rows-cache` commands on the reference example and on broken caches."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipelines.cli import main
from pipelines.rows_cache import read_rows_cache, write_rows_cache


@pytest.fixture()
def cache(reference_dir, tmp_path) -> Path:
    out = tmp_path / "cache"
    shutil.copytree(reference_dir / "example_cache", out)
    for path in out.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return out


def test_run_writes_weights_scores_and_summary(cache, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["rows-cache", "run", str(cache), "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert round(summary["nex_score"], 5) == 0.98684
    assert summary["n_responses"] == 1 and summary["n_scored_responses"] == 1
    assert summary["rho"] == 0.95 and summary["min_run"] == 2
    assert summary["n_nonzero_weights"] == 2480
    assert json.loads((out / "summary.json").read_text()) == summary
    with np.load(out / "weights.npz") as data:
        weights = data["weights"]
    assert weights.dtype == np.float32 and weights.shape == (1 << 22,)
    assert np.count_nonzero(weights) == 2480
    gmf = np.load(out / "response_scores.npy")
    assert gmf.shape == (1,) and round(float(gmf[0]), 5) == 0.98684


def test_learn_then_score_and_published_weights(cache, tmp_path, capsys, reference_dir):
    weights = tmp_path / "w.npz"
    assert main(["rows-cache", "learn", str(cache), "--out", str(weights)]) == 0
    capsys.readouterr()
    assert main(["rows-cache", "score", str(cache), "--weights", str(weights), "--json"]) == 0
    assert round(json.loads(capsys.readouterr().out)["nex_score"], 5) == 0.98684
    assert main(["rows-cache", "score", str(cache), "--weights",
                 str(reference_dir / "example_weights.npz"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert round(result["nex_score"], 5) == 0.99831
    assert round(result["log_gap"], 4) == 2.7724
    assert result["n_scored_responses"] == 1


def test_labels(cache, capsys):
    assert main(["rows-cache", "labels", str(cache), "--response", "0"]) == 0
    assert capsys.readouterr().out.strip() == (
        "EEEEEEEExxxxxxxxEEEEEEEEEEEExxxxxxxxEEExxxxxxxxxxxxxEExxxxxxxxxxxxxxxxxxxEEEEEEEEEE")
    assert main(["rows-cache", "labels", str(cache), "--response", "3"]) == 2


def _write(path: Path, values, dtype):
    np.asarray(values, dtype=dtype).tofile(path)


def corrupt_missing(cache):
    (cache / "rows" / "keys.uint32").unlink()


def corrupt_not_monotone(cache):
    ptr = np.fromfile(cache / "rows" / "row_ptr.int64", dtype="<i8")
    ptr[5], ptr[6] = ptr[6], ptr[5]
    _write(cache / "rows" / "row_ptr.int64", ptr, "<i8")


def corrupt_overrun(cache):
    ptr = np.fromfile(cache / "rows" / "row_ptr.int64", dtype="<i8")
    ptr[-1] += 10
    _write(cache / "rows" / "row_ptr.int64", ptr, "<i8")


def corrupt_key_space(cache):
    keys = np.fromfile(cache / "rows" / "keys.uint32", dtype="<u4")
    keys[3] = 100 << 16
    _write(cache / "rows" / "keys.uint32", keys, "<u4")


def corrupt_empty(cache):
    for name in ("sample_row_ptr", "row_ptr", "token_row_ptr"):
        _write(cache / "rows" / f"{name}.int64", [0], "<i8")
    _write(cache / "rows" / "keys.uint32", [], "<u4")
    _write(cache / "rows" / "w_sum.float16", [], "<f2")
    _write(cache / "base" / "row_ptr.int64", [0], "<i8")
    _write(cache / "base" / "keys.uint32", [], "<u4")
    _write(cache / "base" / "w_sum.float16", [], "<f2")


def corrupt_truncated(cache):
    with open(cache / "rows" / "w_sum.float16", "ab") as f:
        f.write(b"\x00")


@pytest.mark.parametrize("corrupt, message", [
    (corrupt_missing, "keys.uint32"),
    (corrupt_not_monotone, "non-decreasing"),
    (corrupt_overrun, "the length it indexes"),
    (corrupt_key_space, "2^22"),
    (corrupt_empty, "empty cache"),
    (corrupt_truncated, "multiple of 2 bytes"),
])
def test_bad_caches_fail_cleanly_and_write_nothing(cache, tmp_path, capsys, corrupt, message):
    corrupt(cache)
    out = tmp_path / "out"
    for argv in (["rows-cache", "run", str(cache), "--out", str(out)],
                 ["rows-cache", "learn", str(cache), "--out", str(tmp_path / "w.npz")]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("nex: error:") and message in err and "\n" not in err
    assert not out.exists() and not (tmp_path / "w.npz").exists()


def test_bad_weights(cache, tmp_path, capsys):
    short = tmp_path / "short.npz"
    np.savez(short, weights=np.zeros(100, np.float32))
    wrong_key = tmp_path / "key.npz"
    np.savez(wrong_key, w=np.zeros(1 << 22, np.float32))
    for path, message in [(short, "length 2^22"), (wrong_key, "'weights'"),
                          (tmp_path / "none.npz", "existing")]:
        assert main(["rows-cache", "score", str(cache), "--weights", str(path)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1


def test_existing_run_output_survives_a_failed_rerun(cache, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["rows-cache", "run", str(cache), "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    corrupt_overrun(cache)
    assert main(["rows-cache", "run", str(cache), "--out", str(out)]) == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_write_then_read_round_trip(cache, tmp_path):
    corpus = read_rows_cache(cache)
    copy = write_rows_cache(corpus, tmp_path / "copy")
    for path in cache.rglob("*.*"):
        assert (copy / path.relative_to(cache)).read_bytes() == path.read_bytes()


def test_console_script_exists_and_runs(cache):
    exe = Path(sys.executable).with_name("nex")
    assert exe.exists(), "the `nex` console script is installed with the package"
    done = subprocess.run([str(exe), "rows-cache", "labels", str(cache)], capture_output=True,
                          text=True, check=True)
    assert done.stdout.startswith("EEEEEEEExxxxxxxx")
