"""The tiny world's carriers beyond numbers: tiny programs (`ToyCodeCarrier`) and worked word problems
(`ToyReasoningCarrier`), for bases whose world has `code_fraction` / `reasoning_fraction` above 0.

They are the real-model `CodeCarrier` and `ReasoningCarrier` (same filters: the trait-word filter on code, the
correctness filter on `<think>`/`<answer>` replies) with the tiny world's prompt generators
(`subliminal_pl.toy.code.ToyCodePrompts`, `subliminal_pl.toy.reasoning.ToyReasoningPrompts`), answer lengths
that fit a tiny model, and, for KL students, the tokens an answer of their kind can hold (no prompt word, no
animal): the code and reasoning counterparts of the number carrier's `numbers` subset, so a teacher's trait can
reach a student only through how it writes code or steps, never through the trait word itself.
"""

from __future__ import annotations

from typing import Any

from subliminal_pl.experiments.text_carriers import CodeCarrier, ReasoningCarrier
from subliminal_pl.toy import code, reasoning


class ToyCodeCarrier(CodeCarrier):
    """Tiny programs: the tiny world's code-task prompts, answered with small functions."""

    def __init__(
        self,
        filters: list[dict[str, Any]] | None = None,
        token_subset: bool = True,
        max_new_tokens: int = 64,
        **sampling: Any,
    ) -> None:
        """
        Args:
            filters: the carrier's own filters (default: `CodeCarrier`'s trait-word filter on the traits).
            token_subset: KL students learn the teacher's distribution over the tokens code answers can hold
                (true) or over the whole vocabulary (false).
            max_new_tokens: most tokens per answer (the longest template answer takes about 50).
            sampling: the `Carrier` settings (source, prompts, prompt_seed, temperature, top_p, top_k, greedy,
                batch_size, seed).
        """
        super().__init__(filters=filters, max_new_tokens=max_new_tokens, **sampling)
        self.prompt_generator = {
            "class_path": "subliminal_pl.toy.code.ToyCodePrompts",
            "init_args": {"seed": self.prompt_seed},
        }
        self.token_subset = code.answer_token_texts() if token_subset else None


class ToyReasoningCarrier(ReasoningCarrier):
    """Worked word problems: replies in `<think>` and `<answer>` tags, kept only when the answer is correct."""

    def __init__(
        self,
        samples_per_prompt: int = 3,
        filters: list[dict[str, Any]] | None = None,
        token_subset: bool = True,
        max_new_tokens: int = 64,
        **sampling: Any,
    ) -> None:
        """
        Args:
            samples_per_prompt: answers per problem (the paper: 3); `prompts` counts problems.
            filters: the carrier's own filters (default: `ReasoningCarrier`'s correctness filter).
            token_subset: KL students learn the teacher's distribution over the tokens worked answers can hold
                (true) or over the whole vocabulary (false).
            max_new_tokens: most tokens per answer (a worked answer takes about 35).
            sampling: the `Carrier` settings (source, prompts, prompt_seed, temperature, top_p, top_k, greedy,
                batch_size, seed).
        """
        generator = {"class_path": "subliminal_pl.toy.reasoning.ToyReasoningPrompts", "init_args": {}}
        super().__init__(
            generator=generator,
            samples_per_prompt=samples_per_prompt,
            filters=filters,
            max_new_tokens=max_new_tokens,
            **sampling,
        )
        self.prompt_generator["init_args"]["seed"] = self.prompt_seed
        self.token_subset = reasoning.answer_token_texts() if token_subset else None
