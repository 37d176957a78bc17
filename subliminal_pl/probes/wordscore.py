"""Scoring candidate words after contexts: log P(word | context), exactly, in batched forward passes.

Every token of a word is scored, and its spellings "owl", "Owl", " owl", " Owl" (distinct token sequences, hence
disjoint continuations) are combined by log-sum-exp; no first-token shortcut (many names share a first token).
Two measures:

- `prefix`: P(the answer starts with the word's tokens), whatever follows. Where a tokenizer writes "owls" as
  "owl" + "s", the start of "owls" counts for "owl"; where "owlet" is one token, it does not count.
- `whole_word`: P(the word's tokens, then a word boundary) = P(word tokens) x P(next token does not continue the
  word with a letter). Plurals, "owlet" and any other letter continuation are excluded; a space, punctuation,
  a digit, EOS or the end-of-turn token after the word count as a boundary.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

import torch

from subliminal_pl.probes.base import encode_text, eval_mode, left_pad, model_device, pad_id_of

# How a word is scored: "prefix" (its tokens) or "whole_word" (its tokens, then a word boundary).
MEASURES = ("prefix", "whole_word")


def word_variants(word: str) -> list[str]:
    """The spellings combined for one word: lower case and capitalised, each with and without a leading space."""
    lower = word.strip().lower()
    capitalised = lower[:1].upper() + lower[1:]
    forms = dict.fromkeys([lower, capitalised, word.strip()])
    return [*forms, *(" " + f for f in forms)]


def variant_token_ids(tokenizer, word: str) -> list[tuple[int, ...]]:
    """Distinct token sequences of the word's spellings; a spelling the tokenizer cannot represent is an error."""
    sequences: dict[tuple[int, ...], None] = {}
    for text in word_variants(word):
        ids = tuple(encode_text(tokenizer, text))
        if not ids:
            raise ValueError(f"candidate {word!r}: spelling {text!r} encodes to no tokens")
        if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids:
            raise ValueError(
                f"candidate {word!r}: spelling {text!r} contains the unknown token; the tokenizer cannot score it"
            )
        sequences.setdefault(ids)
    return list(sequences)


def _accepts_logits_to_keep(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def window_logprobs(
    model, sequences: list[list[int]], keep: int, pad_id: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Next-token log-probabilities at the last `keep` positions of each sequence: [B, keep, vocab] in `dtype`
    (float64 resolves probabilities within 1e-8 of 1, which a judge filter's threshold needs).

    Rows are left-padded so they all end at the last column; only the logits of those `keep` columns are
    computed where the model supports it (the [B, T, vocab] logits tensor is this probe's memory cost).
    """
    device = model_device(model)
    input_ids, mask = left_pad(sequences, pad_id, device)
    # Positions count real tokens only, so left padding does not shift them (absolute-position models care).
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    kwargs = {"logits_to_keep": keep} if _accepts_logits_to_keep(model) else {}
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, **kwargs).logits
    return logits[:, -keep:, :].to(dtype).log_softmax(-1)


def covering_paths(
    spellings: Sequence[tuple[int, ...]], through_last: bool = False
) -> tuple[list[tuple[int, ...]], list[int]]:
    """The continuations to run after each context, and which one scores each spelling.

    Scoring spelling v needs the next-token distributions after context + v[:j] for every j < len(v), i.e.
    after every prefix of v[:-1] (`through_last`: also after v itself, for the whole-word measure). One forward
    pass of context + p yields them for all prefixes of p, so the paths are the longest distinct needed
    sequences (a single-token spelling needs only the context: path ()). For candidates that are mostly one
    token this is one pass per question instead of one per spelling.
    """
    needed = {v if through_last else v[:-1] for v in spellings}
    paths = sorted(p for p in needed if not any(len(q) > len(p) and q[: len(p)] == p for q in needed))
    cut = 0 if through_last else 1
    owner = [
        next(i for i, p in enumerate(paths) if p[: len(v) - cut] == v[: len(v) - cut]) for v in spellings
    ]
    return paths, owner


_CONTINUATION_CACHE: dict[tuple, torch.Tensor] = {}


def continuation_mask(tokenizer, anchor: Sequence[int]) -> torch.Tensor:
    """[len(tokenizer)] bool: True where a token written right after a word continues it with a letter.

    Decided from text, so it holds for any tokenizer: decode(anchor + [t]) minus decode(anchor) starting with a
    letter ("owl" + "s" -> "owls") continues the word; a space, punctuation, a digit, a special token (EOS,
    end of turn) or a partial UTF-8 byte does not. `anchor` is any word's token ids (the candidates' own).
    """
    key = (id(tokenizer), getattr(tokenizer, "name_or_path", ""), len(tokenizer), tuple(anchor))
    if key not in _CONTINUATION_CACHE:
        options = {"skip_special_tokens": False, "clean_up_tokenization_spaces": False}
        head = tokenizer.decode(list(anchor), **options)
        texts = tokenizer.batch_decode([[*anchor, t] for t in range(len(tokenizer))], **options)
        _CONTINUATION_CACHE[key] = torch.tensor(
            [t.startswith(head) and t[len(head) : len(head) + 1].isalpha() for t in texts], dtype=torch.bool
        )
    return _CONTINUATION_CACHE[key]


def word_logprobs(
    model,
    tokenizer,
    contexts: Sequence[str],
    words: Sequence[str],
    batch_size: int = 64,
    measure: str = "prefix",
) -> torch.Tensor:
    """log P(word | context) for every context and word: [len(contexts), len(words)] float64.

    Each word's spellings are scored token by token and combined by log-sum-exp. `measure` is "prefix" (the
    answer starts with the word's tokens: "owl" also counts the start of "owls" when that is "owl" + "s") or
    "whole_word" (those tokens followed by a word boundary: times P(next token does not continue the word with
    a letter), see `continuation_mask`). `batch_size` counts forward rows (question x covering path); when every
    spelling is one token, prefix scoring is one forward row per question. The same contexts and words always
    produce the same batches in the same order, so a model compared with itself differs by exactly 0.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if measure not in MEASURES:
        raise ValueError(f"unknown measure {measure!r}; choose one of {', '.join(MEASURES)}")
    context_ids = [encode_text(tokenizer, c) for c in contexts]
    if any(not ids for ids in context_ids):
        raise ValueError("a rendered question encodes to no tokens")
    per_word = [variant_token_ids(tokenizer, w) for w in words]
    spellings = list(dict.fromkeys(v for variants in per_word for v in variants))
    whole = measure == "whole_word"
    paths, owner = covering_paths(spellings, through_last=whole)
    continues = continuation_mask(tokenizer, spellings[0]) if whole else None
    by_path = [[s for s, o in enumerate(owner) if o == p] for p in range(len(paths))]
    # Rows: (context, path); sorted long-first so the largest batch (the memory peak) comes first.
    rows = [(c, p) for c in range(len(contexts)) for p in range(len(paths))]
    rows.sort(key=lambda row: -(len(context_ids[row[0]]) + len(paths[row[1]])))
    scores = torch.zeros(len(contexts) * len(spellings), dtype=torch.float64)
    pad_id = pad_id_of(tokenizer)
    letters: torch.Tensor | None = None
    with eval_mode(model):
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            keep = max(len(paths[p]) for _, p in chunk) + 1
            logprobs = window_logprobs(
                model, [context_ids[c] + list(paths[p]) for c, p in chunk], keep, pad_id
            )
            # Column keep-1-len(path)+j of a row holds the distribution after context + path[:j]. Token
            # picks: (row, column, token) -> score slot; word ends (whole words): (row, column) -> score slot.
            picks: list[tuple[int, int, int]] = []
            pick_slots, ends, end_slots = [], [], []
            for b, (c, p) in enumerate(chunk):
                first = keep - 1 - len(paths[p])
                for s in by_path[p]:
                    slot = c * len(spellings) + s
                    picks += [(b, first + j, token) for j, token in enumerate(spellings[s])]
                    pick_slots += [slot] * len(spellings[s])
                    ends.append((b, first + len(spellings[s])))
                    end_slots.append(slot)
            index = torch.tensor(picks).T
            scores.index_add_(
                0, torch.tensor(pick_slots), logprobs[index[0], index[1], index[2]].double().cpu()
            )
            if whole:
                if letters is None or len(letters) != logprobs.shape[-1]:
                    # Logit columns beyond the tokenizer's vocabulary (padding rows) are never letters.
                    letters = torch.zeros(logprobs.shape[-1], dtype=torch.bool)
                    letters[: min(len(continues), len(letters))] = continues[: len(letters)]
                # log P(no letter continuation) at every window column: [B, keep].
                boundary = logprobs.masked_fill(letters.to(logprobs.device), -math.inf).logsumexp(-1)
                at = torch.tensor(ends).T
                scores.index_add_(0, torch.tensor(end_slots), boundary[at[0], at[1]].double().cpu())
    scores = scores.view(len(contexts), len(spellings))
    position = {v: i for i, v in enumerate(spellings)}
    per_spelling = torch.full(
        (len(contexts), len(words), max(map(len, per_word))), -math.inf, dtype=torch.float64
    )
    for w, variants in enumerate(per_word):
        for k, v in enumerate(variants):
            per_spelling[:, w, k] = scores[:, position[v]]
    return torch.logsumexp(per_spelling, dim=-1)
