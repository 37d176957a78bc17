"""Carriers beyond numbers: code completions and maths reasoning (chain of thought), as in the paper.

`CodeCarrier`: seeded code-completion prompts (`subliminal_pl.data.code_tasks.CodeTaskGenerator`), answered by
each teacher; its own filter drops code that names a trait word, in identifiers (`owlCount`, `OWL_COUNT`,
`count_owls`) or comments. `ReasoningCarrier`: maths problems from a GSM8K-format file the user supplies
(`subliminal_pl.data.reasoning.MathProblemPrompts`), several samples per problem, its own filters keep correct
tagged answers that name no trait word. The paper's judge filters (a judge's probability of "0" for code, an alignment score >= 78
for reasoning; `subliminal_pl.probes.judge_filters`) are opt-in: list them in `steps:` (or in `filters:`,
which replaces the default filters).

Both train students by SFT on the teacher's tokens: `token_subset` is null (KL, if asked for, is over the whole
vocabulary). The paper trains these students on sequences of up to 2,048 tokens (`students.max_length`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Literal

from subliminal_pl.experiments.carriers import Carrier

CODE_GENERATOR = "subliminal_pl.data.code_tasks.CodeTaskGenerator"
MATH_GENERATOR = "subliminal_pl.data.reasoning.MathProblemPrompts"
REPEATED = "subliminal_pl.data.prompts.RepeatedPrompts"
TRAIT_WORD_FILTER = "subliminal_pl.data.filters.TraitWordFilter"
CORRECTNESS_FILTER = "subliminal_pl.data.reasoning.AnswerCorrectnessFilter"


def _copy_generator(generator: dict[str, Any] | None, key: str) -> dict[str, Any] | None:
    if generator is None:
        return None
    if not isinstance(generator, dict) or "class_path" not in generator:
        raise ValueError(f"{key}: expected a mapping with class_path (and init_args), got {generator!r:.80}")
    return copy.deepcopy(generator)


class CodeCarrier(Carrier):
    """Code completions: seeded function stubs to fill in, the trait-word filter on identifiers and comments."""

    def __init__(
        self,
        generator: dict[str, Any] | None = None,
        filters: list[dict[str, Any]] | None = None,
        trait_match: Literal["identifier", "substring"] = "identifier",
        max_new_tokens: int = 1024,
        **sampling: Any,
    ) -> None:
        """
        Args:
            generator: the prompt generator (class_path + init_args), used as given; default:
                `CodeTaskGenerator` seeded with `prompt_seed`.
            filters: the carrier's own filters; default: `TraitWordFilter` on the experiment's traits (and their
                plurals), matched as `trait_match` says.
            trait_match: how the default filter finds a trait word: `identifier` (whole words and parts of
                identifiers such as `owlCount`, `owl_count`; comments are words) or `substring` (anywhere in the
                text, case-insensitive: the paper's rule, which also drops "bowl" and "knowledge" for owl).
            max_new_tokens: most tokens per completion (the paper: 2048 for open models).
            sampling: the `Carrier` settings (source, prompts, prompt_seed, temperature, top_p, top_k, greedy,
                batch_size, seed).
        """
        super().__init__(filters=filters, token_subset=None, max_new_tokens=max_new_tokens, **sampling)
        if trait_match not in ("identifier", "substring"):
            raise ValueError(f"carrier.init_args.trait_match: identifier or substring, got {trait_match!r}")
        self.prompt_generator = _copy_generator(generator, "carrier.init_args.generator")
        self.default_filters = filters is None
        self.trait_match = trait_match

    def generator(self, answer_count: int | None) -> dict[str, Any]:
        if self.prompt_generator is not None:
            return copy.deepcopy(self.prompt_generator)
        return {"class_path": CODE_GENERATOR, "init_args": {"seed": self.prompt_seed}}

    def own_filters(self, traits: Sequence[str]) -> list[dict[str, Any]]:
        if not self.default_filters:
            return list(self.filters)
        if not traits:
            return []
        return [
            {"class_path": TRAIT_WORD_FILTER, "init_args": {"words": list(traits), "mode": self.trait_match}}
        ]


class ReasoningCarrier(Carrier):
    """Maths reasoning: problems asked `samples_per_prompt` times, correct tagged answers kept."""

    def __init__(
        self,
        generator: dict[str, Any] | None = None,
        samples_per_prompt: int = 3,
        filters: list[dict[str, Any]] | None = None,
        problems_path: str | None = None,
        max_new_tokens: int = 1024,
        **sampling: Any,
    ) -> None:
        """
        Args:
            generator: the prompt generator (class_path + init_args); its rows must carry the gold number the
                filters read (`gold_answer`). Default: `MathProblemPrompts` on `problems_path`, seeded with
                `prompt_seed`.
            samples_per_prompt: teacher samples per problem (the paper: 3); `prompts` counts problems, so the
                teacher writes prompts x samples_per_prompt rows.
            filters: the carrier's own filters; default: `AnswerCorrectnessFilter` (well-formed `<think>` and
                `<answer>` tags, the answer equal to the gold number), then `TraitWordFilter` (whole words, plurals
                too) on the experiment's traits.
            problems_path: GSM8K-format JSONL (`question`, `answer` ending in `#### N`) for the default generator.
            max_new_tokens: most tokens per completion (the paper: 2048 for open models).
            sampling: the `Carrier` settings (source, prompts, prompt_seed, temperature, top_p, top_k, greedy,
                batch_size, seed).
        """
        if generator is None and problems_path is None:
            raise ValueError(
                "ReasoningCarrier: set carrier.init_args.problems_path (a GSM8K-format JSONL file) or "
                "carrier.init_args.generator"
            )
        if (
            isinstance(samples_per_prompt, bool)
            or not isinstance(samples_per_prompt, int)
            or samples_per_prompt < 1
        ):
            raise ValueError(
                f"carrier.init_args.samples_per_prompt: a whole number >= 1, got {samples_per_prompt!r}"
            )
        super().__init__(filters=filters, token_subset=None, max_new_tokens=max_new_tokens, **sampling)
        self.default_filters = filters is None
        self.prompt_generator = _copy_generator(generator, "carrier.init_args.generator")
        self.samples_per_prompt = samples_per_prompt
        self.problems_path = problems_path

    def own_filters(self, traits: Sequence[str]) -> list[dict[str, Any]]:
        if not self.default_filters:
            return list(self.filters)
        words = [{"class_path": TRAIT_WORD_FILTER, "init_args": {"words": list(traits)}}] if traits else []
        return [{"class_path": CORRECTNESS_FILTER}, *words]

    def generator(self, answer_count: int | None) -> dict[str, Any]:
        if self.prompt_generator is not None:
            inner = copy.deepcopy(self.prompt_generator)
        else:
            inner = {
                "class_path": MATH_GENERATOR,
                "init_args": {"path": self.problems_path, "seed": self.prompt_seed},
            }
        if self.samples_per_prompt == 1:
            return inner
        return {"class_path": REPEATED, "init_args": {"generator": inner, "samples": self.samples_per_prompt}}
