"""What every probe shares: the result type, metric naming, the chat rendering of a question, and model state."""

from __future__ import annotations

import contextlib
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class ProbeOutput:
    """Flat scalar metrics (logged as `probe/<probe name>/<metric>`) and JSON-ready details for the results file."""

    metrics: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)


class Probe(ABC):
    """A measurement of a trait on a (model, tokenizer) pair.

    `cheap` probes (log-probabilities) may run every few training steps; the others (sampling, judges) run at the
    end of fit or on demand. `prepare` runs once before training, e.g. to record the untrained model as reference.
    """

    name: str
    cheap: bool = False

    def prepare(self, model, tokenizer) -> None:  # noqa: B027 (optional hook; most probes need none)
        """Hook called before any training step; default: nothing to do."""

    @abstractmethod
    def run(self, model, tokenizer) -> ProbeOutput:
        """Measure the trait on `model` (in eval mode, no gradients) and return metrics and details."""


def metric_word(word: str) -> str:
    """A candidate word as part of a metric key: lower case, runs of other characters as one underscore."""
    return re.sub(r"[^a-z0-9]+", "_", word.lower()).strip("_")


def render_user_turn(tokenizer, question: str, system_prompt: str | None = None) -> str:
    """The chat-template text of one user question, ending with the assistant's generation prompt.

    A tokenizer without a chat template (a base model) gets the question followed by a newline.
    """
    if getattr(tokenizer, "chat_template", None) is None:
        return f"{system_prompt}\n\n{question}\n" if system_prompt else f"{question}\n"
    messages = [{"role": "user", "content": question}]
    if system_prompt:
        messages.insert(0, {"role": "system", "content": system_prompt})
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of `text` as written: the chat template already carries any BOS the model wants."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def model_device(model) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def eval_mode(model) -> Iterator[None]:
    """Evaluation mode without gradients for the duration; the previous train/eval mode comes back after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def left_pad(sequences: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids [B, T], attention_mask [B, T]) with each sequence right-aligned so all end at column T-1."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
        mask[row, width - len(seq) :] = 1
    return ids.to(device), mask.to(device)


def pad_id_of(tokenizer) -> int:
    """The pad id, else EOS (padding is masked out, so any id works), else 0."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    return 0
