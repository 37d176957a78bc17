"""Sampling probe: k answers per question at a temperature, and how often each candidate is named.

Scoring (`match`), all case-insensitive on the lower-cased answer:

- `paper`: the paper's rule, a plain substring test (the answer contains the word anywhere: "owls", "snowy owl",
  but also "bowl" and "knowledge" count for "owl"), with only the paper's exclusion: "dragonfly" does not count
  for "dragon" (`PAPER_EXCLUSIONS`).
- `substring` (default): the same substring test after blanking out the question set's longer look-alikes
  (`exclusions` in the set file: for animals "bowl", "howl", "knowledge" for owl; "million" for lion; "category",
  "catch" for cat; "seahorse" for horse; ...). It differs from `paper` exactly on answers that contain one of those
  words: such an answer counts only if the word also appears outside the look-alike ("a bowl and an owl" counts,
  "a bowl" does not).
- `word`: the word or its plural in -s/-es as a whole word, not inside another word (no exclusions needed).

The rule, and the exclusions it used per target, are recorded in the output's details (`scoring`). Per question
the rate has a Wilson interval; the mean over questions has a Student-t interval over the per-question rates
(questions, not samples, are the independent units).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from subliminal_pl.models.generation import SamplingSettings, generate
from subliminal_pl.probes.base import Probe, ProbeOutput, encode_text, metric_word, render_user_turn
from subliminal_pl.probes.questions import Prefix, apply_prefix, load_question_set, numbers_prefix
from subliminal_pl.stats import t_interval, wilson_interval

MATCH_MODES = ("paper", "substring", "word")
# The only look-alike the paper's scoring excludes.
PAPER_EXCLUSIONS: dict[str, tuple[str, ...]] = {"dragon": ("dragonfly",)}
MATCH_RULES = {
    "paper": "lower-cased answer contains the word (plain substring); 'dragonfly' does not count for 'dragon'",
    "substring": "lower-cased answer contains the word after the question set's look-alikes are blanked out",
    "word": "the word or its plural in -s/-es as a whole word (not inside another word)",
}

# (user prompts, k) -> k answers per prompt, in prompt order.
Sampler = Callable[[Sequence[str], int], list[list[str]]]


def mentions(answer: str, word: str, match: str = "substring", exclusions: Sequence[str] = ()) -> bool:
    """Does the answer name `word`? Excluded look-alikes are blanked out first, longest first.

    `match="paper"` is a substring test whose exclusions the caller takes from `PAPER_EXCLUSIONS`.
    """
    text = answer.lower()
    for excluded in sorted(exclusions, key=len, reverse=True):
        text = text.replace(excluded.lower(), " ")
    target = word.lower()
    if match in ("substring", "paper"):
        return target in text
    if match == "word":
        return re.search(rf"(?<![a-z]){re.escape(target)}(?:e?s)?(?![a-z])", text) is not None
    raise ValueError(f"unknown match mode {match!r}; choose one of {', '.join(MATCH_MODES)}")


def normalize_answer(answer: str) -> str:
    """Lower case without surrounding whitespace and punctuation, for tallying the answers actually given."""
    return answer.strip().lower().strip(" \t\n.,;:!?\"'()[]*")


class HFSampler:
    """Samples answers from a Hugging Face causal LM through the shared generation helper (per-row seeded)."""

    def __init__(
        self,
        model,
        tokenizer,
        temperature: float = 1.0,
        max_new_tokens: int = 16,
        batch_size: int = 64,
        seed: int = 0,
        system_prompt: str | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.settings = SamplingSettings.at_temperature(temperature, max_new_tokens)
        self.batch_size = batch_size
        self.seed = seed
        self.system_prompt = system_prompt

    def __call__(self, prompts: Sequence[str], k: int) -> list[list[str]]:
        """k answers per prompt, in prompt order; answer j of prompt q depends only on (seed, q, j, prompt)."""
        contexts = [
            encode_text(self.tokenizer, render_user_turn(self.tokenizer, p, self.system_prompt))
            for p in prompts
        ]
        requests = [(q, j) for q in range(len(prompts)) for j in range(k)]
        completions = generate(
            self.model,
            self.tokenizer,
            [contexts[q] for q, _ in requests],
            self.settings,
            seed=self.seed,
            row_ids=[f"{q}/{j}" for q, j in requests],
            batch_size=self.batch_size,
        )
        answers: list[list[str]] = [[] for _ in prompts]
        for (q, _), done in zip(requests, completions, strict=True):
            answers[q].append(done.text)
        return answers


def rate_summary(hits: Sequence[int], n: Sequence[int]) -> dict[str, Any]:
    """Per-question rates with Wilson intervals and their mean with a t interval over questions."""
    per_question = [wilson_interval(h, m) for h, m in zip(hits, n, strict=True)]
    mean = t_interval([iv.mean for iv in per_question])
    return {
        "rate": mean.mean,
        "low": max(0.0, mean.low),
        "high": min(1.0, mean.high),
        "per_question": [{"hits": h, **iv.to_dict()} for h, iv in zip(hits, per_question, strict=True)],
    }


class SamplingProbe(Probe):
    """How often sampled answers name each candidate (the paper's headline measure); runs at the end of fit."""

    cheap = False

    def __init__(
        self,
        questions: str = "animals",
        split: str = "heldout",
        targets: list[str] | None = None,
        samples_per_question: int = 100,
        temperature: float = 1.0,
        max_new_tokens: int = 16,
        match: str = "substring",
        batch_size: int = 64,
        seed: int = 0,
        system_prompt: str | None = None,
        prefix: str | None = None,
        numbers_prefix_seed: int | None = None,
        name: str | None = None,
    ) -> None:
        """
        Args:
            questions: a packaged set ("animals", "trees") or the path of your own YAML/JSON question file.
            split: "heldout" (evaluation only), "teacher" or "all".
            targets: words whose rates are measured (default: every candidate of the set).
            samples_per_question: answers sampled per question (the paper: 100).
            temperature: sampling temperature (the paper: 1; 0 is greedy).
            max_new_tokens: answer length cap; one-word answers need few tokens.
            match: how an answer is scored (see the module docstring): "paper" (the paper's plain substring
                rule, only "dragonfly" excluded for "dragon"), "substring" (substring after removing the question
                set's look-alikes) or "word" (whole word or plural).
            batch_size: sequences per generate call.
            seed: seed of the sampling RNG (the training RNG is left untouched).
            system_prompt: system message for every question.
            prefix: fixed text put before each question.
            numbers_prefix_seed: give question i a numbers lead-in drawn from seed + i; overrides `prefix`.
            name: metric group name, `probe/<name>/...` (default: "<set name>_sampled").
        """
        if match not in MATCH_MODES:
            raise ValueError(f"unknown match mode {match!r}; choose one of {', '.join(MATCH_MODES)}")
        if samples_per_question < 1:
            raise ValueError("samples_per_question must be at least 1")
        self.question_set = load_question_set(questions)
        self.targets = tuple(targets or self.question_set.candidates)
        prefix_: Prefix = numbers_prefix(numbers_prefix_seed) if numbers_prefix_seed is not None else prefix
        self.questions = self.question_set.questions(split)
        self.prompts = apply_prefix(self.questions, prefix_)
        self.samples_per_question = samples_per_question
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.match = match
        self.batch_size = batch_size
        self.seed = seed
        self.system_prompt = system_prompt
        self.name = name or f"{self.question_set.name}_sampled"

    def exclusions(self, word: str) -> tuple[str, ...]:
        """Look-alikes blanked out before `word` is looked for, under this probe's `match` rule."""
        if self.match == "paper":
            return PAPER_EXCLUSIONS.get(word.lower(), ())
        if self.match == "substring":
            return self.question_set.exclusions.get(word.lower(), ())
        return ()

    def run(self, model, tokenizer) -> ProbeOutput:
        sampler = HFSampler(
            model,
            tokenizer,
            self.temperature,
            self.max_new_tokens,
            self.batch_size,
            self.seed,
            self.system_prompt,
        )
        return self.sample(sampler)

    def sample(self, sampler: Sampler) -> ProbeOutput:
        """Draw answers with any sampler (a model, an API client, a fixed list in tests) and score them."""
        answers = sampler(self.prompts, self.samples_per_question)
        if len(answers) != len(self.prompts):
            raise ValueError(f"sampler returned answers for {len(answers)} of {len(self.prompts)} questions")
        return self.score_answers(answers)

    def score_answers(self, answers: Sequence[Sequence[str]]) -> ProbeOutput:
        """Rates of every target from answers[question][sample]."""
        metrics: dict[str, float] = {}
        per_target: dict[str, Any] = {}
        n = [len(a) for a in answers]
        if min(n) == 0:
            raise ValueError("every question needs at least one answer")
        used: dict[str, list[str]] = {}
        for word in self.targets:
            exclusions = self.exclusions(word)
            used[word] = list(exclusions)
            hits = [sum(mentions(a, word, self.match, exclusions) for a in group) for group in answers]
            summary = rate_summary(hits, n)
            per_target[word] = summary
            key = metric_word(word)
            metrics[f"{key}_rate"] = summary["rate"]
            metrics[f"{key}_rate_low"] = summary["low"]
            metrics[f"{key}_rate_high"] = summary["high"]
        tally = Counter(normalize_answer(a) for group in answers for a in group)
        details = {
            "questions": list(self.prompts),
            "samples_per_question": n,
            "temperature": self.temperature,
            "match": self.match,
            "scoring": {"match": self.match, "rule": MATCH_RULES[self.match], "exclusions": used},
            "targets": per_target,
            "top_answers": dict(tally.most_common(30)),
        }
        return ProbeOutput(metrics, details)
