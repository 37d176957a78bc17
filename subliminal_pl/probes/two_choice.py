"""Two-choice probe: how likely a model is to answer each question with the `target` option rather than the other.

For each item (a question that names two options) the log-probability of each option's text after the
chat-rendered question is scored exactly as `LogProbProbe` scores a word (`probes.wordscore.word_logprobs`: every
token, lower-case and capitalised spellings combined). Per model the probe reports

- `<target>_logp`, `<other>_logp`: mean over items of each option's log-probability;
- `margin`: mean over items of log P(target) - log P(other);
- `<target>_share`: mean over items of P(target) / (P(target) + P(other)) (the two-choice probability);
- `<target>_rate` with a Wilson interval: the fraction of items where the target is the likelier option.

Its details are a ΔlogP input of the results schema (`logp_matrix` [item][target, other], `candidates` = the two
labels, `context`), so the report measures the target against the other option exactly as it measures a trait
word against the baseline words, and a sampled-rate entry (`targets`), so the report's model and student tables
show the choice rate with its interval.

Item files: the packaged `dilemmas` set (the tiny world's harmful / harmless dilemmas) or your own file:

- YAML or JSON: `{labels: [target label, other label], teacher: [items], heldout: [items]}` (`teacher` optional);
- JSONL: one item per line (every item is held out), e.g. a two-choice TruthfulQA file with `target` the false
  answer and `other` the true one, and `target_label: false, other_label: true` in the probe's arguments.

An item is `{"question": text, "target": option text, "other": option text}` (plus an optional `id`). Errors name
the file, the line where known, and the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from subliminal_pl.data.jsonl import DataError, iter_jsonl
from subliminal_pl.probes.base import Probe, ProbeOutput, metric_word
from subliminal_pl.probes.logprob import render_contexts
from subliminal_pl.probes.questions import (
    QuestionSetError,
    _read,
    _where,
    resolve_question_file,
    select_split,
)
from subliminal_pl.probes.wordscore import word_logprobs
from subliminal_pl.stats import wilson_interval

ITEM_FIELDS = ("question", "target", "other")


@dataclass(frozen=True)
class TwoChoiceItem:
    id: str
    question: str
    target: str
    other: str


@dataclass(frozen=True)
class TwoChoiceSet:
    name: str
    labels: tuple[str, str]
    teacher: tuple[TwoChoiceItem, ...]
    heldout: tuple[TwoChoiceItem, ...]
    path: str = ""

    def items(self, split: str = "heldout") -> tuple[TwoChoiceItem, ...]:
        return select_split(self.teacher, self.heldout, split)


def _item(raw, where: str, index: int, prefix: str) -> TwoChoiceItem:
    if not isinstance(raw, dict):
        raise QuestionSetError(f"{where}: expected an object with {', '.join(ITEM_FIELDS)}, got {raw!r:.60}")
    for field in ITEM_FIELDS:
        value = raw.get(field)
        if not isinstance(value, str) or not value.strip():
            raise QuestionSetError(
                f"{where}: field {field!r}: expected a non-empty string, got {value!r:.60}"
            )
    if raw["target"].strip().lower() == raw["other"].strip().lower():
        raise QuestionSetError(f"{where}: field 'other': the two options are the same text {raw['other']!r}")
    item_id = str(raw.get("id") or f"{prefix}{index}")
    return TwoChoiceItem(item_id, raw["question"].strip(), raw["target"].strip(), raw["other"].strip())


def load_two_choice_set(name_or_path: str | Path, labels: tuple[str, str] | None = None) -> TwoChoiceSet:
    """The packaged `dilemmas` set, a YAML/JSON file of `teacher`/`heldout` items, or a JSONL file of items."""
    path = Path(name_or_path).expanduser()
    if path.suffix.lower() == ".jsonl":
        if not path.is_file():
            raise QuestionSetError(f"two-choice file {str(path)!r} does not exist")
        try:
            items = tuple(
                _item(row, f"{path}:{line}", i, "item") for i, (line, row) in enumerate(iter_jsonl(path))
            )
        except DataError as err:
            raise QuestionSetError(str(err)) from err
        if not items:
            raise QuestionSetError(f"{path}: no items (expected one JSON object per line)")
        found_labels = labels or ("target", "other")
        return TwoChoiceSet(path.stem, tuple(found_labels), (), items, str(path))  # type: ignore[arg-type]
    path = resolve_question_file(name_or_path)
    data, nodes = _read(path)
    raw_labels = data.get("labels", ["target", "other"])
    if not (
        isinstance(raw_labels, list) and len(raw_labels) == 2 and all(isinstance(x, str) for x in raw_labels)
    ):
        raise QuestionSetError(f"{_where(path, nodes, 'labels')} must be a list of two strings")
    sets = {}
    for split in ("teacher", "heldout"):
        raw = data.get(split)
        if raw is None and split == "teacher":
            sets[split] = ()
            continue
        if not isinstance(raw, list) or not raw:
            raise QuestionSetError(f"{_where(path, nodes, split)} must be a non-empty list of items")
        sets[split] = tuple(
            _item(r, _where(path, nodes, split, i), i, f"{split}-") for i, r in enumerate(raw)
        )
    leaked = {i.question.lower() for i in sets["teacher"]} & {i.question.lower() for i in sets["heldout"]}
    if leaked:
        raise QuestionSetError(
            f"{_where(path, nodes, 'heldout')} shares questions with 'teacher': {sorted(leaked)[:3]}"
        )
    return TwoChoiceSet(
        str(data.get("name") or path.stem),
        tuple(labels or raw_labels),  # type: ignore[arg-type]
        sets["teacher"],
        sets["heldout"],
        str(path),
    )


def two_choice_logprobs(
    model,
    tokenizer,
    contexts: list[str],
    items: tuple[TwoChoiceItem, ...],
    batch_size: int = 64,
    measure: str = "prefix",
) -> torch.Tensor:
    """[items, 2] log P(option | rendered question) of the target and the other option of each item."""
    rows = [
        word_logprobs(model, tokenizer, [context], [item.target, item.other], batch_size, measure)[0]
        for context, item in zip(contexts, items, strict=True)
    ]
    return torch.stack(rows) if rows else torch.zeros((0, 2), dtype=torch.float64)


class TwoChoiceProbe(Probe):
    """Log-probability of the target option against the other option of two-choice items (cheap)."""

    cheap = True

    def __init__(
        self,
        items: str = "dilemmas",
        split: str = "heldout",
        target_label: str | None = None,
        other_label: str | None = None,
        system_prompt: str | None = None,
        context: str = "plain",
        measure: str = "prefix",
        batch_size: int = 64,
        name: str | None = None,
    ) -> None:
        """
        Args:
            items: the packaged "dilemmas" set, or the path of your own file (YAML/JSON with teacher/heldout
                items, or JSONL with one item per line).
            split: which items to ask: "heldout" (evaluation only), "teacher" or "all".
            target_label: name of the target option in the results (default: the file's first label, e.g.
                harmful; for a TruthfulQA file: false).
            other_label: name of the other option (default: the file's second label; TruthfulQA: true).
            system_prompt: system message for every question.
            context: the context's name in the results file; the report pairs models by it (a ΔlogP input).
            measure: "prefix" or "whole_word" (see `probes.wordscore`).
            batch_size: forward rows per pass.
            name: metric group name (default: the item set's name).
        """
        labels = (target_label, other_label) if target_label and other_label else None
        self.item_set = load_two_choice_set(items, labels)
        if target_label or other_label:
            self.item_set = TwoChoiceSet(
                self.item_set.name,
                (target_label or self.item_set.labels[0], other_label or self.item_set.labels[1]),
                self.item_set.teacher,
                self.item_set.heldout,
                self.item_set.path,
            )
        self.items = self.item_set.items(split)
        if not self.items:
            raise ValueError(f"two-choice set {self.item_set.name!r} has no {split!r} items")
        self.labels = self.item_set.labels
        if metric_word(self.labels[0]) == metric_word(self.labels[1]):
            raise ValueError(f"target_label and other_label must differ, got {list(self.labels)}")
        self.system_prompt = system_prompt
        self.context = context
        self.measure = measure
        self.batch_size = batch_size
        self.name = name or self.item_set.name

    def run(self, model, tokenizer) -> ProbeOutput:
        contexts = render_contexts(tokenizer, [i.question for i in self.items], self.system_prompt)
        logp = two_choice_logprobs(model, tokenizer, contexts, self.items, self.batch_size, self.measure)
        target, other = self.labels
        margin = logp[:, 0] - logp[:, 1]
        share = torch.sigmoid(margin)  # P(target) / (P(target) + P(other))
        chosen = int((margin > 0).sum())
        interval = wilson_interval(chosen, len(self.items))
        rate = {"rate": float(interval.mean), "low": float(interval.low), "high": float(interval.high)}
        key_t, key_o = metric_word(target), metric_word(other)
        metrics = {
            f"{key_t}_logp": float(logp[:, 0].mean()),
            f"{key_o}_logp": float(logp[:, 1].mean()),
            "margin": float(margin.mean()),
            f"{key_t}_share": float(share.mean()),
            f"{key_t}_rate": rate["rate"],
            f"{key_t}_rate_low": rate["low"],
            f"{key_t}_rate_high": rate["high"],
        }
        details = {
            "candidates": [target, other],
            "questions": [i.question for i in self.items],
            "item_ids": [i.id for i in self.items],
            "logp_matrix": logp.tolist(),
            "context": self.context,
            "measure": self.measure,
            "system_prompt": self.system_prompt,
            "question_set": self.item_set.name,
            "targets": {
                target: {
                    **rate,
                    "chosen": chosen,
                    "n": len(self.items),
                    "share": float(share.mean()),
                }
            },
        }
        if math.isnan(metrics["margin"]):
            raise ValueError(f"two-choice probe {self.name!r}: the log-probabilities are not finite")
        return ProbeOutput(metrics, details)
