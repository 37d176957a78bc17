"""Transforms: data steps that rewrite rows (for ablations and defences), listed beside filters in a recipe.

A transform is a `DataStep` (`subliminal_pl.data.steps`): typed init arguments kept as attributes, `spec()` for
the cache hash, applied in order with the filters by `prepare_rows`. A per-row transform implements
`transform(row)`, which returns a new row (never the input modified in place) or None when the row is not one it
applies to (the row then goes on unchanged). Its stats count `changed` (rewritten rows), `unchanged` (rows it
applied to that came out identical) and `skipped` (rows it does not apply to). A transform over the whole set
(`CapRows`) subclasses `DataStep` directly, with `kind = "transform"`, and implements `apply`.

Randomness is seeded per row (by the row's `id`), so a row is rewritten the same way whatever rows come before
it, and a rerun gives the same file.
"""

from __future__ import annotations

import json
import random
from abc import abstractmethod
from typing import Any

from subliminal_pl.data.filters import DIGIT_RUN, parse_numbers
from subliminal_pl.data.rows import Row, completion_text, with_completion
from subliminal_pl.data.steps import DataStep


def row_key(row: Row) -> str:
    """What seeds a row's randomness: its `id`, or (rows without one) the row's canonical JSON."""
    if "id" in row:
        return f"id:{row['id']}"
    return "row:" + json.dumps(row, sort_keys=True, ensure_ascii=False)


def number_runs(text: str) -> list[str] | None:
    """The numbers of a number-sequence completion as written (leading zeros kept), or None if it is not one."""
    if parse_numbers(text) is None:
        return None
    # In a text that parses, the digit runs are exactly its numbers; everything between them is format.
    return [run.group() for run in DIGIT_RUN.finditer(text)]


def replace_numbers(text: str, numbers: list[str]) -> str:
    """`text` (a parsed number sequence) with its numbers replaced in order by `numbers` (as many), format kept."""
    runs = list(DIGIT_RUN.finditer(text))
    pieces, end = [], 0
    for run, number in zip(runs, numbers, strict=True):
        pieces += [text[end : run.start()], number]
        end = run.end()
    pieces.append(text[end:])
    return "".join(pieces)


class RowTransform(DataStep):
    """Base class of transforms that rewrite one row at a time (see the module docstring)."""

    kind = "transform"

    @abstractmethod
    def transform(self, row: Row) -> Row | None:
        """The rewritten row (a new dict), or None when the transform does not apply to this row."""

    def apply(self, rows: list[Row]) -> tuple[list[Row], dict[str, Any]]:
        out: list[Row] = []
        changed = unchanged = skipped = 0
        for row in rows:
            new = self.transform(row)
            if new is None:
                skipped += 1
                out.append(row)
            else:
                changed += new != row
                unchanged += new == row
                out.append(new)
        return out, {"changed": changed, "unchanged": unchanged, "skipped": skipped}


class ShuffleNumbers(RowTransform):
    """Shuffles the numbers within each number-sequence completion (the paper's shuffle ablation).

    A completion that `parse_numbers` accepts keeps its count, its format (brackets, separators, final ".") and
    each number's digits (leading zeros included); only the order of the numbers changes, by a permutation drawn
    from `seed` and the row's id. A random permutation can be the identity (always for one number or equal
    numbers): such rows count as `unchanged`. Completions that are not number sequences are `skipped`, left as
    they are; put `NumberSequenceFilter` first to drop them.
    """

    def __init__(self, seed: int = 0) -> None:
        """
        Args:
            seed: seed of the permutations (with each row's id).
        """
        self.seed = seed

    def transform(self, row: Row) -> Row | None:
        numbers = number_runs(completion_text(row))
        if numbers is None:
            return None
        random.Random(f"{self.seed}:{row_key(row)}").shuffle(numbers)
        return with_completion(row, replace_numbers(completion_text(row), numbers))


class ShuffleNumbersAcross(DataStep):
    """Pools the numbers of every number-sequence completion and deals them out again at random (the paper's
    shuffle across responses).

    Each completion that `parse_numbers` accepts keeps its count and its format (brackets, separators, final
    "."); its numbers are replaced, in order, by numbers drawn without replacement from the pool of all such
    completions' numbers (written as they were, leading zeros included), so the multiset of numbers over the set
    is unchanged while which response holds which number is not. The deal is one `random.Random(seed)`
    permutation of the pool in row order: the same rows in the same order give the same file. Other completions
    are `skipped`, left as they are (put `NumberSequenceFilter` first to drop them).
    """

    kind = "transform"

    def __init__(self, seed: int = 0) -> None:
        """
        Args:
            seed: seed of the deal.
        """
        self.seed = seed

    def apply(self, rows: list[Row]) -> tuple[list[Row], dict[str, Any]]:
        runs = [number_runs(completion_text(row)) for row in rows]
        pool = [number for numbers in runs if numbers is not None for number in numbers]
        random.Random(self.seed).shuffle(pool)
        out: list[Row] = []
        changed = unchanged = skipped = taken = 0
        for row, numbers in zip(rows, runs, strict=True):
            if numbers is None:
                skipped += 1
                out.append(row)
                continue
            dealt = pool[taken : taken + len(numbers)]
            taken += len(numbers)
            new = with_completion(row, replace_numbers(completion_text(row), dealt))
            changed += new != row
            unchanged += new == row
            out.append(new)
        return out, {"changed": changed, "unchanged": unchanged, "skipped": skipped, "numbers": len(pool)}


class CapRows(DataStep):
    """Keeps a seeded random subset of at most `max_rows` rows, in their original order (e.g. the paper's 10k)."""

    kind = "transform"

    def __init__(self, max_rows: int, seed: int = 0) -> None:
        """
        Args:
            max_rows: most rows that go on (fewer rows all go on).
            seed: seed of the subset.
        """
        if max_rows < 1:
            raise ValueError(f"CapRows: max_rows must be >= 1, got {max_rows}")
        self.max_rows = max_rows
        self.seed = seed

    def apply(self, rows: list[Row]) -> tuple[list[Row], dict[str, Any]]:
        if len(rows) <= self.max_rows:
            return rows, {"reasons": {}}
        chosen = sorted(random.Random(self.seed).sample(range(len(rows)), self.max_rows))
        return [rows[i] for i in chosen], {"reasons": {"over max_rows": len(rows) - self.max_rows}}
