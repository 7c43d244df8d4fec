"""Testbed presets: model size, training length, checkpoints, family, capture and transfer.

``ci`` trains in a few minutes on 2 shared CPU cores and exists to run the whole
testbed end to end in CI; ``results`` is the larger run reported in
docs/results.md (testbed section). Only these fields differ between them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from nex_transforms.errors import expected

from .errors import TestbedError


@dataclass(frozen=True)
class Preset:
    """Everything a testbed run needs; frozen so that it records itself in outputs."""

    name: str
    # model (Qwen3 architecture)
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_positions: int
    # training
    steps: int
    batch_size: int
    learning_rate: float
    warmup_steps: int
    checkpoints: tuple[int, ...]
    train_seed: int = 0
    # problems
    min_steps: int = 2
    max_steps: int = 5
    heldout_seed: int = 1_000_003
    n_heldout: int = 16
    # capture
    samples: int = 2
    max_new_tokens: int = 640
    row_size: int = 4
    top_k_neurons: int = 100
    temperature: float = 0.8
    capture_batch_size: int = 16
    # transfer
    transfer_seed_draws: int = 3
    transfer_size: int = 32
    n_transfer_prompts: int = 32
    transfer_heldout_seed: int = 2_000_003
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["checkpoints"] = list(self.checkpoints)
        return data


PRESETS = {
    "ci": Preset(
        name="ci", hidden_size=128, intermediate_size=256, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=32, max_positions=1024, steps=120, batch_size=16,
        learning_rate=3e-3, warmup_steps=15, checkpoints=(0, 30, 60, 90, 120),
        n_heldout=6, samples=2, max_new_tokens=400, n_transfer_prompts=8, transfer_size=24,
        transfer_seed_draws=2),
    "results": Preset(
        name="results", hidden_size=128, intermediate_size=384, num_layers=3, num_heads=4,
        num_kv_heads=2, head_dim=32, max_positions=1024, steps=700, batch_size=16,
        learning_rate=3e-3, warmup_steps=40, checkpoints=(0, 75, 150, 250, 400, 550, 700),
        n_heldout=16, samples=4, n_transfer_prompts=48, transfer_size=48,
        transfer_seed_draws=4),
    # Chosen on the regime diagnostics alone (docs/testbed.md, "Regime of the captures"),
    # before any evaluation: a pool of 2 x 1,024 neurons, 10 entries a row of 8 tokens, and
    # solutions of 4-10 steps, so a response has about 60 rows, uses about 6 % of the pool
    # and its late rows still bring new neurons.
    "regime": Preset(
        name="regime", hidden_size=128, intermediate_size=1024, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=32, max_positions=1024, steps=700, batch_size=16,
        learning_rate=3e-3, warmup_steps=40, checkpoints=(0, 75, 150, 250, 400, 550, 700),
        min_steps=4, max_steps=10, n_heldout=16, samples=4, row_size=8, top_k_neurons=10,
        n_transfer_prompts=32, transfer_size=48, transfer_seed_draws=4),
}


def get_preset(name: str, **overrides) -> Preset:
    """A preset by name, with fields replaced by ``overrides`` (None values ignored).
    Overriding ``steps`` alone keeps the checkpoints up to it, adds a final one, and caps
    the warm-up at a tenth of the steps."""
    if name not in PRESETS:
        raise TestbedError(expected("--preset", f"one of {sorted(PRESETS)}", repr(name)))
    preset = PRESETS[name]
    changes = {k: v for k, v in overrides.items() if v is not None}
    if "steps" in changes and "checkpoints" not in changes and changes["steps"] >= 1:
        # a shorter (or longer) run keeps the checkpoints that fit and ends with one
        changes["checkpoints"] = tuple(sorted(
            {c for c in preset.checkpoints if c <= changes["steps"]} | {changes["steps"]}))
        changes["warmup_steps"] = min(preset.warmup_steps, max(1, changes["steps"] // 10))
    if changes:
        preset = replace(preset, **changes)
    if preset.steps < 1 or any(c < 0 or c > preset.steps for c in preset.checkpoints):
        raise TestbedError(expected("checkpoints", f"steps within 0..{preset.steps}",
                                    list(preset.checkpoints)))
    return preset
