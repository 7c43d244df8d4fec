"""Bad capture input is one `nex: error:` line and exit 2, never a traceback."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from nex_transforms import NexError
from pipelines.capture.errors import ModelError
from pipelines.testing.models import build_tiny_model, tiny_config
from pipelines.cli import main


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("models") / "llama", "llama", seed=1)


@pytest.fixture(scope="module")
def prompts(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "p.jsonl"
    path.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"what is {i} plus {i} ?"})
                            + "\n" for i in range(2)))
    return path


def capture(model, prompts, out, *extra) -> list[str]:
    return ["capture", "--model", str(model), "--prompts", str(prompts), "--out", str(out),
            "--max-new-tokens", "4", "--no-progress", *extra]


def one_error_line(capfd) -> str:
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("nex: error:"), err
    assert "Traceback" not in err
    return lines[0]


def test_an_unknown_device_is_a_one_line_error(tiny, prompts, tmp_path, capfd):
    capfd.readouterr()
    assert main(capture(tiny, prompts, tmp_path / "s", "--device", "tpu9")) == 2
    line = one_error_line(capfd)
    assert "--device: expected cpu or cuda[:N], got 'tpu9'" in line
    assert not (tmp_path / "s" / "manifest.parquet").exists()


def test_corrupt_model_weights_are_a_one_line_error(tiny, prompts, tmp_path, capfd):
    broken = tmp_path / "broken"
    shutil.copytree(tiny, broken)
    weights = sorted(broken.glob("*.safetensors"))
    assert weights
    for path in weights:
        path.write_bytes(b"not a safetensors file" * 4)
    capfd.readouterr()
    assert main(capture(broken, prompts, tmp_path / "s")) == 2
    line = one_error_line(capfd)
    assert f"model {broken}: expected a loadable causal language model" in line


def test_an_unknown_tiny_architecture_is_a_nex_error():
    with pytest.raises(ModelError, match="tiny model architecture: expected one of"):
        tiny_config("transformer-xl", vocab_size=64)
    assert issubclass(ModelError, NexError) and issubclass(ModelError, ValueError)
