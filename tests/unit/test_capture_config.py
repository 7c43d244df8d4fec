"""One capture configuration for the CLI, the calibration sets and the flows: the shipped
calibration sets keep the keys that name their published results, every caller completes
its configuration from the same defaults, and ``nex capture``'s flags default to them."""

from __future__ import annotations

import argparse
from dataclasses import asdict

import pytest

from pipelines.workspace import load_calibration_set
from pipelines.workspace.calibration import shipped_calibration_sets

pytestmark = pytest.mark.timeout(120)

#: The keys of the shipped calibration sets: they name published results, so a change
#: of the capture configuration code must leave them as they are.
SHIPPED_KEYS = {
    "arithmetic": "arithmetic-17d0ad40e608b0180e369e87f8dcf21e1d9b00dd00cd5cead1a7890354ee321c",
    "gsm8k": "gsm8k-d74bb3ffa862e300574302f71d31fb816c3b6efb13bfb17636e73866ad1af5fa",
}

#: The full capture configuration each shipped set gives a checkpoint (model "/m", store
#: "/s", model id "m-1", no run parameters).
SHIPPED_CONFIGS = {
    "arithmetic": dict(prompts="arithmetic", samples=2, max_new_tokens=96, batch_size=12,
                       top_k_neurons=300, row_size=4, limit=6, part_size=6),
    "gsm8k": dict(prompts="gsm8k", samples=2, max_new_tokens=192, batch_size=8,
                  top_k_neurons=500, row_size=8, limit=4, part_size=4),
}
#: What every shipped set leaves to the capture defaults (or pins to the same value).
COMMON = dict(model="/m", out="/s", temperature=0.7, top_p=0.95, top_k=0, seed=0,
              device="cpu", dtype="float32", layers="all", responses=None, shard="0/1",
              prompt_format="auto", model_id="m-1", revision=None, id_column="id",
              prompt_column="prompt", answer_column=None, hash_ids=False, progress=False,
              overwrite=False)
#: The CLI's defaults (``nex capture --model m --prompts p --out o``).
CLI_DEFAULTS = dict(samples=1, max_new_tokens=512, temperature=0.7, top_p=0.95, top_k=0,
                    seed=0, batch_size=8, device="cpu", dtype="float32", top_k_neurons=500,
                    row_size=32, layers="all", limit=None, responses=None, part_size=16,
                    shard="0/1", prompt_format="auto", model_id=None, revision=None,
                    id_column="id", prompt_column="prompt", answer_column=None,
                    hash_ids=False, progress=True, overwrite=False)


def test_the_shipped_calibration_sets_keep_their_keys():
    assert set(shipped_calibration_sets()) == set(SHIPPED_KEYS)
    for name, fingerprint in SHIPPED_KEYS.items():
        calset = load_calibration_set(name)
        assert f"{calset.name}-{calset.fingerprint}" == fingerprint
        assert calset.key == fingerprint[:len(name) + 9]


def test_the_shipped_calibration_sets_give_the_same_capture_configs():
    for name, pinned in SHIPPED_CONFIGS.items():
        config = load_calibration_set(name).capture_config("/m", "/s", "m-1")
        assert asdict(config) == dict(COMMON, **pinned), name


def _cli_config(*argv: str):
    from pipelines.commands import capture

    parser = argparse.ArgumentParser()
    capture.register(parser.add_subparsers())
    args = parser.parse_args(["capture", "--model", "m", "--prompts", "p", "--out", "o", *argv])
    return capture.config_from_args(args)


def test_the_cli_defaults_are_the_capture_config_defaults():
    from pipelines.capture import CaptureConfig

    config = _cli_config()
    assert asdict(config) == dict(model="m", prompts="p", out="o", **CLI_DEFAULTS)
    assert config == CaptureConfig(model="m", prompts="p", out="o")


def test_calibration_set_parameters_fall_back_to_the_capture_defaults():
    calset = load_calibration_set({"name": "x", "prompts": "gsm8k", "limit": 3})
    assert calset.param("samples") == CLI_DEFAULTS["samples"]
    assert calset.param("max_new_tokens") == CLI_DEFAULTS["max_new_tokens"]
    assert calset.param("row_size") == CLI_DEFAULTS["row_size"]
    assert calset.n_traces == 3 * CLI_DEFAULTS["samples"]


def test_every_flag_reaches_the_capture_config():
    config = _cli_config("--samples", "3", "--row-size", "8", "--no-progress", "--hash-ids",
                         "--dtype", "bfloat16", "--shard", "1/2", "--limit", "5")
    assert (config.samples, config.row_size, config.progress, config.hash_ids, config.dtype,
            config.shard, config.limit) == (3, 8, False, True, "bfloat16", "1/2", 5)


def test_the_documented_defaults_are_the_defaults():
    from pipelines.capture import config

    table = {}
    for line in config.__doc__.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0] in config.CAPTURE_DEFAULTS:
            table[words[0]] = words[1]
    assert table == {name: str(value) for name, value in config.CAPTURE_DEFAULTS.items()}
