"""Log-probability probe: how likely the model is to answer each question with each candidate word.

For every (question, candidate) the exact log-probability of the whole word after the chat-rendered question is
computed: every token of the word is scored, and the spellings "owl", "Owl", " owl", " Owl" (distinct token
sequences, hence disjoint continuations) are combined by log-sum-exp. First-token shortcuts are avoided on
purpose: many names share a first token. Per word the probe reports

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
import inspect
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from subliminal_pl.data.jsonl import write_json_atomic
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

REFERENCE_MODES = ("auto", "initial", "base")


def word_variants(word: str) -> list[str]:
    """The spellings combined for one word: lower case and capitalised, each with and without a leading space."""
    lower = word.strip().lower()
    capitalised = lower[:1].upper() + lower[1:]
    forms = dict.fromkeys([lower, capitalised, word.strip()])
    return [*forms, *(" " + f for f in forms)]


def variant_token_ids(tokenizer, word: str) -> list[tuple[int, ...]]:
    """Distinct token sequences of the word's spellings; a spelling the tokenizer cannot represent is an error."""
    sequences: dict[tuple[int, ...], None] = {}
    for text in word_variants(word):
        ids = tuple(encode_text(tokenizer, text))
        if not ids:
            raise ValueError(f"candidate {word!r}: spelling {text!r} encodes to no tokens")
        if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids:
            raise ValueError(
                f"candidate {word!r}: spelling {text!r} contains the unknown token; the tokenizer cannot score it"
            )
        sequences.setdefault(ids)
    return list(sequences)


def render_contexts(
    tokenizer, questions: Sequence[str], system_prompt: str | None = None, prefix: Prefix = None
) -> list[str]:
    """Each question (with the optional prefix) rendered as a user turn plus the assistant's generation prompt."""
    return [render_user_turn(tokenizer, q, system_prompt) for q in apply_prefix(questions, prefix)]


def _accepts_logits_to_keep(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def window_logprobs(model, sequences: list[list[int]], keep: int, pad_id: int) -> torch.Tensor:
    """Next-token log-probabilities at the last `keep` positions of each sequence: [B, keep, vocab] float32.

    Rows are left-padded so they all end at the last column; only the logits of those `keep` columns are
    computed where the model supports it (the [B, T, vocab] logits tensor is this probe's memory cost).
    """
    device = model_device(model)
    input_ids, mask = left_pad(sequences, pad_id, device)
    # Positions count real tokens only, so left padding does not shift them (absolute-position models care).
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    kwargs = {"logits_to_keep": keep} if _accepts_logits_to_keep(model) else {}
    logits = model(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, **kwargs).logits
    return logits[:, -keep:, :].float().log_softmax(-1)


def covering_paths(spellings: Sequence[tuple[int, ...]]) -> tuple[list[tuple[int, ...]], list[int]]:
    """The continuations to run after each context, and which one scores each spelling.

    Scoring spelling v needs the next-token distributions after context + v[:j] for every j < len(v), i.e.
    after every prefix of v[:-1]. One forward pass of context + p yields them for all prefixes of p, so the
    paths are the longest distinct v[:-1] (a single-token spelling needs only the context: path ()). For
    candidates that are mostly one token this is one pass per question instead of one per spelling.
    """
    needed = {v[:-1] for v in spellings}
    paths = sorted(p for p in needed if not any(len(q) > len(p) and q[: len(p)] == p for q in needed))
    owner = [next(i for i, p in enumerate(paths) if p[: len(v) - 1] == v[:-1]) for v in spellings]
    return paths, owner


def word_logprobs(
    model, tokenizer, contexts: Sequence[str], words: Sequence[str], batch_size: int = 64
) -> torch.Tensor:
    """log P(word | context) for every context and word: [len(contexts), len(words)] float64.

    Each word's spellings are scored token by token and combined by log-sum-exp. `batch_size` counts forward
    rows (question x covering path). The same contexts and words always produce the same batches in the same
    order, so a model compared with itself differs by exactly 0.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    context_ids = [encode_text(tokenizer, c) for c in contexts]
    if any(not ids for ids in context_ids):
        raise ValueError("a rendered question encodes to no tokens")
    per_word = [variant_token_ids(tokenizer, w) for w in words]
    spellings = list(dict.fromkeys(v for variants in per_word for v in variants))
    paths, owner = covering_paths(spellings)
    by_path = [[s for s, o in enumerate(owner) if o == p] for p in range(len(paths))]
    # Rows: (context, path); sorted long-first so the largest batch (the memory peak) comes first.
    rows = [(c, p) for c in range(len(contexts)) for p in range(len(paths))]
    rows.sort(key=lambda row: -(len(context_ids[row[0]]) + len(paths[row[1]])))
    scores = torch.zeros(len(contexts) * len(spellings), dtype=torch.float64)
    pad_id = pad_id_of(tokenizer)
    with eval_mode(model):
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            keep = max(len(paths[p]) for _, p in chunk) + 1
            logprobs = window_logprobs(
                model, [context_ids[c] + list(paths[p]) for c, p in chunk], keep, pad_id
            )
            # Column keep-1-len(path)+j of a row holds the distribution after context + path[:j].
            index_row, index_col, index_token, target = [], [], [], []
            for b, (c, p) in enumerate(chunk):
                first = keep - 1 - len(paths[p])
                for s in by_path[p]:
                    for j, token in enumerate(spellings[s]):
                        index_row.append(b)
                        index_col.append(first + j)
                        index_token.append(token)
                        target.append(c * len(spellings) + s)
            values = logprobs[index_row, index_col, index_token].double().cpu()
            scores.index_add_(0, torch.tensor(target), values)
    scores = scores.view(len(contexts), len(spellings))
    position = {v: i for i, v in enumerate(spellings)}
    per_spelling = torch.full(
        (len(contexts), len(words), max(map(len, per_word))), -math.inf, dtype=torch.float64
    )
    for w, variants in enumerate(per_word):
        for k, v in enumerate(variants):
            per_spelling[:, w, k] = scores[:, position[v]]
    return torch.logsumexp(per_spelling, dim=-1)


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
        return {
            "words": list(self.words),
            "questions": list(self.questions),
            "candidate_mass": self.candidate_mass,
            "results": {w: asdict(r) for w, r in self.results.items()},
            "logp": self.logp.tolist(),
            "reference_logp": None if self.reference_logp is None else self.reference_logp.tolist(),
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
    """
    contexts = render_contexts(tokenizer, questions, system_prompt, prefix)
    logp = word_logprobs(model, tokenizer, contexts, candidates, batch_size)
    if isinstance(reference, LogProbReport):
        if reference.words != tuple(candidates) or len(reference.questions) != len(questions):
            raise ValueError(
                "the reference report was made on other candidates or another number of questions"
            )
        reference = reference.logp
    elif reference is not None and not isinstance(reference, torch.Tensor):
        reference = word_logprobs(reference, tokenizer, contexts, candidates, batch_size)
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
            batch_size: sequences per forward pass.
            name: metric group name, `probe/<name>/...` (default: the question set's name).
        """
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
        self.batch_size = batch_size
        self.name = name or self.question_set.name
        self._reference_logp: torch.Tensor | None = None

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
                self._reference_logp = word_logprobs(
                    model, tokenizer, contexts, self.candidates, self.batch_size
                )
            elif mode == "base":
                if not is_peft_model(model):
                    raise ValueError("reference 'base' needs a PEFT model (adapter to switch off)")
                with model.disable_adapter():
                    self._reference_logp = word_logprobs(
                        model, tokenizer, contexts, self.candidates, self.batch_size
                    )
            else:
                self._reference_logp = self._named_reference(model, tokenizer, contexts, mode)
        return self._reference_logp

    def _named_reference(self, model, tokenizer, contexts: list[str], source: str) -> torch.Tensor:
        key = hashlib.sha256(
            json.dumps([source, contexts, self.candidates, len(tokenizer)]).encode("utf-8")
        ).hexdigest()[:16]
        cache_file = (
            Path(self.reference_cache) / f"logprob_reference_{key}.json" if self.reference_cache else None
        )
        if cache_file is not None and cache_file.is_file():
            return torch.tensor(json.loads(cache_file.read_text())["logp"], dtype=torch.float64)
        from subliminal_pl.models.loading import load_causal_lm

        reference = load_causal_lm(source, dtype=next(model.parameters()).dtype).to(model_device(model))
        logp = word_logprobs(reference, tokenizer, contexts, self.candidates, self.batch_size)
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
        logp = word_logprobs(model, tokenizer, contexts, self.candidates, self.batch_size)
        reference = self.reference_logprobs(model, tokenizer)
        return summarize_logprobs(logp, self.candidates, self.questions, reference)

    def run(self, model, tokenizer) -> ProbeOutput:
        report = self.report(model, tokenizer)
        return ProbeOutput(report.metrics(self.targets), report.to_dict())
