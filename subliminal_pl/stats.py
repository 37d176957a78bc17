"""Confidence intervals shared by probes, the MLP experiment and reports."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from scipy import stats as _scipy_stats


@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided confidence interval."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float = 0.95

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean with a Student-t interval; a single value gives a zero-width interval."""
    n = len(values)
    if n == 0:
        raise ValueError("t_interval needs at least one value")
    mean = math.fsum(values) / n
    if n == 1:
        return Interval(mean, mean, mean, 1, confidence)
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    half = _scipy_stats.t.ppf(0.5 + confidence / 2, n - 1) * math.sqrt(var / n)
    return Interval(mean, mean - half, mean + half, n, confidence)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> Interval:
    """Wilson score interval for a binomial rate (well behaved at 0 and 1, unlike the normal interval)."""
    if n <= 0:
        raise ValueError("wilson_interval needs n > 0")
    if not 0 <= successes <= n:
        raise ValueError(f"successes={successes} outside [0, {n}]")
    z = _scipy_stats.norm.ppf(0.5 + confidence / 2)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), n, confidence)


def paired_difference(
    treated: Sequence[float], control: Sequence[float], confidence: float = 0.95
) -> Interval:
    """Mean of the per-seed differences `treated[i] - control[i]` with a Student-t interval.

    Pairing by seed removes the variation both runs share (same data order, same init), so the interval is
    tighter than one built from the two means separately.
    """
    if len(treated) != len(control):
        raise ValueError(f"paired_difference needs equal lengths, got {len(treated)} and {len(control)}")
    return t_interval([a - b for a, b in zip(treated, control, strict=True)], confidence)


@dataclass(frozen=True)
class PermutationResult:
    """Diagonal-minus-off-diagonal statistic of a trait-by-student matrix and its one-sided p-value."""

    statistic: float
    p_value: float
    n_permutations: int
    exact: bool

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _diagonal_contrast(matrix: Sequence[Sequence[float]], labels: Sequence[int]) -> float:
    """Mean of matrix[s][labels[s]] minus the mean of every other cell."""
    on, off = [], []
    for row, label in zip(matrix, labels, strict=True):
        for column, value in enumerate(row):
            (on if column == label else off).append(value)
    return math.fsum(on) / len(on) - math.fsum(off) / len(off)


def diagonal_permutation_test(
    matrix: Sequence[Sequence[float]],
    labels: Sequence[int] | None = None,
    n_permutations: int = 10_000,
    seed: int = 0,
) -> PermutationResult:
    """Is each student's own trait raised more than the other traits? A permutation test on the student labels.

    `matrix[s][t]` is the measured effect (e.g. specific ΔlogP) of trait `t` in student `s`; `labels[s]` is the
    trait of the teacher student `s` learned from (default: student `s` <-> trait `s`, a square matrix). The
    statistic is the mean of the cells where the column is the student's own trait minus the mean of the rest.
    Under the null the labels are exchangeable, so the labels are shuffled across students and the statistic
    recomputed. When the distinct label arrangements number at most `n_permutations` they are all enumerated and
    the p-value is exact (its smallest value is 1 / number of arrangements); otherwise `n_permutations` seeded
    random shuffles give p = (1 + #{shuffled >= observed}) / (1 + n_permutations).
    """
    rows = [list(map(float, row)) for row in matrix]
    if not rows or any(len(row) != len(rows[0]) for row in rows):
        raise ValueError("diagonal_permutation_test needs a non-empty rectangular matrix")
    n_traits = len(rows[0])
    labels = list(range(len(rows))) if labels is None else [int(v) for v in labels]
    if len(labels) != len(rows):
        raise ValueError(f"{len(labels)} labels for {len(rows)} student rows")
    if any(not 0 <= v < n_traits for v in labels):
        raise ValueError(f"labels must index the {n_traits} trait columns, got {labels}")
    if n_traits < 2 or len(set(labels)) < 2:
        raise ValueError(
            "need at least two traits among the students' labels to compare diagonal and off-diagonal"
        )

    observed = _diagonal_contrast(rows, labels)
    # Ties count as "at least as extreme"; a tiny tolerance keeps float noise from deciding them.
    tolerance = 1e-12 * max(1.0, abs(observed))
    arrangements = _count_arrangements(labels)
    if arrangements <= n_permutations:
        shuffled = list(_distinct_permutations(labels))
        hits = sum(_diagonal_contrast(rows, p) >= observed - tolerance for p in shuffled)
        return PermutationResult(observed, hits / len(shuffled), len(shuffled), exact=True)
    rng = random.Random(seed)
    hits = 0
    for _ in range(n_permutations):
        perm = labels[:]
        rng.shuffle(perm)
        hits += _diagonal_contrast(rows, perm) >= observed - tolerance
    return PermutationResult(observed, (1 + hits) / (1 + n_permutations), n_permutations, exact=False)


def _count_arrangements(labels: Sequence[int]) -> int:
    """Number of distinct orderings of `labels` (a multinomial coefficient)."""
    count = math.factorial(len(labels))
    for label in set(labels):
        count //= math.factorial(labels.count(label))
    return count


def _distinct_permutations(labels: Sequence[int]):
    """Every distinct ordering of `labels` once (labels repeat when several students share a trait)."""
    remaining = {label: labels.count(label) for label in sorted(set(labels))}
    current: list[int] = []

    def extend():
        if len(current) == len(labels):
            yield list(current)
            return
        for label, left in remaining.items():
            if left:
                remaining[label] -= 1
                current.append(label)
                yield from extend()
                current.pop()
                remaining[label] += 1

    yield from extend()
