"""Train a small Qwen3-architecture model on the synthetic problems; save checkpoints.

Each checkpoint is a Hugging Face model folder (``config.json``, safetensors weights,
generation config, the character tokenizer with its chat template) and a
``testbed.json`` card (preset, step, training loss), loadable by ``nex capture --model
DIR`` unchanged. Training is deterministic given the preset (seeded data stream, seeded
initialisation, CPU kernels, fixed thread count).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from .presets import Preset
from .problems import Problem, generate_problems, prompt_records
from .tokenizer import EOS_ID, PAD_ID, build_tokenizer, format_prompt

CARD_NAME = "testbed.json"
#: Preset fields that determine the trained weights (capture and transfer fields do not).
TRAINING_FIELDS = ("hidden_size", "intermediate_size", "num_layers", "num_heads",
                   "num_kv_heads", "head_dim", "max_positions", "steps", "batch_size",
                   "learning_rate", "warmup_steps", "train_seed", "min_steps", "max_steps")


def model_config(preset: Preset, vocab_size: int):
    """The ``Qwen3Config`` of a preset."""
    from transformers import Qwen3Config

    return Qwen3Config(
        vocab_size=vocab_size, hidden_size=preset.hidden_size,
        intermediate_size=preset.intermediate_size, num_hidden_layers=preset.num_layers,
        num_attention_heads=preset.num_heads, num_key_value_heads=preset.num_kv_heads,
        head_dim=preset.head_dim, max_position_embeddings=preset.max_positions,
        tie_word_embeddings=True, pad_token_id=PAD_ID, eos_token_id=EOS_ID, bos_token_id=None,
        rope_theta=10000.0, attention_dropout=0.0, use_cache=True)


def encode_example(tokenizer, problem: Problem) -> tuple[list[int], int]:
    """Token ids of ``prompt + solution + <eos>`` and the prompt length."""
    prompt = tokenizer(format_prompt(problem.question), add_special_tokens=False)["input_ids"]
    solution = tokenizer(problem.solution, add_special_tokens=False)["input_ids"]
    return list(prompt) + list(solution) + [EOS_ID], len(prompt)


def training_problems(preset: Preset) -> list[Problem]:
    """The training stream of a preset: ``steps * batch_size`` problems from ``train_seed``."""
    return generate_problems(preset.train_seed, preset.steps * preset.batch_size, prefix="t",
                             min_steps=preset.min_steps, max_steps=preset.max_steps)


def heldout_problems(preset: Preset, seed: int | None = None, n: int | None = None,
                     exclude: set[str] | None = None) -> list[Problem]:
    """Held-out problems from a seed different from the training seed, skipping any
    question that also occurs in the training stream."""
    if exclude is None:
        exclude = {p.question for p in training_problems(preset)}
    return generate_problems(preset.heldout_seed if seed is None else seed,
                             preset.n_heldout if n is None else n, prefix="h",
                             min_steps=preset.min_steps, max_steps=preset.max_steps,
                             exclude=exclude)


def write_prompts(problems: list[Problem], path: str | Path) -> Path:
    """Write a prompts JSONL (``id``, ``prompt``, ``answer``, ``n_steps``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for row in prompt_records(problems):
            handle.write(json.dumps(row) + "\n")
    tmp.replace(path)
    return path


def save_checkpoint(model, tokenizer, path: Path, card: dict) -> Path:
    """Save a loadable model folder with its tokenizer and card (written atomically:
    built beside the target and renamed)."""
    import shutil

    path = Path(path)
    staging = path.with_name(f".{path.name}.staging")
    if staging.exists():
        shutil.rmtree(staging)
    model.generation_config.eos_token_id = EOS_ID
    model.generation_config.pad_token_id = PAD_ID
    model.generation_config.bos_token_id = None
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / CARD_NAME).write_text(json.dumps(card, indent=1, sort_keys=True) + "\n")
    if path.exists():
        shutil.rmtree(path)
    staging.rename(path)
    return path


@dataclass
class TrainSummary:
    """What training produced."""

    checkpoints: dict[int, str] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    n_parameters: int = 0
    tokens: int = 0


def _finished(preset: Preset, out: Path) -> TrainSummary | None:
    """The summary of a completed training of ``preset`` in ``out`` (every checkpoint
    saved and ``train.json`` written with the same training fields), else None."""
    record = out / "train.json"
    if not record.is_file():
        return None
    data = json.loads(record.read_text())
    stored, wanted = data.get("preset", {}), preset.to_dict()
    if any(stored.get(k) != wanted[k] for k in TRAINING_FIELDS):
        return None
    paths = {step: out / "checkpoints" / checkpoint_name(step) for step in preset.checkpoints}
    if not all((path / CARD_NAME).is_file() for path in paths.values()):
        return None
    return TrainSummary(checkpoints={s: str(p) for s, p in paths.items()},
                        losses=list(data["losses"]), seconds=float(data["seconds"]),
                        n_parameters=int(data["n_parameters"]), tokens=int(data["tokens"]))


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def _learning_rate(preset: Preset, step: int) -> float:
    """The learning rate of optimizer step ``step`` (from 0): linear warm-up over
    ``warmup_steps``, then a cosine decay to a tenth of the peak at the last step."""
    if step < preset.warmup_steps:
        return preset.learning_rate * (step + 1) / preset.warmup_steps
    progress = (step - preset.warmup_steps) / max(1, preset.steps - preset.warmup_steps)
    return preset.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _optimizer(model, preset: Preset):
    """AdamW with weight decay on the matrices only (not on norms and biases)."""
    import torch

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=preset.learning_rate, betas=(0.9, 0.98))


def _batch_tensors(batch: list[tuple[list[int], int]]):
    """Right-padded ``input_ids``, ``labels`` (the loss on the solution tokens only) and
    ``attention_mask`` of a batch of :func:`encode_example` results."""
    import torch

    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), PAD_ID, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, prompt_len) in enumerate(batch):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        labels[row, prompt_len:len(ids)] = torch.tensor(ids[prompt_len:])
        mask[row, :len(ids)] = 1
    return input_ids, labels, mask


def _write_record(out: Path, preset: Preset, summary: TrainSummary) -> None:
    """``out/train.json``: the preset and what training produced (read by :func:`_finished`
    so a finished training is not repeated)."""
    (out / "train.json").write_text(json.dumps(
        {"preset": preset.to_dict(), "checkpoints": {str(k): v for k, v in summary.checkpoints.items()},
         "losses": summary.losses, "seconds": summary.seconds,
         "n_parameters": summary.n_parameters, "tokens": summary.tokens}, indent=1) + "\n")


def train(preset: Preset, out: str | Path, threads: int | None = None,
          log=None) -> TrainSummary:
    """Train ``preset`` and save its checkpoints under ``out/checkpoints/step-NNNNNN``.

    A finished training of the same preset (``out/train.json`` and every checkpoint) is
    not repeated. Checkpoints already saved (a folder with a card) are kept; a rerun
    after a crash retrains from the start (deterministic, so it reproduces them) and
    skips saving those. Returns the summary (also written to ``out/train.json``).
    """
    import torch
    from transformers import Qwen3ForCausalLM

    if threads:
        torch.set_num_threads(threads)
    out = Path(out)
    done = _finished(preset, out)
    if done is not None:
        return done
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tokenizer = build_tokenizer()
    torch.manual_seed(preset.train_seed)
    model = Qwen3ForCausalLM(model_config(preset, len(tokenizer)))
    model.train()
    summary = TrainSummary(n_parameters=sum(p.numel() for p in model.parameters()))
    examples = [encode_example(tokenizer, p) for p in training_problems(preset)]
    optimizer = _optimizer(model, preset)

    def save(step: int, loss: float | None) -> None:
        path = out / "checkpoints" / checkpoint_name(step)
        if not (path / CARD_NAME).is_file():
            card = {"testbed_preset": preset.to_dict(), "step": step, "train_loss": loss,
                    "kind": "checkpoint", "recipe": None}
            model.eval()
            save_checkpoint(model, tokenizer, path, card)
            model.train()
        summary.checkpoints[step] = str(path)

    if 0 in preset.checkpoints:
        save(0, None)
    recent: list[float] = []
    for step in range(1, preset.steps + 1):
        input_ids, labels, mask = _batch_tensors(
            examples[(step - 1) * preset.batch_size: step * preset.batch_size])
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(preset, step - 1)
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        summary.tokens += int(mask.sum())
        value = float(loss.detach())
        summary.losses.append(value)
        recent.append(value)
        if log is not None and (step % 20 == 0 or step == preset.steps):
            log(f"step {step}/{preset.steps} loss {sum(recent) / len(recent):.4f} "
                f"({time.perf_counter() - started:.0f} s)")
            recent = []
        if step in preset.checkpoints:
            save(step, value)
    summary.seconds = time.perf_counter() - started
    _write_record(out, preset, summary)
    return summary
