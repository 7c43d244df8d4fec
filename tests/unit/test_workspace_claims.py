"""Claims and leases (pipelines.crashsafe, one implementation for the store's writer leases
and the workspace's claims) with real processes: exclusive among contenders, a dead
holder's claim taken over at once, a lapsed heartbeat taken over, a live one kept; the
atomic folder replace; workspace files readable by the group."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.crashsafe import (Claim, atomic_write_json, file_mode, read_holder,
                                 replace_folder)
from pipelines.workspace import Workspace, load_calibration_set

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[2]
CALSET = {"name": "c", "prompts": "gsm8k"}


CONTENDER = """
import sys, time
from pathlib import Path
from pipelines.workspace import Workspace, load_calibration_set
go = Path(sys.argv[2])
while not go.exists():
    time.sleep(0.005)
claim = Workspace(sys.argv[1]).claim("ckpt-0123", load_calibration_set({"name": "c", "prompts": "gsm8k"}))
time.sleep(1.0)  # hold it while the others try
if claim:
    claim.release()
sys.exit(0 if claim else 3)
"""


def test_a_claim_is_exclusive_across_processes(tmp_path):
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", CONTENDER, str(tmp_path), str(go)], cwd=REPO)
             for _ in range(4)]
    time.sleep(3.0)  # let them all start and wait
    go.touch()
    codes = [p.wait(60) for p in procs]
    assert sorted(codes) == [0, 3, 3, 3]
    assert list((tmp_path / "claims").glob("*.claim")) == []


HOLDER = """
import sys, time
from pipelines.workspace import Workspace, load_calibration_set
claim = Workspace(sys.argv[1]).claim("ckpt-0123", load_calibration_set({"name": "c", "prompts": "gsm8k"}),
                                     owner="scan A", stale_seconds=float(sys.argv[2]))
print("claimed" if claim else "refused", flush=True)
time.sleep(600)
"""


def _holder(root: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(root), str(seconds)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "claimed"
    return proc


def test_a_live_holders_claim_is_kept_and_a_dead_ones_is_taken_over_at_once(tmp_path):
    ws, calset = Workspace(tmp_path), load_calibration_set(CALSET)
    holder = _holder(tmp_path, 300)
    try:
        assert ws.claim("ckpt-0123", calset) is None
        seen = ws.claim_holder("ckpt-0123", calset)
        assert seen.live and seen.record["owner"] == "scan A" and seen.record["pid"] == holder.pid
        assert "scan A (pid" in seen.describe()
        assert ws.claims()[0]["holder"]["owner"] == "scan A"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # its heartbeat is fresh, but its process died on this host: taken over at once
    assert not ws.claim_holder("ckpt-0123", calset).live
    claim = ws.claim("ckpt-0123", calset, owner="scan B")
    assert claim is not None and ws.claim_holder("ckpt-0123", calset).record["owner"] == "scan B"
    claim.release()
    assert ws.claim_holder("ckpt-0123", calset) is None


def test_a_claim_whose_heartbeat_lapsed_is_taken_over(tmp_path):
    ws, calset = Workspace(tmp_path), load_calibration_set(CALSET)
    holder = _holder(tmp_path, 2.0)  # beats every 0.5 s
    try:
        time.sleep(2.5)
        assert ws.claim("ckpt-0123", calset) is None  # the heartbeat keeps it live
        holder.send_signal(signal.SIGSTOP)  # alive but frozen: no more beats
        time.sleep(2.5)
        holder_now = ws.claim_holder("ckpt-0123", calset)
        assert not holder_now.live and holder_now.age >= 2.0
        claim = ws.claim("ckpt-0123", calset, owner="scan B")
        assert claim is not None
        holder.send_signal(signal.SIGCONT)
        time.sleep(1.0)  # the old holder's heartbeat must not revive its claim
        assert read_holder(claim.path, 2.0).record["owner"] == "scan B" and not claim.lost
        claim.release()
    finally:
        holder.kill()
        holder.wait()


def test_a_claim_of_another_host_is_judged_by_its_heartbeat_alone(tmp_path):
    path = tmp_path / "x.claim"
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "seconds": 1.0, "token": "t"}))
    assert read_holder(path, 1.0).live
    assert Claim.acquire(path, 1.0) is None
    old = time.time() - 5
    os.utime(path, (old, old))
    claim = Claim.acquire(path, 1.0)
    assert claim is not None and read_holder(path, 1.0).record["host"] != "elsewhere"
    claim.release()
    assert not path.exists()


def test_a_done_checkpoint_cannot_be_claimed(tmp_path):
    ws, calset = Workspace(tmp_path), load_calibration_set(CALSET)
    ws.marker_path("ckpt-0123", calset).parent.mkdir(parents=True)
    ws.marker_path("ckpt-0123", calset).write_text("{}")
    assert ws.claim("ckpt-0123", calset) is None


def test_replace_folder_swaps_whole_folders_and_keeps_the_old_one_on_failure(tmp_path):
    dest = tmp_path / "out"

    def build(version):
        def write(staging: Path) -> None:
            (staging / "a").write_text(version)
            (staging / "sub").mkdir()
            (staging / "sub" / "b").write_text(version)
        return write

    replace_folder(dest, build("1"))
    replace_folder(dest, build("2"))
    assert (dest / "a").read_text() == "2" and (dest / "sub" / "b").read_text() == "2"

    def failing(staging: Path) -> None:
        (staging / "a").write_text("3")
        raise OSError("disk full")

    with pytest.raises(OSError):
        replace_folder(dest, failing)
    assert (dest / "a").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    # a crash between the two renames of the fallback path: the old version comes back
    dest.rename(tmp_path / ".out.old-123")
    replace_folder(dest, build("4"))
    assert (dest / "a").read_text() == "4" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_workspace_files_are_readable_by_the_group(tmp_path):
    old = os.umask(0o022)
    try:
        written = atomic_write_json(tmp_path / "x.json", {"a": 1})
        assert stat.S_IMODE(written.stat().st_mode) == 0o644 == file_mode()
        os.umask(0o002)
        assert stat.S_IMODE(atomic_write_json(tmp_path / "y.json", {}).stat().st_mode) == 0o664
    finally:
        os.umask(old)
