"""``nex transfer``: copy the MLP parameters of a neuron set from a donor into a recipient.

A neuron is a key ``(layer << 16) | unit`` (METHOD.md section 1): unit ``u`` of layer
``l`` owns row ``u`` of ``mlp.gate_proj.weight`` and of ``mlp.up_proj.weight`` and
column ``u`` of ``mlp.down_proj.weight`` in decoder layer ``l``. A transfer replaces
exactly those rows and columns of the recipient with the donor's, and nothing else.

The causal check (:func:`run_transfer`) compares sets of one size ``k`` chosen from the
donor's ``neurons`` table of ``nex score``: the ``k`` top-weighted Effective neurons
(largest positive weight), the ``k`` most Redundant ones (most negative weight) and
several random sets of ``k`` units drawn uniformly from all MLP units. Each transferred
model answers the held-out problems greedily; accuracy change against the unmodified
recipient is reported with a paired bootstrap interval over prompts.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from nex_transforms.errors import expected
from nex_transforms.params import UNIT_BITS

from ..tables import read_table
from .errors import TestbedError
from .problems import is_correct

UNIT_MASK = (1 << UNIT_BITS) - 1
WEIGHTS_FILE = "model.safetensors"
MLP_ROWS = ("gate_proj", "up_proj")
MLP_COLUMNS = ("down_proj",)


def split_key(key: int) -> tuple[int, int]:
    """``(layer, unit)`` of a neuron key."""
    return int(key) >> UNIT_BITS, int(key) & UNIT_MASK


def _tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        raise TestbedError(expected(f"model folder {folder}", f"a single {WEIGHTS_FILE}",
                                    "no such file"))
    return load_file(str(path))


def mlp_shape(tensors: dict) -> tuple[int, int]:
    """``(n_layers, intermediate_size)`` of a gated-MLP state dict."""
    layers = sorted({int(name.split(".")[2]) for name in tensors
                     if name.startswith("model.layers.") and ".mlp.gate_proj." in name})
    if not layers:
        raise TestbedError(expected("model weights", "gated MLPs (mlp.gate_proj/up_proj/"
                                    "down_proj)", "none"))
    width = tensors[f"model.layers.{layers[0]}.mlp.gate_proj.weight"].shape[0]
    return len(layers), int(width)


def transfer_tensors(donor: dict, recipient: dict, keys) -> dict:
    """A copy of ``recipient`` with the MLP rows/columns of ``keys`` taken from ``donor``."""
    import torch

    n_layers, width = mlp_shape(recipient)
    if mlp_shape(donor) != (n_layers, width):
        raise TestbedError(expected("donor", f"the recipient's MLP shape {n_layers} layers x "
                                    f"{width} units", mlp_shape(donor)))
    for name, tensor in recipient.items():
        if name not in donor or donor[name].shape != tensor.shape:
            raise TestbedError(expected(f"donor tensor {name}", f"shape {tuple(tensor.shape)}",
                                        "missing" if name not in donor else
                                        tuple(donor[name].shape)))
    out = {name: tensor.clone() for name, tensor in recipient.items()}
    by_layer: dict[int, list[int]] = {}
    for key in keys:
        layer, unit = split_key(key)
        if layer >= n_layers or unit >= width:
            raise TestbedError(expected(f"neuron key {int(key)} (layer {layer}, unit {unit})",
                                        f"layer < {n_layers} and unit < {width}", "out of range"))
        by_layer.setdefault(layer, []).append(unit)
    for layer, units in by_layer.items():
        index = torch.tensor(sorted(set(units)), dtype=torch.long)
        prefix = f"model.layers.{layer}.mlp."
        for part in MLP_ROWS:
            name = prefix + part + ".weight"
            out[name][index, :] = donor[name][index, :]
        for part in MLP_COLUMNS:
            name = prefix + part + ".weight"
            out[name][:, index] = donor[name][:, index]
    return out


def transfer_model(donor: str | Path, recipient: str | Path, keys, out: str | Path,
                   note: dict | None = None) -> Path:
    """Write ``out``: the recipient folder with the neurons ``keys`` copied from the donor
    (config, tokenizer and other files from the recipient; a ``testbed.json`` card that
    records donor, recipient and the keys). Built in a staging folder and renamed."""
    from safetensors.torch import save_file

    donor, recipient, out = Path(donor), Path(recipient), Path(out)
    tensors = transfer_tensors(_tensors(donor), _tensors(recipient), keys)
    staging = out.with_name(f".{out.name}.staging")
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(recipient, staging)
    save_file(tensors, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
    card = {"kind": "transfer", "donor": str(donor), "recipient": str(recipient),
            "keys": sorted(int(k) for k in keys), "step": None, "recipe": note or {}}
    (staging / "testbed.json").write_text(json.dumps(card, indent=1, sort_keys=True) + "\n")
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return out


def choose_sets(neurons, model_id: str, k: int, n_layers: int, width: int,
                draws: int, seed: int) -> tuple[dict[str, np.ndarray], int]:
    """The neuron sets of the causal check, all of one size.

    Args:
        neurons: the ``neurons`` table (a ``pyarrow.Table`` or a dict of columns).
        model_id: the calibration key of the donor (its model id).
        k: requested size; reduced to the number of positive and of negative weights
            when either is smaller.
        n_layers, width: the MLP shape (random sets draw from all ``n_layers * width``).
        draws: number of random sets; ``seed`` seeds them.

    Returns:
        ``({"effective": keys, "redundant": keys, "random-0": keys, ...}, k)``.
    """
    columns = neurons.to_pydict() if hasattr(neurons, "to_pydict") else dict(neurons)
    mine = np.array([m == model_id for m in columns["model_id"]], dtype=bool)
    if not mine.any():
        raise TestbedError(expected(f"neurons table, model {model_id!r}", "credited neurons",
                                    "none (is it the donor's model id?)"))
    keys = np.asarray(columns["key"], dtype=np.int64)[mine]
    weight = np.asarray(columns["weight"], dtype=np.float64)[mine]
    eff = np.asarray(columns["eff"], dtype=np.float64)[mine]
    red = np.asarray(columns["red"], dtype=np.float64)[mine]
    positive, negative = weight > 0, weight < 0
    size = min(k, int(positive.sum()), int(negative.sum()))
    if size < 1:
        raise TestbedError(expected(f"neurons of {model_id!r}", "at least one positive and one "
                                    "negative weight", f"{int(positive.sum())} positive, "
                                    f"{int(negative.sum())} negative"))
    # Ties in weight (tanh saturates) are broken by the credit itself, then by key.
    order_eff = np.lexsort((keys, -eff, -weight))
    order_red = np.lexsort((keys, -red, weight))
    sets = {"effective": keys[order_eff][:size], "redundant": keys[order_red][:size]}
    rng = np.random.default_rng(seed)
    for draw in range(draws):
        flat = rng.choice(n_layers * width, size=size, replace=False)
        sets[f"random-{draw}"] = (flat // width << UNIT_BITS) | (flat % width)
    return {name: np.sort(v.astype(np.int64)) for name, v in sets.items()}, size


def greedy_answers(model_dir: str | Path, questions: list[str], max_new_tokens: int,
                   batch_size: int = 32) -> list[str]:
    """Greedy responses of a testbed model folder to ``questions`` (chat template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..capture.engine import left_pad

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    pad = tokenizer.pad_token_id
    texts = []
    for start in range(0, len(questions), batch_size):
        chunk = questions[start:start + batch_size]
        prompts = [tokenizer(tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False),
            add_special_tokens=False)["input_ids"] for q in chunk]
        ids, mask = left_pad(prompts, pad, model.device)
        width = ids.shape[1]
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                 max_new_tokens=max_new_tokens, pad_token_id=pad,
                                 eos_token_id=tokenizer.eos_token_id)
        texts += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    return texts


def paired_bootstrap(base: np.ndarray, other: np.ndarray, n_boot: int = 2000, seed: int = 0,
                     level: float = 0.95) -> dict:
    """Accuracy change ``mean(other) - mean(base)`` over prompts, with a percentile
    bootstrap interval resampling prompts (the same resample for both)."""
    base = np.asarray(base, dtype=np.float64)
    other = np.asarray(other, dtype=np.float64)
    diff = other - base
    rng = np.random.default_rng(seed)
    index = rng.integers(0, diff.size, size=(n_boot, diff.size))
    boots = diff[index].mean(axis=1)
    tail = (1 - level) / 2
    return {"delta": float(diff.mean()), "low": float(np.quantile(boots, tail)),
            "high": float(np.quantile(boots, 1 - tail)), "n_prompts": int(diff.size)}


def run_transfer(donor: str | Path, recipient: str | Path, tables: str | Path,
                 questions: list[str], answers: list, out: str | Path, *, donor_model_id: str, k: int, draws: int, seed: int = 0,
                 max_new_tokens: int = 640, n_boot: int = 2000, log=None) -> dict:
    """The causal check: transfer each set, answer ``questions`` greedily, grade against
    ``answers`` (the testbed's ``#### N`` format), compare with the recipient.

    Writes ``out/transfer.json`` (every number, the sets' keys, per-prompt correctness)
    and ``out/transfer.md``; returns the JSON dict. Transferred model folders are kept
    under ``out/models/``.
    """

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n_layers, width = mlp_shape(_tensors(Path(recipient)))
    neurons = read_table(str(tables), "neurons")
    sets, size = choose_sets(neurons, donor_model_id, k, n_layers, width, draws, seed)

    def correctness(folder: Path) -> np.ndarray:
        texts = greedy_answers(folder, questions, max_new_tokens)
        return np.array([is_correct(t, a) for t, a in zip(texts, answers)], dtype=np.float64)

    baseline = correctness(Path(recipient))
    donor_correct = correctness(Path(donor))
    result = {"donor": str(donor), "recipient": str(recipient), "donor_model_id": donor_model_id,
              "k_requested": k, "k": size, "n_layers": n_layers, "width": width,
              "n_prompts": len(questions), "seed": seed, "n_boot": n_boot,
              "recipient_accuracy": float(baseline.mean()),
              "donor_accuracy": float(donor_correct.mean()),
              "recipient_correct": baseline.tolist(), "donor_correct": donor_correct.tolist(),
              "sets": {}}
    for offset, (name, keys) in enumerate(sets.items()):
        folder = transfer_model(donor, recipient, keys, out / "models" / name,
                                note={"set": name, "k": size})
        correct = correctness(folder)
        entry = {"keys": keys.tolist(), "accuracy": float(correct.mean()),
                 "correct": correct.tolist(),
                 **paired_bootstrap(baseline, correct, n_boot, seed + offset)}
        result["sets"][name] = entry
        if log is not None:
            log(f"transfer {name}: accuracy {entry['accuracy']:.3f} "
                f"(delta {entry['delta']:+.3f} [{entry['low']:+.3f}, {entry['high']:+.3f}])")
    random_names = [n for n in result["sets"] if n.startswith("random-")]
    if random_names:
        deltas = np.array([result["sets"][n]["delta"] for n in random_names])
        result["random_summary"] = {"n_draws": len(random_names),
                                    "mean_delta": float(deltas.mean()),
                                    "min_delta": float(deltas.min()),
                                    "max_delta": float(deltas.max())}
    (out / "transfer.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "transfer.md").write_text(transfer_markdown(result))
    return result


def transfer_markdown(result: dict) -> str:
    """A Markdown table of a :func:`run_transfer` result."""
    lines = [f"# Neuron transfer: {result['k']} neurons from the donor into the recipient",
             "", f"* donor: `{Path(result['donor']).name}` (accuracy "
             f"{result['donor_accuracy']:.3f}), recipient: `{Path(result['recipient']).name}` "
             f"(accuracy {result['recipient_accuracy']:.3f}), {result['n_prompts']} held-out "
             "prompts, greedy decoding",
             f"* interval: paired percentile bootstrap over prompts, {result['n_boot']} "
             "resamples, 95 %", "",
             "| set | accuracy | change | 95 % interval |", "| --- | --- | --- | --- |"]
    for name, entry in result["sets"].items():
        lines.append(f"| {name} | {entry['accuracy']:.3f} | {entry['delta']:+.3f} | "
                     f"[{entry['low']:+.3f}, {entry['high']:+.3f}] |")
    if "random_summary" in result:
        s = result["random_summary"]
        lines += ["", f"Random sets ({s['n_draws']} draws): mean change {s['mean_delta']:+.3f} "
                  f"(from {s['min_delta']:+.3f} to {s['max_delta']:+.3f})."]
    return "\n".join(lines) + "\n"
