"""The statistics API: intervals, effect sizes, contrasts, permutation tests, Holm, and the per-trait test's
false-positive rate in simulation (docs/statistics.md)."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from subliminal_pl.stats import (
    PermutationResult,
    baseline_contrast,
    blocked_permutation_test,
    diagonal_permutation_test,
    hedges_g,
    holm,
    holm_reachable,
    mean_difference,
    paired_difference,
    t_interval,
    two_sample_permutation_test,
    wilson_interval,
)


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
    assert result.exact and result.n_permutations == 24 and result.min_p == pytest.approx(1 / 24)
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
    assert not first.exact and first.p_value == pytest.approx(1 / 2001) == first.min_p
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


# ---- two-sample and seed-blocked tests ------------------------------------------------------------------------
def test_two_sample_permutation_test_is_exact():
    result = two_sample_permutation_test([3.0, 2.0], [0.0, 1.0, -1.0, 0.5])
    assert result.exact and result.n_permutations == math.comb(6, 2) and result.min_p == pytest.approx(1 / 15)
    assert result.statistic == pytest.approx(2.5 - 0.125)
    assert result.p_value == pytest.approx(1 / 15)  # the observed split is the most extreme of 15
    assert two_sample_permutation_test([0.0, 1.0], [0.0, 1.0, 0.0, 1.0]).p_value > 0.5
    # Ties count as extreme: equal values in both groups give p = 1.
    assert two_sample_permutation_test([1.0, 1.0], [1.0, 1.0, 1.0]).p_value == 1.0
    with pytest.raises(ValueError, match="both groups"):
        two_sample_permutation_test([], [1.0])


def test_two_sample_random_branch_agrees_with_enumeration():
    rng = random.Random(3)
    own = [rng.gauss(0.8, 1) for _ in range(5)]
    other = [rng.gauss(0, 1) for _ in range(15)]
    exact = two_sample_permutation_test(own, other)  # C(20, 5) = 15504 relabellings
    drawn = two_sample_permutation_test(own, other, max_exact=1000, n_random=5000, seed=1)
    assert exact.exact and exact.n_permutations == 15504
    assert not drawn.exact and drawn.min_p == pytest.approx(1 / 5001)
    assert drawn.p_value == pytest.approx(exact.p_value, abs=0.015)
    assert drawn == two_sample_permutation_test(own, other, max_exact=1000, n_random=5000, seed=1)


def test_blocked_permutation_test_relabels_within_each_seed():
    # Each seed shifts every student alike (shared batches); within a seed the own student is highest.
    blocks = [([5.0, 4.0, 4.1], 0), ([-3.0, -4.0, -3.9], 0), ([0.5, -0.6, -0.4], 0)]
    result = blocked_permutation_test(blocks)
    assert result.exact and result.n_permutations == 27 and result.p_value == pytest.approx(1 / 27)
    assert result.statistic == pytest.approx(((5 - 4.05) + (-3 + 3.95) + (0.5 + 0.5)) / 3)
    # Pooled, the seed shifts swamp the same contrast.
    assert two_sample_permutation_test([5.0, -3.0, 0.5], [4.0, 4.1, -4.0, -3.9, -0.6, -0.4]).p_value > 0.2
    assert blocked_permutation_test([(v, 1) for v, _ in blocks]).p_value > 0.9
    drawn = blocked_permutation_test(blocks, max_exact=10, n_random=3000, seed=0)
    assert not drawn.exact and drawn.p_value == pytest.approx(1 / 27, abs=0.015)


# ---- effect sizes, contrasts, Holm ----------------------------------------------------------------------------
def test_mean_difference_is_welch_and_hedges_g_is_standardised():
    a, b = [1.0, 2.0, 3.0, 4.0], [0.0, 0.5, 1.0]
    diff = mean_difference(a, b)
    se = math.sqrt(np.var(a, ddof=1) / 4 + np.var(b, ddof=1) / 3)
    assert diff.mean == pytest.approx(2.5 - 0.5) and diff.n == 7
    df = se**4 / ((np.var(a, ddof=1) / 4) ** 2 / 3 + (np.var(b, ddof=1) / 3) ** 2 / 2)
    from scipy import stats as st

    assert diff.high - diff.mean == pytest.approx(st.t.ppf(0.975, df) * se)
    assert math.isnan(mean_difference([1.0], [2.0]).low)  # one value per group: no variance, no interval
    pooled = math.sqrt((3 * np.var(a, ddof=1) + 2 * np.var(b, ddof=1)) / 5)
    g = hedges_g(a, b)
    assert g.mean == pytest.approx((1 - 3 / 19) * 2.0 / pooled)
    assert g.low < g.mean < g.high and hedges_g(b, a).mean == pytest.approx(-g.mean)


def test_baseline_contrast_leaves_out_excluded_columns():
    values = np.array([[1.0, 3.0, 0.0, 2.0], [4.0, 4.0, 4.0, 4.0]])
    every = baseline_contrast(values, [True] * 4)
    assert every[0, 0] == pytest.approx(1.0 - 5 / 3) and every[1].tolist() == [0.0] * 4
    partial = baseline_contrast(values, [False, False, True, True])  # columns 0, 1 are traits
    assert partial[0].tolist() == pytest.approx([1.0 - 1.0, 3.0 - 1.0, 0.0 - 2.0, 2.0 - 0.0])
    # A lone baseline column has nothing to be compared with (NaN); the trait columns still have it.
    lone = baseline_contrast(values, [False, False, False, True])
    assert lone[0, :3].tolist() == [1.0 - 2.0, 3.0 - 2.0, 0.0 - 2.0] and np.isnan(lone[:, 3]).all()
    with pytest.raises(ValueError, match="at least one column"):
        baseline_contrast(values, [False] * 4)
    with pytest.raises(ValueError, match="3 entries for 4"):
        baseline_contrast(values, [True] * 3)


def test_holm_step_down():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped, and monotone in the raw p
    assert holm([]) == []
    with pytest.raises(ValueError, match="p-values"):
        holm([1.5])
    # 3 seeds x 5 teachers: C(15, 3) = 455 relabellings cannot pass Holm over 5 traits at 0.01; 4 seeds can.
    assert not holm_reachable(1 / math.comb(15, 3), 5, 0.01)
    assert holm_reachable(1 / math.comb(20, 4), 4, 0.01) and holm_reachable(1 / math.comb(24, 4), 5, 0.01)


def test_permutation_result_round_trips():
    r = PermutationResult(0.5, 0.01, 100, True, 0.01)
    assert PermutationResult(**r.to_dict()) == r


# ---- the per-trait test in simulation -------------------------------------------------------------------------
N_WORDS, N_TRAITS, SEEDS, SHIFT, SIGMA = 24, 4, 4, 0.6, 0.025


def _simulate(runs: int, transfer: list[bool], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """ΔlogP of 5 teachers x 4 seeds students on 24 candidates (words 0-3 are the traits, teacher 4 is neutral).

    Noise per cell, a shift per student (uniform drift) and per word (column drift); a transferring trait
    raises its word's logit by SHIFT in its own students, and the softmax pushes every other word down alike.
    Returns the students' teachers and ΔlogP[run, student, word].
    """
    rng = np.random.default_rng(seed)
    teachers = np.repeat(np.arange(N_TRAITS + 1), SEEDS)
    delta = SIGMA * rng.standard_normal((runs, teachers.size, N_WORDS))
    delta += rng.normal(0, 0.3, (runs, teachers.size, 1)) + rng.normal(0, 0.1, (runs, 1, N_WORDS))
    push = np.log1p(np.expm1(SHIFT) / N_WORDS)  # log-softmax change of the other words, base P = 1/24
    for s, t in enumerate(teachers):
        if t < N_TRAITS and transfer[t]:
            delta[:, s] -= push
            delta[:, s, t] += SHIFT
    return teachers, delta


def _p_values(teachers: np.ndarray, delta: np.ndarray, trait: int, old: bool) -> np.ndarray:
    baseline = np.ones(N_WORDS, bool) if old else np.arange(N_WORDS) >= N_TRAITS
    spec = baseline_contrast(delta, baseline)[..., trait]
    own, other = teachers == trait, teachers != trait
    return np.array([two_sample_permutation_test(row[own], row[other]).p_value for row in spec])


def test_per_trait_test_holds_its_level_when_the_other_traits_transfer():
    teachers, delta = _simulate(1000, [False, True, True, True], seed=0)
    new = _p_values(teachers, delta, trait=0, old=False)
    assert (new < 0.01).mean() < 0.02
    # The first version's contrast (baseline = all other candidates) fails the same bound: the other traits'
    # students are pushed down by SHIFT / 23 in the null trait's column.
    assert (_p_values(teachers, delta, trait=0, old=True) < 0.01).mean() > 0.05
    # ...and the corrected test still finds the transferring traits.
    assert (_p_values(teachers, delta[:50], trait=1, old=False) < 0.01).all()


def test_per_trait_test_holds_its_level_when_no_trait_transfers():
    teachers, delta = _simulate(1000, [False] * N_TRAITS, seed=1)
    p = np.stack([_p_values(teachers, delta, trait=b, old=False) for b in range(N_TRAITS)], axis=1)
    assert (p < 0.01).mean() < 0.02
    assert np.mean([min(holm(row)) < 0.01 for row in p]) < 0.02  # family-wise, with Holm over the 4 traits
    assert (_p_values(teachers, delta, trait=0, old=True) < 0.01).mean() < 0.02
