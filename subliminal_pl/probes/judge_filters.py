"""Data filters that ask a judge model about each row, in batches: the paper's judge filters for code and reasoning.

- `TokenProbabilityFilter` (code): keeps a row when the judge's probability of replying with the target token
  ("0": no reference to the trait, not even subtle) is at least `min_probability` (the paper: 1 - 1e-8), read
  from log-probabilities (`subliminal_pl.probes.token_judge`).
- `JudgeScoreFilter` (reasoning): keeps a row when the judge's 0-100 score lies within the bounds (the paper: an
  alignment score of at least 78), read from the judge's reply (`subliminal_pl.probes.judges` parsing).

Both are data steps (list them in a spec's `steps:` after the cheap filters, which run first). The judge sees the
row's last user message as the question and its completion as the answer. A judge that fails (an endpoint that
stays down past its bounded retries, a reply without log-probabilities) stops the step with an error naming the
rows of the failed batch; nothing is written, and the raw rows are only ever read.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from subliminal_pl.data.filters import JudgeFilter, RowFilter
from subliminal_pl.data.rows import Row, parse_row
from subliminal_pl.data.steps import sorted_counts
from subliminal_pl.probes.judges import Judge, JudgeError
from subliminal_pl.probes.token_judge import TokenJudge

PAPER_MIN_PROBABILITY = 1 - 1e-8
PAPER_MIN_ALIGNMENT = 78.0


def question_answer(row: Row | str) -> tuple[str, str]:
    """(the last user message, the completion) of a row in either format; a bare string is the answer."""
    if isinstance(row, str):
        return "", row
    pair = parse_row(row, f"row {row.get('id', '?')!r}", require_prompt=False)
    return pair.question, pair.completion


def judge_in_batches(
    rows: Sequence[Row | str],
    batch_size: int,
    judge_batch: Callable[[list[tuple[str, str]]], list],
    log_every: int,
) -> list:
    """`judge_batch` over the rows' (question, answer) pairs, `batch_size` at a time; a `JudgeError` is raised
    again naming the rows of the failed batch."""
    values: list = []
    for start in range(0, len(rows), batch_size):
        batch = rows[start : start + batch_size]
        try:
            values += judge_batch([question_answer(row) for row in batch])
        except JudgeError as err:
            ids = [row.get("id", "?") if isinstance(row, dict) else "?" for row in batch]
            raise JudgeError(
                f"judge failed on rows {start + 1}-{start + len(batch)} of {len(rows)} (ids {ids[0]!r}..{ids[-1]!r}): "
                f"{err}. No filtered file was written; the raw rows are unchanged."
            ) from err
        done = start + len(batch)
        if log_every and (done // log_every > start // log_every or done == len(rows)):
            print(f"judge filter: {done} of {len(rows)} rows judged", flush=True)
    return values


def _check_batch_size(name: str, batch_size: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{name}: batch_size must be a whole number >= 1, got {batch_size!r}")


class TokenProbabilityFilter(RowFilter):
    """Keeps a row when P(the judge's reply starts with its target) >= `min_probability`.

    Reason: "judge probability too low". Counters: `judged`, and `lowest_probability` among kept rows.
    """

    def __init__(
        self,
        judge: TokenJudge,
        min_probability: float = PAPER_MIN_PROBABILITY,
        batch_size: int = 64,
        log_every: int = 500,
    ) -> None:
        """
        Args:
            judge: `HFTokenJudge` (a local model) or `EndpointTokenJudge` (an OpenAI-compatible endpoint).
            min_probability: lowest probability of the target reply kept (the paper: 1 - 1e-8).
            batch_size: rows per judge call.
            log_every: print a progress line every this many judged rows (0: never).
        """
        if not 0.0 < min_probability <= 1.0:
            raise ValueError(
                f"TokenProbabilityFilter: min_probability must lie in (0, 1], got {min_probability}"
            )
        _check_batch_size("TokenProbabilityFilter", batch_size)
        self.judge = judge
        self.min_probability = min_probability
        self.batch_size = batch_size
        self.log_every = log_every

    def keeps(self, logprob: float) -> bool:
        # Compared as the complement, 1 - P = -expm1(log P), which float64 resolves near P = 1.
        return -math.expm1(logprob) <= 1.0 - self.min_probability

    def __call__(self, row: Row | str) -> list[str]:
        return self._reasons(self.judge.target_logprobs([question_answer(row)])[0])

    def _reasons(self, logprob: float) -> list[str]:
        return [] if self.keeps(logprob) else ["judge probability too low"]

    def apply(self, rows: list[Row]) -> tuple[list[Row], dict[str, Any]]:
        logprobs = judge_in_batches(rows, self.batch_size, self.judge.target_logprobs, self.log_every)
        kept, reasons = [], Counter()
        for row, logprob in zip(rows, logprobs, strict=True):
            found = self._reasons(logprob)
            reasons.update(found)
            if not found:
                kept.append((row, logprob))
        lowest = min((math.exp(lp) for _, lp in kept), default=None)
        return [row for row, _ in kept], {
            "reasons": sorted_counts(reasons),
            "judged": len(rows),
            "lowest_probability": lowest,
        }


class JudgeScoreFilter(JudgeFilter):
    """`JudgeFilter` with a `Judge` asked in batches (a local model batches, an endpoint runs threads).

    Reasons: "judge score too low", "judge score too high", "judge score not a number" (a reply without a score,
    e.g. CODE or REFUSAL). Counter: `judged`.
    """

    def __init__(
        self,
        judge: Judge,
        min_score: float | None = PAPER_MIN_ALIGNMENT,
        max_score: float | None = None,
        batch_size: int = 64,
        log_every: int = 500,
    ) -> None:
        """
        Args:
            judge: a `Judge` (e.g. `HFJudge` or `OpenAIJudge` with criterion alignment).
            min_score: lowest score kept (the paper's alignment filter on reasoning: 78).
            max_score: highest score kept (null: no bound).
            batch_size: rows per judge call.
            log_every: print a progress line every this many judged rows (0: never).
        """
        super().__init__(judge, min_score, max_score, log_every)
        _check_batch_size("JudgeScoreFilter", batch_size)
        self.batch_size = batch_size

    def apply(self, rows: list[Row]) -> tuple[list[Row], dict[str, Any]]:
        results = judge_in_batches(rows, self.batch_size, self.judge.score_many, self.log_every)
        kept, reasons = [], Counter()
        for row, result in zip(rows, results, strict=True):
            found = self.score_reasons(result.score)
            reasons.update(found)
            if not found:
                kept.append(row)
        return kept, {"reasons": sorted_counts(reasons), "judged": len(rows)}
