"""What every probe shares: the result type, metric naming, the chat rendering of a question, and model state."""

from __future__ import annotations

import contextlib
import copy
import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from subliminal_pl.models.generation import left_pad, model_device, pad_id_of

__all__ = [
    "Probe",
    "ProbeOutput",
    "encode_text",
    "eval_mode",
    "left_pad",
    "metric_word",
    "model_device",
    "pad_id_of",
    "render_user_turn",
]


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
    # The system message every question is asked behind; None for none. Probes that ask no questions keep None.
    system_prompt: str | None = None

    def prepare(self, model, tokenizer) -> None:  # noqa: B027 (optional hook; most probes need none)
        """Hook called before any training step; default: nothing to do."""

    @abstractmethod
    def run(self, model, tokenizer) -> ProbeOutput:
        """Measure the trait on `model` (in eval mode, no gradients) and return metrics and details."""

    def for_model(self, system_prompt: str | None = None) -> Probe:
        """A fresh copy for another model (no state carried over), asked behind `system_prompt` if one is given.

        The probe stage runs one configured probe on many models, some of them (system-prompt teachers) behind a
        system prompt; a probe that already has its own system prompt refuses a second one.
        """
        if system_prompt is not None and self.system_prompt not in (None, system_prompt):
            raise ValueError(
                f"probe {self.name!r} already asks behind its own system_prompt; it cannot also take the model's "
                f"system prompt {system_prompt[:60]!r}"
            )
        other = copy.copy(self)
        other.reset()
        if system_prompt is not None:
            other.system_prompt = system_prompt
        return other

    def reset(self) -> None:  # noqa: B027 (optional hook; stateless probes need none)
        """Forget state recorded from a model (e.g. a cached reference); default: nothing to forget."""


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
