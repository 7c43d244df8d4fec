"""Which checkpoints enter the testbed family's merges (decided from the preset alone)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from pipelines.testbed.presets import get_preset
from pipelines.testbed.run import family_spec, variants_of


def _inputs(spec: dict) -> dict[str, list[str]]:
    return {v["name"]: [m if isinstance(m, str) else m["model"] for m in v["models"]]
            for v in spec["variants"]}


def test_results_merges_use_the_last_three_checkpoints():
    spec = family_spec(get_preset("results"))
    a, b, c = (f"checkpoints/step-{s:06d}" for s in (400, 550, 700))
    assert spec["base"] == a  # task vectors from a trained checkpoint, not the random init
    assert _inputs(spec) == {"linear": [b, c], "slerp": [a, c], "task-arith": [c],
                             "ties": [b, c], "dare": [c]}


def test_ci_family_and_two_checkpoint_fallback(tmp_path):
    ci = get_preset("ci")
    spec = family_spec(ci)
    assert spec["base"] == "checkpoints/step-000060"
    assert _inputs(spec)["linear"] == ["checkpoints/step-000090", "checkpoints/step-000120"]
    names = list(variants_of(tmp_path, ci))
    assert names[:4] == ["step-000030", "step-000060", "step-000090", "step-000120"]
    assert len(names) == 9  # 4 checkpoints + 5 merges: a family of >= 8 variants
    two = family_spec(replace(ci, checkpoints=(0, 60, 120)))
    assert two["base"] == "checkpoints/step-000000"
    assert _inputs(two)["slerp"] == ["checkpoints/step-000060", "checkpoints/step-000120"]
    with pytest.raises(ValueError, match="at least 2 trained"):
        family_spec(replace(ci, checkpoints=(0, 120)))
