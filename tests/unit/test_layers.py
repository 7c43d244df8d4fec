"""Layer rules: the core imports numpy/scipy only; flows > pipelines > core; the layers inside
pipelines (pyproject.toml; cycles: test_import_cycles.py)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_import_linter_contracts_hold():
    exe = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(exe), "--no-cache"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "broken" in done.stdout and "0 broken" in done.stdout


def test_the_layers_inside_pipelines_are_declared_and_exhaustive():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    layered = {c["containers"][0]: c for c in config["contracts"]
               if c["type"] == "layers" and c.get("containers")}
    assert {"pipelines", "pipelines.store", "pipelines.capture", "pipelines.tables",
            "pipelines.workspace"} <= set(layered)
    assert all(c.get("exhaustive") for c in layered.values())
    # no upward import is tolerated: none is listed as ignored
    assert not any(c.get("ignore_imports") for c in layered.values())


def test_importing_the_core_loads_no_engine():
    code = ("import sys, nex_transforms; "
            "heavy = {'torch', 'transformers', 'zarr', 'pyarrow', 'apache_beam', 'dask', "
            "'distributed', 'prefect', 'mlflow', 'pandas', 'sklearn', 'hmmlearn', 'scipy'}; "
            "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_cli_help_is_light():
    code = ("import sys; from pipelines.cli import build_parser; build_parser(); "
            "heavy = {'torch', 'transformers', 'zarr', 'apache_beam', 'dask', 'distributed', "
            "'prefect', 'mlflow', 'matplotlib', 'huggingface_hub', 'pandas', 'sklearn'}; "
            "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, check=True)
    assert done.stdout.strip() == "[]"
