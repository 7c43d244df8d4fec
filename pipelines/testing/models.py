"""Tiny random causal LMs with a word-level tokenizer, for tests, demos and smoke runs.

``build_tiny_model(path, "llama")`` writes a Hugging Face model directory (config,
safetensors weights, tokenizer) that loads with ``AutoModelForCausalLM`` in well under a
second. Architectures: ``llama`` (gated MLP), ``qwen2`` (gated), ``gpt2`` and ``gpt_neox``
(plain MLPs), and ``mixtral`` (mixture of experts: unsupported, for error tests).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..capture.errors import ModelError

WORDS = ("the a an one two three four five six seven eight nine ten plus minus times is "
         "are was were how many much what who when where why answer question so then "
         "apples pears eggs ducks dollars cars trees toys sold bought left gave has have "
         "had total each every day week and or not more less than of to in on at for with "
         "by from it he she they we you I = + - * / . , ? ! 0 1 2 3 4 5 6 7 8 9 10 11 12 "
         "13 14 15 16 17 18 19 20 21 22 23 24 25 30 40 50 60 70 80 90 100").split()
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]
ARCHITECTURES = ("llama", "qwen2", "gpt2", "gpt_neox", "mixtral")


def tiny_tokenizer():
    """A whitespace word-level fast tokenizer over :data:`WORDS` (ids 0-3 are specials)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS + list(dict.fromkeys(WORDS)))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>",
                                   bos_token="<bos>", unk_token="<unk>")


def tiny_config(arch: str, vocab_size: int, n_positions: int = 256):
    """A tiny config of the given architecture."""
    import transformers as tf

    common = dict(vocab_size=vocab_size, pad_token_id=0, eos_token_id=1, bos_token_id=2)
    if arch == "llama":
        return tf.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2,
                              max_position_embeddings=n_positions, **common)
    if arch == "qwen2":
        return tf.Qwen2Config(hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                              num_attention_heads=4, num_key_value_heads=2,
                              max_position_embeddings=n_positions, **common)
    if arch == "gpt2":
        return tf.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=n_positions, **common)
    if arch == "gpt_neox":
        return tf.GPTNeoXConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                num_attention_heads=4, max_position_embeddings=n_positions,
                                **common)
    if arch == "mixtral":
        return tf.MixtralConfig(hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=4, num_key_value_heads=2,
                                num_local_experts=2, max_position_embeddings=n_positions,
                                **common)
    raise ModelError(f"tiny model architecture: expected one of {ARCHITECTURES}, got {arch!r}")


def build_tiny_model(path: str | Path, arch: str = "llama", seed: int = 0,
                     n_positions: int = 256, chat_template: str | None = None) -> Path:
    """Write a tiny random model of ``arch`` with its tokenizer to ``path``; returns it."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    tokenizer = tiny_tokenizer()
    if chat_template:
        tokenizer.chat_template = chat_template
    config = tiny_config(arch, len(tokenizer), n_positions)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # larger weights give peaked, less uniform distributions
        for param in model.parameters():
            if param.dim() > 1:
                param.mul_(4.0)
    model.generation_config.eos_token_id = 1
    model.generation_config.pad_token_id = 0
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
