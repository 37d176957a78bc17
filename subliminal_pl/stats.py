"""The statistics API of the toolkit: intervals, effect sizes, contrasts, permutation tests and Holm's correction.

Every permutation test returns one `PermutationResult`, which carries the smallest p-value its design can reach
(`min_p`): an exact test over N relabellings cannot go below 1/N, however large the effect, so a threshold below
`min_p` (for instance Holm's alpha/m) is unreachable and a report must say so. See docs/statistics.md.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
from scipy import stats as _scipy_stats


# ---- intervals and effect sizes ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Interval:
    """A point estimate with a two-sided confidence interval (low/high are nan when it cannot be computed)."""

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


def _mean_var(values: Sequence[float]) -> tuple[int, float, float]:
    a = np.asarray(values, dtype=float)
    if a.size == 0:
        raise ValueError("an effect size needs values in both groups")
    return a.size, float(a.mean()), float(a.var(ddof=1)) if a.size > 1 else math.nan


def mean_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Interval:
    """mean(a) - mean(b) with a Welch (unequal-variance) t interval; `n` is len(a) + len(b).

    With a single value in either group the variance of that group is unknown and the interval is nan.
    """
    na, ma, va = _mean_var(a)
    nb, mb, vb = _mean_var(b)
    diff = ma - mb
    se2 = va / na + vb / nb
    if math.isnan(se2):
        return Interval(diff, math.nan, math.nan, na + nb, confidence)
    if se2 == 0:
        return Interval(diff, diff, diff, na + nb, confidence)
    df = se2**2 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))
    half = _scipy_stats.t.ppf(0.5 + confidence / 2, df) * math.sqrt(se2)
    return Interval(diff, diff - half, diff + half, na + nb, confidence)


def hedges_g(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Interval:
    """Standardised mean difference (Hedges' g: pooled-SD Cohen's d with the small-sample correction).

    The interval uses the usual normal approximation of g's standard error; nan when a group has one value or
    the pooled SD is zero.
    """
    na, ma, va = _mean_var(a)
    nb, mb, vb = _mean_var(b)
    dof = na + nb - 2
    if na < 2 or nb < 2:
        return Interval(math.nan, math.nan, math.nan, na + nb, confidence)
    pooled = math.sqrt(((na - 1) * va + (nb - 1) * vb) / dof)
    if pooled == 0:
        return Interval(math.nan, math.nan, math.nan, na + nb, confidence)
    g = (1 - 3 / (4 * dof - 1)) * (ma - mb) / pooled
    se = math.sqrt((na + nb) / (na * nb) + g * g / (2 * (na + nb)))
    z = _scipy_stats.norm.ppf(0.5 + confidence / 2)
    return Interval(g, g - z * se, g + z * se, na + nb, confidence)


# ---- contrasts --------------------------------------------------------------------------------------------------
def baseline_contrast(values: np.ndarray, baseline: Sequence[bool]) -> np.ndarray:
    """values[..., w] minus the mean of values[..., v] over the baseline columns v != w (last axis).

    `baseline` marks the columns that may serve as the reference (e.g. the candidate words that are no trait of
    the experiment). With every column in the baseline this is "each word minus the mean of the others". A
    baseline column that is the only one has nothing to be compared with: its value is NaN (a two-option probe:
    the target against the other option, whose own contrast is undefined); a trait column without any baseline
    column is an error.
    """
    values = np.asarray(values, dtype=float)
    mask = np.asarray(baseline, dtype=bool)
    if mask.shape != values.shape[-1:]:
        raise ValueError(f"baseline mask has {mask.size} entries for {values.shape[-1]} columns")
    counts = mask.sum() - mask  # baseline size for each column, excluding the column itself
    if (counts[~mask] < 1).any() or not mask.any():
        raise ValueError("the baseline needs at least one column other than the one measured")
    sums = (values * mask).sum(-1, keepdims=True) - values * mask
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(counts >= 1, values - sums / np.maximum(counts, 1), np.nan)


# ---- permutation tests ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PermutationResult:
    """A one-sided permutation test: observed statistic, p-value, and the smallest p the design can reach.

    `exact`: every relabelling was enumerated (p = hits / n_permutations, min_p = 1 / n_permutations);
    otherwise `n_permutations` seeded random relabellings gave p = (1 + hits) / (1 + n), min_p = 1 / (1 + n).
    """

    statistic: float
    p_value: float
    n_permutations: int
    exact: bool
    min_p: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _tolerance(values: np.ndarray) -> float:
    # Ties count as "at least as extreme"; the tolerance keeps summation-order noise from deciding them.
    return 1e-9 * max(1.0, float(np.abs(values).sum()))


def _result(observed: float, hits: int, count: int, exact: bool) -> PermutationResult:
    if exact:
        return PermutationResult(observed, hits / count, count, True, 1 / count)
    return PermutationResult(observed, (1 + hits) / (1 + count), count, False, 1 / (1 + count))


@lru_cache(maxsize=32)
def _combinations(n: int, k: int) -> np.ndarray:
    flat = np.fromiter(itertools.chain.from_iterable(itertools.combinations(range(n), k)), dtype=np.int32)
    return flat.reshape(-1, k)


def two_sample_permutation_test(
    own: Sequence[float],
    other: Sequence[float],
    max_exact: int = 200_000,
    n_random: int = 20_000,
    seed: int = 0,
) -> PermutationResult:
    """Is mean(own) larger than mean(other)? One-sided test of exchangeable group labels.

    The statistic is mean(own) - mean(other). All C(n, k) ways to pick the `own` group are enumerated when there
    are at most `max_exact` of them; otherwise `n_random` seeded random ones are drawn.
    """
    if len(own) == 0 or len(other) == 0:
        raise ValueError("two_sample_permutation_test needs values in both groups")
    values = np.asarray([*own, *other], dtype=float)
    n, k = values.size, len(own)
    own_sum = float(values[:k].sum())
    observed = own_sum / k - (float(values.sum()) - own_sum) / (n - k)
    threshold = own_sum - _tolerance(values)  # the statistic is increasing in the own-group sum
    count = math.comb(n, k)
    if count <= max_exact:
        hits = int((values[_combinations(n, k)].sum(1) >= threshold).sum())
        return _result(observed, hits, count, exact=True)
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, n_random, 4096):
        keys = rng.random((min(4096, n_random - start), n))
        chosen = np.argpartition(keys, k - 1, axis=1)[:, :k]
        hits += int((values[chosen].sum(1) >= threshold).sum())
    return _result(observed, hits, n_random, exact=False)


def blocked_permutation_test(
    blocks: Sequence[tuple[Sequence[float], int]],
    max_exact: int = 200_000,
    n_random: int = 20_000,
    seed: int = 0,
) -> PermutationResult:
    """Seed-blocked test: mean over blocks of (own - mean of the others in the block), one-sided.

    A block is the students trained with one seed (`values`, one per teacher, and the index of the own-teacher
    student). Students of one seed see the same batches in the same order, so comparing within a block removes
    the data-order noise they share. Under the null the own label is equally likely on any student of a block;
    all prod(block sizes) labellings are enumerated when there are at most `max_exact`.
    """
    contrasts = []
    chosen = []
    for values, i in blocks:
        v = np.asarray(values, dtype=float)
        if v.size < 2:
            continue
        contrasts.append(v - (v.sum() - v) / (v.size - 1))
        chosen.append(int(i))
    if not contrasts:
        raise ValueError("blocked_permutation_test needs a block with at least two students")
    m = len(contrasts)
    observed_sum = sum(float(c[i]) for c, i in zip(contrasts, chosen, strict=True))
    threshold = observed_sum - _tolerance(np.concatenate(contrasts))
    count = math.prod(c.size for c in contrasts)
    if count <= max_exact:
        totals = np.zeros(1)
        for c in contrasts:
            totals = np.add.outer(totals, c).ravel()
        return _result(observed_sum / m, int((totals >= threshold).sum()), count, exact=True)
    rng = np.random.default_rng(seed)
    totals = sum(c[rng.integers(0, c.size, n_random)] for c in contrasts)
    return _result(observed_sum / m, int((totals >= threshold).sum()), n_random, exact=False)


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
    recomputed: all distinct arrangements when they number at most `n_permutations` (exact), otherwise
    `n_permutations` seeded random shuffles.
    """
    if len(matrix) == 0 or any(len(row) != len(matrix[0]) for row in matrix):
        raise ValueError("diagonal_permutation_test needs a non-empty rectangular matrix")
    rows = np.asarray([list(map(float, row)) for row in matrix], dtype=float)
    n_rows, n_traits = rows.shape
    labels = list(range(n_rows)) if labels is None else [int(v) for v in labels]
    if len(labels) != n_rows:
        raise ValueError(f"{len(labels)} labels for {n_rows} student rows")
    if any(not 0 <= v < n_traits for v in labels):
        raise ValueError(f"labels must index the {n_traits} trait columns, got {labels}")
    if n_traits < 2 or len(set(labels)) < 2:
        raise ValueError(
            "need at least two traits among the students' labels to compare diagonal and off-diagonal"
        )
    total, n_on = float(rows.sum()), n_rows
    n_off = rows.size - n_on
    on_sum = float(rows[np.arange(n_rows), labels].sum())
    observed = on_sum / n_on - (total - on_sum) / n_off
    threshold = on_sum - _tolerance(rows)  # the statistic is increasing in the diagonal sum
    arrangements = _count_arrangements(labels)
    index = np.arange(n_rows)
    if arrangements <= n_permutations:
        perms = np.asarray(list(_distinct_permutations(labels)))
        hits = int((rows[index, perms].sum(1) >= threshold).sum())
        return _result(observed, hits, arrangements, exact=True)
    rng = np.random.default_rng(seed)
    perms = rng.permuted(np.tile(np.asarray(labels), (n_permutations, 1)), axis=1)
    hits = int((rows[index, perms].sum(1) >= threshold).sum())
    return _result(observed, hits, n_permutations, exact=False)


def _count_arrangements(labels: Sequence[int]) -> int:
    """Number of distinct orderings of `labels` (a multinomial coefficient)."""
    count = math.factorial(len(labels))
    for label in set(labels):
        count //= math.factorial(list(labels).count(label))
    return count


def _distinct_permutations(labels: Sequence[int]) -> Iterator[list[int]]:
    """Every distinct ordering of `labels` once (labels repeat when several students share a trait)."""
    remaining = {label: list(labels).count(label) for label in sorted(set(labels))}
    current: list[int] = []

    def extend() -> Iterator[list[int]]:
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


# ---- multiple comparisons ---------------------------------------------------------------------------------------
def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order.

    Sorted ascending, the i-th smallest (0-based) is multiplied by (m - i), running maxima keep the order, and
    values are capped at 1. Rejecting every hypothesis whose adjusted p is below alpha controls the
    family-wise error rate at alpha under any dependence between the tests.
    """
    p = [float(v) for v in p_values]
    if any(not 0 <= v <= 1 for v in p):
        raise ValueError(f"p-values must lie in [0, 1], got {p}")
    m = len(p)
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda j: p[j])):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted


def holm_reachable(min_p: float, m: int, alpha: float) -> bool:
    """Can Holm over `m` tests reject anything at `alpha` when no test can go below `min_p`? (m * min_p < alpha)"""
    return m * min_p < alpha
