"""The built wheel ships the calibration sets: build it from a copy of the sources, install
it (not editable, no dependencies, no network) into a fresh virtual environment in a temp
folder, and load every shipped calibration set from there. The fresh environment reaches
the dependencies loading needs (numpy, pyyaml, pyarrow, ...) through a path file naming
this environment's site-packages, which holds no copy of the project itself."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LOAD = """
import json, pipelines
from pipelines.workspace import CALIBRATION_SET_DIR, load_calibration_set, shipped_calibration_sets
names = shipped_calibration_sets()
print(json.dumps({"module": pipelines.__file__, "dir": str(CALIBRATION_SET_DIR), "sets":
                  {n: load_calibration_set(n).key for n in names}}))
"""


def _run(argv: list[str], **kwargs) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, **kwargs)
    assert done.returncode == 0, f"{argv}: {done.stdout[-2000:]}{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.timeout(600)
def test_the_installed_wheel_loads_every_shipped_calibration_set(tmp_path):
    source = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("nex_transforms", "pipelines", "flows"):
        shutil.copytree(REPO / name, source / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    built = _run([sys.executable, "-c", "import sys; from setuptools import build_meta; "
                  "print(build_meta.build_wheel(sys.argv[1]))", str(wheels)], cwd=source)
    wheel = wheels / built.strip().splitlines()[-1]
    shipped = sorted(p.name for p in (REPO / "pipelines" / "workspace" / "calibration_sets")
                     .glob("*.yaml"))
    with zipfile.ZipFile(wheel) as archive:
        packed = sorted(Path(n).name for n in archive.namelist()
                        if n.startswith("pipelines/workspace/calibration_sets/"))
    assert packed == shipped and {"gsm8k.yaml", "arithmetic.yaml"} <= set(shipped)

    venv = tmp_path / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    _run([base, "-m", "venv", "--without-pip", str(venv)])
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
          "--no-index", "--quiet", str(wheel)])
    fresh_site = Path(_run([str(python), "-c", "import sysconfig; "
                            "print(sysconfig.get_paths()['purelib'])"]).strip())
    ours = [p for p in site.getsitepackages() if Path(p).is_dir()] + \
        [sysconfig.get_paths()["purelib"]]
    (fresh_site / "nex-test-dependencies.pth").write_text("\n".join(dict.fromkeys(ours)) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    loaded = json.loads(_run([str(python), "-c", LOAD], cwd=tmp_path, env=env)
                        .strip().splitlines()[-1])
    assert Path(loaded["module"]).is_relative_to(venv), loaded["module"]  # not the checkout
    assert Path(loaded["dir"]).is_relative_to(venv)
    from pipelines.workspace import load_calibration_set

    assert loaded["sets"] == {Path(n).stem: load_calibration_set(Path(n).stem).key
                              for n in shipped}
