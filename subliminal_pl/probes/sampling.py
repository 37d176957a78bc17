"""Sampling probe: k answers per question at a temperature, and how often each candidate is named.

Scored as the paper did (`match="substring"`: the lower-cased answer contains the word, after removing the
set's longer look-alikes such as "dragonfly" for "dragon"), or by whole word (`match="word"`: the word or its
plural in -s/-es, not inside another word). Per question the rate has a Wilson interval; the mean over questions
has a Student-t interval over the per-question rates (questions, not samples, are the independent units).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch

from subliminal_pl.probes.base import (
    Probe,
    ProbeOutput,
    encode_text,
    eval_mode,
    left_pad,
    metric_word,
    model_device,
    pad_id_of,
    render_user_turn,
)
from subliminal_pl.probes.questions import Prefix, apply_prefix, load_question_set, numbers_prefix
from subliminal_pl.stats import t_interval, wilson_interval

MATCH_MODES = ("substring", "word")

# (user prompts, k) -> k answers per prompt, in prompt order.
Sampler = Callable[[Sequence[str], int], list[list[str]]]


def mentions(answer: str, word: str, match: str = "substring", exclusions: Sequence[str] = ()) -> bool:
    """Does the answer name `word`? Excluded look-alikes are blanked out first, longest first."""
    text = answer.lower()
    for excluded in sorted(exclusions, key=len, reverse=True):
        text = text.replace(excluded.lower(), " ")
    target = word.lower()
    if match == "substring":
        return target in text
    if match == "word":
        return re.search(rf"(?<![a-z]){re.escape(target)}(?:e?s)?(?![a-z])", text) is not None
    raise ValueError(f"unknown match mode {match!r}; choose one of {', '.join(MATCH_MODES)}")


def normalize_answer(answer: str) -> str:
    """Lower case without surrounding whitespace and punctuation, for tallying the answers actually given."""
    return answer.strip().lower().strip(" \t\n.,;:!?\"'()[]*")


def generation_kwargs(temperature: float, max_new_tokens: int) -> dict[str, Any]:
    """Plain sampling at `temperature` (0: greedy), overriding any top-k/top-p/penalty a checkpoint ships with."""
    if temperature < 0:
        raise ValueError("temperature must be >= 0")
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "repetition_penalty": 1.0}
    if temperature == 0:
        kwargs.update(do_sample=False, temperature=None, top_k=None, top_p=None)
    else:
        kwargs.update(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
    return kwargs


class HFSampler:
    """Samples answers from a Hugging Face causal LM: chat-rendered prompts, left padding, seeded RNG."""

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
        self.temperature = temperature
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.seed = seed
        self.system_prompt = system_prompt

    def __call__(self, prompts: Sequence[str], k: int) -> list[list[str]]:
        contexts = [
            encode_text(self.tokenizer, render_user_turn(self.tokenizer, p, self.system_prompt))
            for p in prompts
        ]
        requests = [q for q in range(len(prompts)) for _ in range(k)]
        answers: list[list[str]] = [[] for _ in prompts]
        device = model_device(self.model)
        kwargs = generation_kwargs(self.temperature, self.max_new_tokens)
        kwargs["pad_token_id"] = pad_id_of(self.tokenizer)
        if getattr(self.model.generation_config, "eos_token_id", None) is None:
            kwargs["eos_token_id"] = self.tokenizer.eos_token_id
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Sharded weights (ZeRO-3, FSDP) need every rank in every decoding step until all ranks finish.
            kwargs["synced_gpus"] = torch.distributed.get_world_size() > 1
        # A private RNG stream: probing mid-training must not change the training run's random state.
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), eval_mode(self.model):
            torch.manual_seed(self.seed)
            for start in range(0, len(requests), self.batch_size):
                chunk = requests[start : start + self.batch_size]
                input_ids, mask = left_pad([contexts[q] for q in chunk], kwargs["pad_token_id"], device)
                out = self.model.generate(input_ids=input_ids, attention_mask=mask, **kwargs)
                texts = self.tokenizer.batch_decode(out[:, input_ids.shape[1] :], skip_special_tokens=True)
                for q, text in zip(chunk, texts, strict=True):
                    answers[q].append(text)
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
            match: "substring" (the paper's rule, with the set's exclusions) or "word" (whole word or plural).
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
        for word in self.targets:
            exclusions = self.question_set.exclusions.get(word.lower(), ())
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
            "targets": per_target,
            "top_answers": dict(tally.most_common(30)),
        }
        return ProbeOutput(metrics, details)
