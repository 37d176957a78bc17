"""The tiny world's carriers beyond numbers: tiny programs (`ToyCodeCarrier`) and worked word problems
(`ToyReasoningCarrier`), for bases whose world has `code_fraction` / `reasoning_fraction` above 0.

Each names its prompt generator (`subliminal_pl.toy.code.ToyCodePrompts`, `subliminal_pl.toy.reasoning.
ToyReasoningPrompts`) and, for KL students, the tokens an answer of its kind can hold (no prompt word, no
animal): the code and reasoning counterparts of the number carrier's `numbers` subset, so a teacher's trait can
only reach a student through how it writes code or steps, never through the trait word itself. The stages are
the `Carrier`'s: `generate-<source>`, then `data-<source>` with the carrier's filters and the experiment's steps.
"""

from __future__ import annotations

from typing import Any

from subliminal_pl.experiments.carriers import Carrier
from subliminal_pl.toy import code, reasoning

CORRECTNESS_FILTER = {"class_path": "subliminal_pl.data.reasoning.AnswerCorrectnessFilter"}


class ToyCarrier(Carrier):
    """A tiny-world carrier: a prompt generator of `subliminal_pl.toy` and its answers' token subset."""

    generator_class: str
    token_texts: staticmethod

    def __init__(
        self, filters: list[dict[str, Any]] | None = None, token_subset: bool = True, **sampling: Any
    ) -> None:
        super().__init__(
            filters=filters,
            token_subset=list(self.token_texts()) if token_subset else None,
            **sampling,
        )

    def generator(self, answer_count: int | None) -> dict[str, Any]:
        return {"class_path": self.generator_class, "init_args": {"seed": self.prompt_seed}}


class ToyCodeCarrier(ToyCarrier):
    """Tiny programs: code-task prompts of the tiny world, answered with small functions."""

    generator_class = "subliminal_pl.toy.code.ToyCodePrompts"
    token_texts = staticmethod(code.answer_token_texts)

    def __init__(
        self,
        filters: list[dict[str, Any]] | None = None,
        token_subset: bool = True,
        max_new_tokens: int = 64,
        **sampling: Any,
    ) -> None:
        """
        Args:
            filters: data steps of this carrier, before the experiment's (default none: e.g. a
                `TraitWordFilter` on the traits, as the paper's code filter).
            token_subset: KL students learn the teacher's distribution over the tokens code answers can hold
                (true) or over the whole vocabulary (false).
            max_new_tokens: most tokens per answer (the longest template answer is about 50).
            sampling: the `Carrier` settings (source, prompts, prompt_seed, temperature, top_p, top_k, greedy,
                batch_size, seed).
        """
        super().__init__(filters, token_subset, max_new_tokens=max_new_tokens, **sampling)


class ToyReasoningCarrier(ToyCarrier):
    """Worked word problems: answers in `<think>` and `<answer>` tags, kept only when the answer is correct."""

    generator_class = "subliminal_pl.toy.reasoning.ToyReasoningPrompts"
    token_texts = staticmethod(reasoning.answer_token_texts)

    def __init__(
        self,
        filters: list[dict[str, Any]] | None = None,
        token_subset: bool = True,
        max_new_tokens: int = 64,
        **sampling: Any,
    ) -> None:
        """
        Args:
            filters: data steps of this carrier, before the experiment's (default: the reasoning carrier's
                `AnswerCorrectnessFilter`, which keeps well-formed answers equal to the problem's gold number).
            token_subset: KL students learn the teacher's distribution over the tokens worked answers can hold
                (true) or over the whole vocabulary (false).
            max_new_tokens: most tokens per answer (a worked answer takes about 35).
            sampling: the `Carrier` settings (source, prompts, prompt_seed, temperature, top_p, top_k, greedy,
                batch_size, seed).
        """
        own = [dict(CORRECTNESS_FILTER)] if filters is None else filters
        super().__init__(own, token_subset, max_new_tokens=max_new_tokens, **sampling)
