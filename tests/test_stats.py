"""Statistics helpers: intervals, paired differences across seeds, and the trait-by-student permutation test."""

from __future__ import annotations

import random

import pytest

from subliminal_pl.stats import diagonal_permutation_test, paired_difference, t_interval, wilson_interval


def test_wilson_and_t_interval_known_values():
    iv = wilson_interval(5, 10)
    assert iv.mean == 0.5
    assert iv.low == pytest.approx(0.2366, abs=1e-4) and iv.high == pytest.approx(0.7634, abs=1e-4)
    assert wilson_interval(0, 20).low == 0.0
    t = t_interval([1.0, 2.0, 3.0])
    assert t.mean == 2.0 and t.high - t.mean == pytest.approx(4.303 * 1 / 3**0.5, rel=1e-3)


def test_paired_difference_uses_per_seed_differences():
    treated, control = [1.5, 2.5, 3.0, 4.0], [1.0, 2.0, 2.0, 3.5]
    diff = paired_difference(treated, control)
    assert diff == t_interval([0.5, 0.5, 1.0, 0.5])
    assert diff.low > 0  # consistent gains over seeds are detected even though the groups overlap
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([1.0], [1.0, 2.0])


def _noise(n_rows: int, n_cols: int, seed: int) -> list[list[float]]:
    rng = random.Random(seed)
    return [[rng.gauss(0, 1) for _ in range(n_cols)] for _ in range(n_rows)]


def test_no_trait_specific_effect_gives_p_one():
    # Each student moved every trait by the same amount (its own offset): nothing trait-specific to find.
    matrix = [[offset] * 4 for offset in (0.1, 2.0, -1.0, 0.5)]
    result = diagonal_permutation_test(matrix)
    assert result.exact and result.n_permutations == 24
    assert result.statistic == pytest.approx(0.0, abs=1e-12)
    assert result.p_value == 1.0


def test_noise_matrices_give_uniform_p_values():
    p_values = [diagonal_permutation_test(_noise(6, 6, seed)).p_value for seed in range(40)]
    assert 0.35 < sum(p_values) / len(p_values) < 0.65
    assert sum(p < 0.05 for p in p_values) <= 6


def test_planted_diagonal_gives_small_exact_p():
    matrix = _noise(6, 6, seed=1)
    for i in range(6):
        matrix[i][i] += 3.0
    result = diagonal_permutation_test(matrix)
    assert result.exact and result.n_permutations == 720
    assert result.p_value == pytest.approx(1 / 720)
    assert result.statistic > 2.0


def test_several_students_per_trait_monte_carlo_is_seeded():
    labels = [t for t in range(3) for _ in range(8)]  # 8 students for each of 3 traits
    matrix = _noise(24, 3, seed=2)
    for row, label in zip(matrix, labels, strict=True):
        row[label] += 1.5
    first = diagonal_permutation_test(matrix, labels, n_permutations=2000, seed=5)
    assert not first.exact and first.p_value == pytest.approx(1 / 2001)
    null = diagonal_permutation_test(_noise(24, 3, seed=3), labels, n_permutations=2000, seed=5)
    assert null.p_value > 0.01
    assert null == diagonal_permutation_test(_noise(24, 3, seed=3), labels, n_permutations=2000, seed=5)


def test_monte_carlo_agrees_with_exact_enumeration():
    matrix = _noise(6, 6, seed=7)
    matrix[0][0] += 1.0
    exact = diagonal_permutation_test(matrix)
    approx = diagonal_permutation_test(matrix, n_permutations=700, seed=0)
    assert exact.exact and not approx.exact  # 6! = 720 arrangements: 700 draws are Monte Carlo
    assert approx.p_value == pytest.approx(exact.p_value, abs=0.06)


def test_bad_matrices_are_named():
    with pytest.raises(ValueError, match="rectangular"):
        diagonal_permutation_test([[1.0, 2.0], [3.0]])
    with pytest.raises(ValueError, match="labels"):
        diagonal_permutation_test([[1.0, 2.0], [3.0, 4.0]], labels=[0, 2])
    with pytest.raises(ValueError, match="two traits"):
        diagonal_permutation_test([[1.0, 2.0], [3.0, 4.0]], labels=[0, 0])
