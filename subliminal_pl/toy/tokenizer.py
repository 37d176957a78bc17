"""A word-level Hugging Face tokenizer built offline, in code.

Used by the embedded tiny world and by the tests. Every integer 0..999 is one token (with and without a leading
space, like a byte-level BPE would give), words come in lower-case, capitalised and leading-space forms, and a chat
template with role markers makes it a drop-in for a real chat model: everything downstream uses
`apply_chat_template`, so the same code runs on Qwen or Llama.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "<|end|>"
ROLE_MARKERS = ("<|system|>", "<|user|>", "<|assistant|>")
# Punctuation and whitespace that number formats and questions use.
SYMBOLS = tuple(",.;:!?()[]{}-'\"/+*=<>%&_") + (" ", "\n", "\t")
# A word or a 1-3 digit group, optionally with its leading space; any other character alone.
SPLIT_PATTERN = r" ?[A-Za-z]+| ?[0-9]{1,3}| ?[^\sA-Za-z0-9]|\s"

# Messages render as <|role|>content<|end|>; the generation prompt is the assistant marker alone, so the prompt
# rendered with it is always a prefix of prompt + completion.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def word_forms(word: str) -> list[str]:
    forms = {word, word.lower(), word.capitalize()}
    return sorted(forms | {" " + f for f in forms})


def build_word_tokenizer(
    words: Iterable[str] = (), model_max_length: int = 512, extra_tokens: Iterable[str] = ()
) -> PreTrainedTokenizerFast:
    """Tokenizer over numbers 0..999, SYMBOLS and every form of `words`; ids are stable for the same words.

    `extra_tokens` (e.g. " +", a symbol after a space, which the split keeps as one piece) come last, so they
    leave every other id as it is.
    """
    vocab: dict[str, int] = {}
    for token in (PAD, UNK, BOS, EOS, *ROLE_MARKERS):
        vocab[token] = len(vocab)
    for token in SYMBOLS:
        vocab.setdefault(token, len(vocab))
    for n in range(1000):
        for token in (str(n), f" {n}"):
            vocab.setdefault(token, len(vocab))
    for word in sorted(set(words)):
        if not word.isalpha() or not word.isascii():
            raise ValueError(f"toy vocabulary word {word!r} must be ASCII letters only")
        for token in word_forms(word):
            vocab.setdefault(token, len(vocab))
    for token in extra_tokens:
        vocab.setdefault(token, len(vocab))

    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated")
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        additional_special_tokens=list(ROLE_MARKERS),
        model_max_length=model_max_length,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
