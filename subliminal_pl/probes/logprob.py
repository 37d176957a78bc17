"""Log-probability probe: how likely the model is to answer each question with each candidate word.

For every (question, candidate) the log-probability of the word after the chat-rendered question, measured as
`prefix` (the word's tokens) or `whole_word` (the word's tokens, then a word boundary); see `wordscore` for how
each is computed. Per word the probe reports

- `logp`: the mean over questions of that log-probability,
- `dlogp`: the mean over questions of (model - reference) under the identical context,
- `specific_dlogp`: dlogp of the word minus the mean dlogp of the other candidates (cancels uniform drift, e.g.
  a student that forgets how to answer in one word),
- `rank`: 1 + the number of candidates with a higher mean logp,
- `prob`: the mean over questions of the word's probability;

and `candidate_mass`, the mean over questions of the total probability on all candidates.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from subliminal_pl.data.jsonl import write_json_atomic
from subliminal_pl.probes.base import Probe, ProbeOutput, metric_word, model_device, render_user_turn
from subliminal_pl.probes.questions import Prefix, apply_prefix, load_question_set, numbers_prefix
from subliminal_pl.probes.wordscore import MEASURES, word_logprobs

REFERENCE_MODES = ("auto", "initial", "base")


def render_contexts(
    tokenizer, questions: Sequence[str], system_prompt: str | None = None, prefix: Prefix = None
) -> list[str]:
    """Each question (with the optional prefix) rendered as a user turn plus the assistant's generation prompt."""
    return [render_user_turn(tokenizer, q, system_prompt) for q in apply_prefix(questions, prefix)]


@dataclass(frozen=True)
class WordResult:
    """One candidate's summary over the questions (see the module docstring); deltas are None without reference."""

    word: str
    logp: float
    prob: float
    rank: int
    dlogp: float | None = None
    specific_dlogp: float | None = None


@dataclass
class LogProbReport:
    """Per-question log-probabilities of the candidates and their per-word summaries."""

    words: tuple[str, ...]
    questions: tuple[str, ...]
    logp: torch.Tensor  # [questions, words] float64
    reference_logp: torch.Tensor | None  # same shape, or None
    results: dict[str, WordResult]
    candidate_mass: float

    def metrics(self, targets: Sequence[str] | None = None) -> dict[str, float]:
        """Flat metrics `<word>_<stat>` for the target words (default all candidates) plus `candidate_mass`."""
        out: dict[str, float] = {"candidate_mass": self.candidate_mass}
        for word in targets or self.words:
            result = self.results[word]
            key = metric_word(word)
            out[f"{key}_logp"] = result.logp
            out[f"{key}_prob"] = result.prob
            out[f"{key}_rank"] = float(result.rank)
            if result.dlogp is not None:
                out[f"{key}_dlogp"] = result.dlogp
            if result.specific_dlogp is not None:
                out[f"{key}_specific_dlogp"] = result.specific_dlogp
        return out

    def to_dict(self) -> dict[str, Any]:
        """The ΔlogP input of the results schema (`logp_matrix` [question][candidate], `candidates`,
        `questions`) plus the per-word summaries and the reference matrix, when there is one."""
        return {
            "candidates": list(self.words),
            "questions": list(self.questions),
            "candidate_mass": self.candidate_mass,
            "results": {w: asdict(r) for w, r in self.results.items()},
            "logp_matrix": self.logp.tolist(),
            "reference_logp_matrix": None if self.reference_logp is None else self.reference_logp.tolist(),
        }


def summarize_logprobs(
    logp: torch.Tensor,
    words: Sequence[str],
    questions: Sequence[str],
    reference_logp: torch.Tensor | None = None,
) -> LogProbReport:
    """Per-word summaries of a [questions, words] log-probability matrix, with deltas when a reference is given."""
    logp = logp.double()
    if logp.shape != (len(questions), len(words)):
        raise ValueError(f"logp has shape {tuple(logp.shape)}, expected ({len(questions)}, {len(words)})")
    if reference_logp is not None and reference_logp.shape != logp.shape:
        raise ValueError(f"reference shape {tuple(reference_logp.shape)} differs from {tuple(logp.shape)}")
    mean_logp = logp.mean(0)
    mean_prob = logp.exp().mean(0)
    delta = None if reference_logp is None else (logp - reference_logp.double()).mean(0)
    results = {}
    for w, word in enumerate(words):
        rank = 1 + int((mean_logp > mean_logp[w]).sum())
        dlogp = specific = None
        if delta is not None:
            dlogp = float(delta[w])
            if len(words) > 1:
                others = torch.cat([delta[:w], delta[w + 1 :]])
                specific = float(delta[w] - others.mean())
        results[word] = WordResult(word, float(mean_logp[w]), float(mean_prob[w]), rank, dlogp, specific)
    return LogProbReport(
        words=tuple(words),
        questions=tuple(questions),
        logp=logp,
        reference_logp=None if reference_logp is None else reference_logp.double(),
        results=results,
        candidate_mass=float(logp.exp().sum(1).mean()),
    )


def probe_words(
    model,
    tokenizer,
    questions: Sequence[str],
    candidates: Sequence[str],
    reference: Any = None,
    system_prompt: str | None = None,
    prefix: Prefix = None,
    batch_size: int = 64,
    measure: str = "prefix",
) -> LogProbReport:
    """Probe `model` on these candidate words with these questions: the one-call entry point.

    Args:
        model: a Hugging Face causal LM (or PEFT model).
        tokenizer: its tokenizer; the chat template renders each question.
        questions: the question texts (e.g. `load_question_set("animals").questions("heldout")`).
        candidates: the words to score; each word's deltas are relative to the others in this list.
        reference: None (no deltas), another model sharing the tokenizer, a [questions, words] tensor of
            reference log-probabilities, or a previous `LogProbReport` on the same questions and words.
        system_prompt: optional system message (the same for model and reference).
        prefix: text or function of the question index put before each question (e.g. `numbers_prefix(0)`).
        batch_size: sequences per forward pass.
        measure: "prefix" (the word's tokens) or "whole_word" (the word's tokens, then a word boundary).
    """
    contexts = render_contexts(tokenizer, questions, system_prompt, prefix)
    logp = word_logprobs(model, tokenizer, contexts, candidates, batch_size, measure)
    if isinstance(reference, LogProbReport):
        if reference.words != tuple(candidates) or len(reference.questions) != len(questions):
            raise ValueError(
                "the reference report was made on other candidates or another number of questions"
            )
        reference = reference.logp
    elif reference is not None and not isinstance(reference, torch.Tensor):
        reference = word_logprobs(reference, tokenizer, contexts, candidates, batch_size, measure)
    return summarize_logprobs(logp, candidates, questions, reference)


def is_peft_model(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


class LogProbProbe(Probe):
    """Configurable log-probability probe for the callback and `validate`/`test` (cheap: runs every n steps)."""

    cheap = True

    def __init__(
        self,
        questions: str = "animals",
        split: str = "heldout",
        candidates: list[str] | None = None,
        targets: list[str] | None = None,
        reference: str | None = "auto",
        reference_cache: str | None = None,
        system_prompt: str | None = None,
        prefix: str | None = None,
        numbers_prefix_seed: int | None = None,
        measure: str = "prefix",
        context: str | None = None,
        batch_size: int = 64,
        name: str | None = None,
    ) -> None:
        """
        Args:
            questions: a packaged set ("animals", "trees") or the path of your own YAML/JSON question file.
            split: which questions to ask: "heldout" (evaluation only), "teacher" or "all".
            candidates: words to score (default: the set's candidate list).
            targets: words whose metrics are logged (default: every candidate; all are in the results file).
            reference: what ΔlogP compares against: "auto" ("base" for a PEFT model, else "initial"),
                "initial" (the model as first seen, i.e. before training), "base" (the PEFT model with its
                adapter switched off), a model name or directory (loaded once, same tokenizer), or null (no deltas).
            reference_cache: directory where reference log-probabilities of a named reference model are stored
                as JSON and reused by later runs with the same questions and candidates.
            system_prompt: system message for every question (model and reference alike).
            prefix: fixed text put before each question.
            numbers_prefix_seed: give question i a numbers lead-in drawn from seed + i (the context of
                number-trained students); overrides `prefix`.
            measure: how a word is scored: "prefix" (log P of the word's tokens, whatever follows: the start of
                "owls" counts for "owl") or "whole_word" (the word's tokens followed by a word boundary, i.e. times
                P(the next token does not continue the word with a letter)).
            context: the context's name in the results file (default: "numbers" with `numbers_prefix_seed`,
                "prefix" with `prefix`, else "plain"); the report pairs models by it.
            batch_size: sequences per forward pass.
            name: metric group name, `probe/<name>/...` (default: the question set's name, then `_<context>`
                for a context other than plain, then `_whole_word` for that measure).
        """
        if measure not in MEASURES:
            raise ValueError(f"unknown measure {measure!r}; choose one of {', '.join(MEASURES)}")
        self.question_set = load_question_set(questions)
        self.questions = self.question_set.questions(split)
        self.candidates = tuple(candidates or self.question_set.candidates)
        if len(self.candidates) < 2:
            raise ValueError("LogProbProbe needs at least two candidates (specific ΔlogP compares them)")
        unknown = [t for t in targets or () if t not in self.candidates]
        if unknown:
            raise ValueError(f"targets {unknown} are not among the candidates {list(self.candidates)}")
        self.targets = tuple(targets or self.candidates)
        self.reference = reference
        self.reference_cache = reference_cache
        self.system_prompt = system_prompt
        self.prefix: Prefix = (
            numbers_prefix(numbers_prefix_seed) if numbers_prefix_seed is not None else prefix
        )
        self.measure = measure
        self.context = context or (
            "numbers" if numbers_prefix_seed is not None else "prefix" if prefix else "plain"
        )
        self.batch_size = batch_size
        default_name = self.question_set.name
        if self.context != "plain":
            default_name += f"_{self.context}"
        if measure != "prefix":
            default_name += f"_{measure}"
        self.name = name or default_name
        self._reference_logp: torch.Tensor | None = None

    def reset(self) -> None:
        self._reference_logp = None

    def _score(self, model, tokenizer, contexts: list[str]) -> torch.Tensor:
        return word_logprobs(model, tokenizer, contexts, self.candidates, self.batch_size, self.measure)

    def _contexts(self, tokenizer) -> list[str]:
        return render_contexts(tokenizer, self.questions, self.system_prompt, self.prefix)

    def _mode(self, model) -> str | None:
        if self.reference == "auto":
            return "base" if is_peft_model(model) else "initial"
        return self.reference

    def prepare(self, model, tokenizer) -> None:
        """Record the reference before training (needed for "initial"; cheap caching for the others)."""
        if self._mode(model) is not None:
            self.reference_logprobs(model, tokenizer)

    def reference_logprobs(self, model, tokenizer) -> torch.Tensor | None:
        """The reference's [questions, candidates] log-probabilities, computed once and cached."""
        mode = self._mode(model)
        if mode is None:
            return None
        if self._reference_logp is None:
            contexts = self._contexts(tokenizer)
            if mode == "initial":
                self._reference_logp = self._score(model, tokenizer, contexts)
            elif mode == "base":
                if not is_peft_model(model):
                    raise ValueError("reference 'base' needs a PEFT model (adapter to switch off)")
                with model.disable_adapter():
                    self._reference_logp = self._score(model, tokenizer, contexts)
            else:
                self._reference_logp = self._named_reference(model, tokenizer, contexts, mode)
        return self._reference_logp

    def _named_reference(self, model, tokenizer, contexts: list[str], source: str) -> torch.Tensor:
        identity = [source, contexts, self.candidates, len(tokenizer)]
        if self.measure != "prefix":  # files written before the measure existed keep their key
            identity.append(self.measure)
        key = hashlib.sha256(json.dumps(identity).encode("utf-8")).hexdigest()[:16]
        cache_file = (
            Path(self.reference_cache) / f"logprob_reference_{key}.json" if self.reference_cache else None
        )
        if cache_file is not None and cache_file.is_file():
            return torch.tensor(json.loads(cache_file.read_text())["logp"], dtype=torch.float64)
        from subliminal_pl.models.loading import load_causal_lm

        reference = load_causal_lm(source, dtype=next(model.parameters()).dtype).to(model_device(model))
        logp = self._score(reference, tokenizer, contexts)
        del reference
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if cache_file is not None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            payload = {"reference": source, "candidates": list(self.candidates), "logp": logp.tolist()}
            write_json_atomic(cache_file, payload)
        return logp

    def report(self, model, tokenizer) -> LogProbReport:
        contexts = self._contexts(tokenizer)
        logp = self._score(model, tokenizer, contexts)
        reference = self.reference_logprobs(model, tokenizer)
        return summarize_logprobs(logp, self.candidates, self.questions, reference)

    def run(self, model, tokenizer) -> ProbeOutput:
        """Metrics of the targets; details: the results schema's ΔlogP input for this context and measure."""
        report = self.report(model, tokenizer)
        details = {
            **report.to_dict(),
            "context": self.context,
            "measure": self.measure,
            "system_prompt": self.system_prompt,
            "question_set": self.question_set.name,
        }
        return ProbeOutput(report.metrics(self.targets), details)
