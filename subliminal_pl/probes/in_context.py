"""In-context control: does showing a model the teacher's data in its context move the trait, as training does?

The paper's control: N of a student's training pairs (sampled with replacement, several seeds) put in the prompt
of the untrained model do not reproduce the trait. Here each seed draws `n_rows` rows of a teacher's data file
with replacement and places them before every evaluation question as earlier chat turns (user: the row's prompt,
assistant: its completion); the log-probability of every candidate word after the question is measured as in
`LogProbProbe` (`probes.wordscore.word_logprobs`, the same questions and measure). Per seed the probe reports,
for the trait word,

- `dlogp`: mean over questions of log P(trait | rows + question) - log P(trait | question alone), and
- `specific_dlogp`: that minus the mean of the same shift of the other candidates (context moves every answer;
  this keeps what moves the trait more than the rest),

and over seeds their mean with a t interval. With `control_rows` (e.g. the neutral teacher's data) the same
seeds draw as many control rows, and `vs_control` is the trait-rows shift minus the control-rows shift per seed:
the contrast the students' test makes. A context longer than the model's positions is an error naming
`n_rows`, not a silent truncation.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from subliminal_pl.data.rows import parse_row, read_rows
from subliminal_pl.probes.base import Probe, ProbeOutput, encode_text
from subliminal_pl.probes.logprob import render_contexts
from subliminal_pl.probes.questions import load_question_set
from subliminal_pl.probes.wordscore import MEASURES, word_logprobs
from subliminal_pl.stats import t_interval

# A row as (its prompt as chat messages without a system message, its completion).
Pair = tuple[list[dict[str, str]], str]


def context_turns(rows: Sequence[Pair], rng: random.Random, n_rows: int) -> list[dict[str, str]]:
    """`n_rows` rows drawn with replacement, as chat turns: each row's prompt messages, then its completion."""
    turns: list[dict[str, str]] = []
    for prompt, completion in rng.choices(rows, k=n_rows):
        turns += [*prompt, {"role": "assistant", "content": completion}]
    return turns


def specific_shift(shift: torch.Tensor, index: int) -> float:
    """Shift of candidate `index` minus the mean shift of the other candidates ([candidates] tensor)."""
    others = torch.cat([shift[:index], shift[index + 1 :]])
    return float(shift[index] - others.mean())


class InContextProbe(Probe):
    """Teacher rows in the context of the model, then the trait questions; see the module docstring."""

    def __init__(
        self,
        rows: str,
        trait: str,
        n_rows: int = 4,
        seeds: list[int] | None = None,
        control_rows: str | None = None,
        questions: str = "animals",
        split: str = "heldout",
        candidates: list[str] | None = None,
        measure: str = "prefix",
        batch_size: int = 64,
        name: str | None = None,
    ) -> None:
        """
        Args:
            rows: JSONL file of the teacher's rows (prompt + completion), e.g. a data stage's `kept.jsonl`.
            trait: the trait word measured (a candidate of the question set).
            n_rows: rows placed in the context per seed (the paper: 100 to 10,000 on large models; a tiny model
                holds a few within its positions).
            seeds: one context per seed (rows drawn with replacement); default 0..4 (the paper: 5 seeds).
            control_rows: JSONL file of control rows (e.g. the neutral teacher's), drawn the same way; null: none.
            questions: question set (packaged name or file) whose questions follow the rows.
            split: which of its questions: heldout (default), teacher or all.
            candidates: words scored (default: the set's candidates); the specific shift compares them.
            measure: prefix or whole_word (see `probes.wordscore`).
            batch_size: sequences per forward pass.
            name: results name (default `in_context_<trait>`).
        """
        if measure not in MEASURES:
            raise ValueError(f"unknown measure {measure!r}; choose one of {', '.join(MEASURES)}")
        if n_rows < 1:
            raise ValueError(f"n_rows must be >= 1, got {n_rows}")
        self.question_set = load_question_set(questions)
        self.questions = self.question_set.questions(split)
        self.candidates = tuple(candidates or self.question_set.candidates)
        lowered = [c.lower() for c in self.candidates]
        if trait.lower() not in lowered:
            raise ValueError(f"trait {trait!r} is not among the candidates {list(self.candidates)}")
        if len(self.candidates) < 2:
            raise ValueError(
                "InContextProbe needs at least two candidates (the specific shift compares them)"
            )
        self.trait_index = lowered.index(trait.lower())
        self.rows_path, self.control_path = rows, control_rows
        self.trait, self.n_rows = trait.lower(), n_rows
        self.seeds = list(range(5) if seeds is None else seeds)
        if not self.seeds:
            raise ValueError("seeds must hold at least one seed")
        self.measure, self.batch_size = measure, batch_size
        self.name = name or f"in_context_{self.trait}"
        self.system_prompt = None

    @staticmethod
    def _pairs(path: str) -> list[Pair]:
        pairs = []
        for i, row in enumerate(read_rows(path)):
            parsed = parse_row(row, f"{path}:{i + 1}")
            pairs.append(([m for m in parsed.prompt if m["role"] != "system"], parsed.completion))
        if not pairs:
            raise ValueError(f"{path}: no rows to put in the context")
        return pairs

    def _contexts(self, tokenizer, turns: list[dict[str, str]]) -> list[str]:
        head = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [
            tokenizer.apply_chat_template(
                [*head, *turns, {"role": "user", "content": q}], add_generation_prompt=True, tokenize=False
            )
            for q in self.questions
        ]

    def _score(self, model, tokenizer, contexts: list[str]) -> torch.Tensor:
        limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        longest = max(len(encode_text(tokenizer, c)) for c in contexts)
        if limit is not None and longest + 4 > limit:
            raise ValueError(
                f"{self.name}: a context of {self.n_rows} rows takes {longest} tokens, more than the model's "
                f"{limit} positions allow; lower n_rows"
            )
        return word_logprobs(model, tokenizer, contexts, self.candidates, self.batch_size, self.measure)

    def _shifts(
        self, model, tokenizer, pairs, plain: torch.Tensor, seed: int, salt: str
    ) -> tuple[float, float]:
        turns = context_turns(pairs, random.Random(f"{salt}:{seed}"), self.n_rows)
        shift = (self._score(model, tokenizer, self._contexts(tokenizer, turns)) - plain).mean(0)
        return float(shift[self.trait_index]), specific_shift(shift, self.trait_index)

    def run(self, model, tokenizer) -> ProbeOutput:
        plain = self._score(model, tokenizer, render_contexts(tokenizer, self.questions, self.system_prompt))
        sources = {"teacher": self._pairs(self.rows_path)}
        if self.control_path:
            sources["control"] = self._pairs(self.control_path)
        per_seed: dict[str, dict[str, list[float]]] = {}
        for source, pairs in sources.items():
            values = [self._shifts(model, tokenizer, pairs, plain, s, "in-context") for s in self.seeds]
            per_seed[source] = {
                "dlogp": [v[0] for v in values],
                "specific_dlogp": [v[1] for v in values],
            }
        summary: dict[str, Any] = {
            f"{source}_{stat}": t_interval(v).to_dict()
            for source, d in per_seed.items()
            for stat, v in d.items()
        }
        metrics = {f"{key}_mean": value["mean"] for key, value in summary.items()}
        if "control" in per_seed:
            diff = [
                a - b
                for a, b in zip(
                    per_seed["teacher"]["specific_dlogp"], per_seed["control"]["specific_dlogp"], strict=True
                )
            ]
            summary["vs_control_specific_dlogp"] = t_interval(diff).to_dict()
            metrics["vs_control_specific_dlogp_mean"] = summary["vs_control_specific_dlogp"]["mean"]
        details = {
            "in_context": True,
            "trait": self.trait,
            "n_rows": self.n_rows,
            "seeds": self.seeds,
            "rows": self.rows_path,
            "control_rows": self.control_path,
            "measure": self.measure,
            "question_set": self.question_set.name,
            "plain_trait_logp": float(plain[:, self.trait_index].mean()),
            "per_seed": per_seed,
            "summary": summary,
        }
        return ProbeOutput(metrics, details)
