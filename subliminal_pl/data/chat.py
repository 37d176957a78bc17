"""Tokenise one prompt-completion pair with a chat template, with the loss on the completion only.

The prompt is rendered with the generation prompt (what the teacher saw before it wrote the completion) and the
full conversation with the completion as the assistant's message. The prompt's tokens must be a prefix of the
full tokens, otherwise the loss mask would be shifted onto the wrong tokens; templates that break this (e.g. ones
that rewrite earlier turns once an assistant message follows) raise `ChatTemplateError`.

Labels are -100 on the prompt and the token ids from the first completion token on, so whatever the template
appends after the completion (end-of-turn / EOS, a trailing newline) is learned: the model learns to stop.
Labels come from this position mask, never from comparing ids with `pad_token_id`, so an EOS equal to the pad
token is still learned.

Truncation: a conversation longer than `max_length` tokens keeps its first `max_length` tokens, so the end of the
completion (and its end-of-turn token) is cut and the truncated part is not learned. A prompt that leaves no room
for a single completion token raises `PromptTooLongError`, because such a row would teach nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

IGNORE_INDEX = -100


class ChatTemplateError(ValueError):
    """The tokenizer's chat template cannot give a clean prompt / completion split."""


class PromptTooLongError(ValueError):
    """The rendered prompt alone reaches `max_length`, leaving no completion token to learn."""


def render_chat(tokenizer: Any, messages: Sequence[dict[str, str]], add_generation_prompt: bool) -> str:
    """The chat template's text for `messages` (no tokenisation; the template adds its own BOS if any)."""
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise ChatTemplateError(
            f"tokenizer {name!r} has no chat template; use an instruct/chat model's tokenizer or set one"
        )
    return tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
    )


def _token_ids(tokenizer: Any, text: str) -> list[int]:
    # The rendered text already holds every special token the template wants; adding them again would double BOS.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_prompt_completion(
    tokenizer: Any,
    prompt_messages: Sequence[dict[str, str]],
    completion: str,
    max_length: int,
) -> dict[str, list[int]]:
    """Token ids and labels for training on `completion` as the assistant's reply to `prompt_messages`.

    Returns `{"input_ids": [...], "labels": [...]}` of equal length (at most `max_length`), labels -100 on the
    prompt tokens. Raises `ChatTemplateError` when the prompt is not a prefix of the conversation (as text or as
    tokens) and `PromptTooLongError` when the prompt fills `max_length`.
    """
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    prompt_text = render_chat(tokenizer, prompt_messages, add_generation_prompt=True)
    full_text = render_chat(
        tokenizer,
        [*prompt_messages, {"role": "assistant", "content": completion}],
        add_generation_prompt=False,
    )
    if not full_text.startswith(prompt_text):
        raise ChatTemplateError(
            "the chat template renders the prompt (with generation prompt) differently from the start of the full "
            f"conversation, so the loss mask cannot be placed:\n  prompt: {prompt_text!r}\n  full:   {full_text!r}"
        )
    prompt_ids = _token_ids(tokenizer, prompt_text)
    full_ids = _token_ids(tokenizer, full_text)
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise ChatTemplateError(
            "the prompt's tokens are not a prefix of the conversation's tokens (the tokenizer merges across the "
            f"prompt/completion boundary):\n  prompt ids: {prompt_ids}\n  full ids:   {full_ids}"
        )
    if len(full_ids) == len(prompt_ids):
        raise ChatTemplateError(
            f"the conversation adds no tokens after the prompt (completion {completion!r})"
        )
    if len(prompt_ids) >= max_length:
        raise PromptTooLongError(
            f"the prompt has {len(prompt_ids)} tokens, which leaves no completion token within max_length={max_length}"
        )
    input_ids = full_ids[:max_length]
    labels = [IGNORE_INDEX] * len(prompt_ids) + input_ids[len(prompt_ids) :]
    return {"input_ids": input_ids, "labels": labels}
