"""Under CI=true a skipped test (or a module skipped for a missing install) fails the run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

MODULE = '''
import pytest

def test_runs():
    assert True

def test_skipped():
    pytest.skip("needs something not installed")
'''
MISSING = '''
import pytest

pytest.importorskip("a_module_that_is_not_installed")

def test_never_runs():
    assert True
'''
PASSING = '''
def test_runs():
    assert True
'''


def run(tmp_path: Path, source: str, ci: str | None) -> subprocess.CompletedProcess:
    (tmp_path / "test_sample.py").write_text(source)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = str(REPO)
    # the repository's conftest as a plugin, on a folder outside the repository's tests
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest",
                           "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
                           str(tmp_path / "test_sample.py")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_a_skip_fails_the_run_only_under_ci(tmp_path):
    local = run(tmp_path, MODULE, None)
    assert local.returncode == 0, local.stdout
    ci = run(tmp_path, MODULE, "true")
    assert ci.returncode == 1, ci.stdout
    assert "CI: skipped tests fail the run" in ci.stdout
    assert "test_sample.py" in ci.stdout and "needs something not installed" in ci.stdout


def test_a_module_skipped_for_a_missing_install_fails_under_ci(tmp_path):
    ci = run(tmp_path, MISSING, "true")
    assert ci.returncode == 1, ci.stdout
    assert "a_module_that_is_not_installed" in ci.stdout


def test_a_clean_run_passes_under_ci(tmp_path):
    ci = run(tmp_path, PASSING, "true")
    assert ci.returncode == 0, ci.stdout
