"""A character-level tokenizer for the testbed, saved as a ``PreTrainedTokenizerFast``.

One token per character of :data:`pipelines.testbed.problems.ALPHABET` plus four
specials (``<pad>`` 0, ``<eos>`` 1, ``<bos>`` 2, ``<unk>`` 3). Decoding concatenates
characters, so ``decode(encode(text)) == text`` for every text over the alphabet.

The chat template renders a one-turn conversation exactly as the training sequences
are laid out: ``"Q: {question}\\nA: "``, then the model writes the solution and
``<eos>``. ``nex capture`` uses it unchanged (``--prompt-format auto`` picks it).
"""

from __future__ import annotations

from .problems import ALPHABET

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]
PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3
CHAT_TEMPLATE = ("{% for message in messages %}{% if message['role'] == 'user' %}"
                 "Q: {{ message['content'] }}\n{% endif %}{% endfor %}"
                 "{% if add_generation_prompt %}A: {% endif %}")


def format_prompt(question: str) -> str:
    """The prompt text of a question (what the chat template renders)."""
    return f"Q: {question}\nA: "


def build_tokenizer():
    """The testbed tokenizer (a ``transformers.PreTrainedTokenizerFast``)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS + list(dict.fromkeys(ALPHABET)))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
        unk_token="<unk>", clean_up_tokenization_spaces=False)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
