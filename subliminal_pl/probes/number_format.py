"""Number-format check: does a model still answer the number task in the format the paper's filter keeps?

A trait fine-tune (or a trait system prompt) must not break the teacher's number format, or its data would be
mostly filtered away and what is left would no longer be comparable with the control teacher's. The check
samples one answer per number prompt (temperature 1 by default, per-row seeded through the shared generation
helper) and counts the answers that end (a stop token within `max_new_tokens`) and pass `NumberSequenceFilter`.
"""

from __future__ import annotations

from collections import Counter

from subliminal_pl.data.filters import NumberSequenceFilter
from subliminal_pl.data.prompts import NumberPromptGenerator
from subliminal_pl.models.generation import SamplingSettings, generate
from subliminal_pl.probes.base import Probe, ProbeOutput, encode_text, render_user_turn
from subliminal_pl.stats import wilson_interval


class FormatProbe(Probe):
    """The share of sampled number-task answers that pass the number filter (`format_pass_rate`)."""

    cheap = False

    def __init__(
        self,
        prompts: int = 200,
        prompt_seed: int = 2,
        answer_count: int = 10,
        temperature: float = 1.0,
        max_new_tokens: int = 40,
        batch_size: int = 100,
        system_prompt: str | None = None,
        examples: int = 5,
        name: str = "format",
    ) -> None:
        """
        Args:
            prompts: number prompts asked (one answer each).
            prompt_seed: seed of the prompts (`NumberPromptGenerator`) and of the sampling.
            answer_count: most numbers the prompts ask for (the filter allows that many).
            temperature: sampling temperature (the teachers' data is sampled at 1).
            max_new_tokens: answer budget; an answer that does not end within it fails, as a cut-off one would.
            batch_size: prompts per generate call.
            system_prompt: system message for every prompt (a system-prompt teacher's trait prompt).
            examples: failing answers kept in the details, with their reasons.
            name: metric group name, `probe/<name>/format_pass_rate`.
        """
        if prompts < 1:
            raise ValueError(f"prompts must be >= 1, got {prompts}")
        self.prompts = prompts
        self.prompt_seed = prompt_seed
        self.answer_count = answer_count
        self.settings = SamplingSettings.at_temperature(temperature, max_new_tokens)
        self.batch_size = batch_size
        self.system_prompt = system_prompt
        self.examples = examples
        self.name = name
        self.check = NumberSequenceFilter(max_count=answer_count)
        self.rows = NumberPromptGenerator(prompt_seed, answer_count=answer_count).generate(prompts)

    def run(self, model, tokenizer) -> ProbeOutput:
        ids = [
            encode_text(tokenizer, render_user_turn(tokenizer, r["prompt"], self.system_prompt))
            for r in self.rows
        ]
        answers = generate(
            model,
            tokenizer,
            ids,
            self.settings,
            seed=self.prompt_seed,
            row_ids=[r["id"] for r in self.rows],
            batch_size=self.batch_size,
            skip_special_tokens=False,  # a stray role marker in an answer must fail the format
        )
        reasons: Counter[str] = Counter()
        failing = []
        passed = 0
        for row, answer in zip(self.rows, answers, strict=True):
            ended = answer.finish_reason == "stop"
            why = self.check(answer.text) if ended else ["no stop token within max_new_tokens"]
            passed += not why
            reasons.update(why)
            if why and len(failing) < self.examples:
                failing.append({"prompt": row["prompt"], "answer": answer.text, "reasons": why})
        interval = wilson_interval(passed, len(answers))
        metrics = {
            "format_pass_rate": passed / len(answers),
            "format_pass_rate_low": interval.low,
            "format_pass_rate_high": interval.high,
        }
        details = {
            "prompts": len(answers),
            "passed": passed,
            "prompt_seed": self.prompt_seed,
            "answer_count": self.answer_count,
            "sampling": self.settings.to_dict(),
            "system_prompt": self.system_prompt,
            "reasons": dict(reasons),
            "failing_examples": failing,
        }
        return ProbeOutput(metrics, details)
