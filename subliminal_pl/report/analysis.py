"""The report's numbers, from the probe results and the manifest (no plotting, no markdown).

The measure: for a student, ΔlogP of a candidate word is its mean over held-out questions of log P(word) minus
the same for the student's own base under the identical question. *Specific* ΔlogP subtracts the mean ΔlogP of
the baseline words: every candidate that is NOT a trait of the experiment. (Subtracting the mean of all other
candidates, as the first version did, puts the other teachers' traits into the baseline: when they transfer,
every student outside a trait's own row is pushed down and the per-trait test becomes anti-conservative.)

Per trait b and student kind (same / cross init): own-teacher students against every other student in column b
(one-sided permutation test, the verdict's test), against the neutral-teacher students (reported), and a
seed-blocked version; Holm's correction across the traits. Trait b transferred when its Holm-adjusted same-init
p < ALPHA with a positive difference, and the cross-init control is flat (no positive effect at CONTROL_ALPHA).
See docs/statistics.md.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from subliminal_pl.probes.results import ProbeResults
from subliminal_pl.report.manifest import Manifest, StudentEntry
from subliminal_pl.stats import (
    baseline_contrast,
    blocked_permutation_test,
    diagonal_permutation_test,
    hedges_g,
    holm,
    holm_reachable,
    mean_difference,
    t_interval,
    two_sample_permutation_test,
)

ALPHA = 0.01
CONTROL_ALPHA = 0.05  # a control is judged leniently: any positive cross-init effect at 0.05 flags the trait
PAPER_JUDGE = {"model": "gpt-4o", "temperature": 1.0}


# ---- measures ---------------------------------------------------------------------------------------------------
def specific_dlogp(
    logp: list[list[float]], reference: list[list[float]], words: list[str], exclude: set[str] | None = None
) -> dict[str, float]:
    """word -> mean ΔlogP (model - reference) minus the mean ΔlogP of the baseline words.

    The baseline is every candidate not in `exclude` (pass every trait word of the experiment), the word itself
    left out. `exclude=None` gives the first version's contrast: the mean over all other candidates.
    """
    model, ref = np.asarray(logp, dtype=float), np.asarray(reference, dtype=float)
    if model.shape != ref.shape or model.ndim != 2 or model.shape[1] != len(words):
        raise ValueError(
            f"log-probability matrices of shape {model.shape} and {ref.shape} for {len(words)} candidates"
        )
    exclude = {w.lower() for w in exclude or ()}
    spec = baseline_contrast((model - ref).mean(0), [w.lower() not in exclude for w in words])
    return dict(zip(words, spec.tolist(), strict=True))


def interval(values: list[float]) -> dict[str, float]:
    iv = t_interval(values)
    return {"mean": iv.mean, "low": iv.low, "high": iv.high, "n": iv.n}


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values) if values else float("nan")


# ---- per-trait tests --------------------------------------------------------------------------------------------
def trait_test(group: list[dict[str, Any]], trait: str, neutral: str | None) -> dict[str, Any] | None:
    """Own-teacher students vs every other student of `group` in the trait's column (None if a side is empty)."""
    own = [s["specific"][trait] for s in group if s["teacher"] == trait]
    other = [s["specific"][trait] for s in group if s["teacher"] != trait]
    if not own or not other:
        return None
    perm = two_sample_permutation_test(own, other)
    test = {
        "own": interval(own),
        "other": interval(other),
        "difference": perm.statistic,
        "effect": mean_difference(own, other).to_dict(),
        "hedges_g": hedges_g(own, other).to_dict(),
        "p_value": perm.p_value,
        "min_p": perm.min_p,
        "relabellings": perm.n_permutations,
        "exact": perm.exact,
        "own_values": own,
    }
    neutral_values = [s["specific"][trait] for s in group if neutral and s["teacher"] == neutral]
    if neutral_values:
        vs = two_sample_permutation_test(own, neutral_values)
        test["vs_neutral"] = {
            "neutral": interval(neutral_values),
            "effect": mean_difference(own, neutral_values).to_dict(),
            "p_value": vs.p_value,
            "min_p": vs.min_p,
        }
    blocks, paired = seed_blocks(group, trait)
    if blocks:
        by_seed = blocked_permutation_test(blocks)
        test["by_seed"] = {
            "difference": by_seed.statistic,
            "interval": interval(paired),
            "p_value": by_seed.p_value,
            "min_p": by_seed.min_p,
        }
    return test


def seed_blocks(group: list[dict[str, Any]], trait: str) -> tuple[list[tuple[list[float], int]], list[float]]:
    """Blocks of students sharing a seed that hold one own-teacher student and others, with the per-seed
    differences own - mean(others) (for the interval)."""
    blocks, paired = [], []
    for seed in sorted({s["seed"] for s in group}):
        members = [s for s in group if s["seed"] == seed]
        own = [i for i, s in enumerate(members) if s["teacher"] == trait]
        if len(own) != 1 or len(members) < 2:
            continue
        values = [s["specific"][trait] for s in members]
        blocks.append((values, own[0]))
        paired.append(values[own[0]] - (math.fsum(values) - values[own[0]]) / (len(values) - 1))
    return blocks, paired


def _kind(group: list[dict[str, Any]], manifest: Manifest, traits: list[str], alpha: float) -> dict[str, Any]:
    teachers = [t for t in manifest.trait_teachers if any(s["teacher"] == t for s in group)]
    matrix = {
        a: {b: _mean([s["specific"][b] for s in group if s["teacher"] == a]) for b in traits}
        for a in teachers
    }
    tests = {b: t for b in traits if (t := trait_test(group, b, manifest.neutral))}
    for b, adjusted in zip(tests, holm([t["p_value"] for t in tests.values()]), strict=True):
        tests[b]["p_holm"] = adjusted
    min_p = min((t["min_p"] for t in tests.values()), default=float("nan"))
    rows = [s for s in group if s["teacher"] in traits]
    whole = None
    if len({s["teacher"] for s in rows}) >= 2 and len(traits) >= 2:
        whole = diagonal_permutation_test(
            [[s["specific"][b] for b in traits] for s in rows], [traits.index(s["teacher"]) for s in rows]
        ).to_dict()
    return {
        "teachers": teachers,
        "traits": traits,
        "matrix": matrix,
        "tests": tests,
        "design": {
            "tests": len(tests),
            "min_p": min_p,
            "holm_threshold": alpha / max(1, len(tests)),
            "holm_reachable": bool(tests) and holm_reachable(min_p, len(tests), alpha),
        },
        "global": whole,
        "students": [
            {k: s[k] for k in ("name", "teacher", "base", "seed")}
            | {"specific": {b: s["specific"][b] for b in traits}}
            for s in group
        ],
    }


def verdicts(
    analysis: dict[str, Any], traits: list[str], alpha: float = ALPHA, control_alpha: float = CONTROL_ALPHA
) -> dict[str, dict[str, Any]]:
    """Per trait: transferred (same-init Holm-adjusted p < alpha, positive) and whether the cross-init control
    stayed flat (no positive effect at `control_alpha`; None when there is no control or it cannot reach it)."""
    same = analysis["kinds"].get("same", {}).get("tests", {})
    cross = analysis["kinds"].get("cross", {}).get("tests", {})
    out = {}
    for b in traits:
        s, c = same.get(b), cross.get(b)
        transferred = bool(s and s.get("p_holm", s["p_value"]) < alpha and s["difference"] > 0)
        if c is None or c.get("min_p", 0.0) >= control_alpha:
            cross_flat = None
        else:
            cross_flat = not (c["p_value"] < control_alpha and c["difference"] > 0)
        if s is None:
            text = "not tested (no own-teacher or no other same-init students measured on it)"
        elif transferred and cross_flat is False:
            text = "moved in same-init AND cross-init students (not specific to the shared init)"
        elif transferred:
            text = "transferred" + (" (no usable cross-init control)" if cross_flat is None else "")
        elif s["min_p"] * max(1, len(same)) >= alpha:
            text = "did not transfer (the design cannot reach the Holm threshold)"
        else:
            text = "did not transfer"
        out[b] = {"transferred": transferred, "cross_init_flat": cross_flat, "verdict": text}
    return out


# ---- other views ------------------------------------------------------------------------------------------------
def drift(students: list[dict[str, Any]], traits: list[str]) -> dict[str, dict[str, Any]]:
    """Per trait: mean specific ΔlogP over all students (same and cross init), over the students of other
    teachers, and over the own-teacher same-init students. A trait that rises in students that never saw its
    teacher is drift (flagged when that mean's 95% interval lies above zero), not transfer."""
    out = {}
    for b in traits:
        every = [s["specific"][b] for s in students]
        others = [s["specific"][b] for s in students if s["teacher"] != b]
        own = [s["specific"][b] for s in students if s["teacher"] == b and s["kind"] == "same"]
        cross = [s["specific"][b] for s in students if s["kind"] == "cross"]
        row = {
            k: interval(v) if v else None
            for k, v in (("all", every), ("others", others), ("own_same", own), ("cross", cross))
        }
        row["drift"] = bool(row["others"] and row["others"]["n"] > 1 and row["others"]["low"] > 0)
        out[b] = row
    return out


def models_table(
    manifest: Manifest, probes: ProbeResults, words: list[str], context: str | None
) -> list[dict[str, Any]]:
    """One row per base, teacher and other non-student model: own-trait ΔlogP vs the base, sampled rates with
    their intervals, and the number-format pass rate."""
    base = manifest.bases.same
    roles: dict[str, tuple[str, str | None]] = {base: ("base (shared init)", None)}
    roles |= {b: ("cross-init base (control)", None) for b in manifest.bases.cross}
    order = {t: i for i, t in enumerate(manifest.trait_teachers)}
    for teacher, model in sorted(manifest.teachers.items(), key=lambda tm: order.get(tm[0], len(order))):
        role = "neutral teacher" if teacher == manifest.neutral else f"teacher ({teacher})"
        roles[model] = (role, teacher if teacher in manifest.traits else None)
    students = {s.name for s in manifest.students}
    roles |= {m: ("other", None) for m in probes.models if m not in roles and m not in students}
    exclude = set(manifest.traits)
    base_rate = probes.models[base].format_pass_rate if base in probes.models else None
    rows = []
    for model, (role, trait) in roles.items():
        entry = probes.models.get(model)
        row: dict[str, Any] = {"model": model, "role": role, "trait": trait, "probed": entry is not None}
        if entry is None:
            rows.append(row)
            continue
        measured = context in entry.logp_outputs() and base in probes.models and trait in words
        if measured and model != base:
            logp = probes.logp(model, context)
            row["specific_dlogp_own"] = specific_dlogp(logp, probes.logp(base, context), words, exclude)[
                trait
            ]
            row["prob_own"] = float(np.exp(np.asarray(logp)[:, words.index(trait)]).mean())
        rate = entry.format_pass_rate
        row["format_pass_rate"] = rate
        row["format_relative"] = rate / base_rate if rate is not None and base_rate else None
        row["rates"] = {
            probe: {w: {k: v[k] for k in ("rate", "low", "high") if k in v} for w, v in targets.items()}
            for probe, targets in entry.rates().items()
        }
        rows.append(row)
    return rows


def student_rates(manifest: Manifest, probes: ProbeResults) -> list[dict[str, Any]]:
    """Sampled rates of the students, per (kind, teacher): mean over students with a t interval."""
    groups: dict[tuple[str, str], dict[str, dict[str, list[float]]]] = {}
    for s in manifest.students:
        entry = probes.models.get(s.name)
        for probe, targets in (entry.rates() if entry else {}).items():
            for word, v in targets.items():
                if "rate" in v:
                    cell = groups.setdefault((s.kind, s.teacher), {}).setdefault(f"{probe}: {word}", [])
                    cell.append(float(v["rate"]))
    return [
        {"kind": kind, "teacher": teacher, "rates": {k: interval(v) for k, v in cells.items()}}
        for (kind, teacher), cells in groups.items()
    ]


def judges(probes: ProbeResults) -> list[dict[str, Any]]:
    """Judge settings found in any probe output's details (`judge`: {model, temperature, ...}), one row per
    distinct (probe, settings), with the keys that differ from the paper's judge (GPT-4o at T=1)."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for model, entry in probes.models.items():
        for probe, out in entry.outputs.items():
            settings = out.get("details", {}).get("judge")
            if not isinstance(settings, dict):
                continue
            key = (probe, repr(sorted(settings.items())))
            row = seen.setdefault(key, {"probe": probe, "settings": settings, "models": []})
            row["models"].append(model)
    for row in seen.values():
        s = row["settings"]
        row["differs"] = [
            k
            for k, v in PAPER_JUDGE.items()
            if k in s and (str(s[k]).lower() != str(v).lower() if k == "model" else float(s[k]) != v)
        ]
    return list(seen.values())


# ---- everything -------------------------------------------------------------------------------------------------
def _student_row(s: StudentEntry, specific: dict[str, float]) -> dict[str, Any]:
    return {
        "name": s.name,
        "teacher": s.teacher,
        "base": s.base,
        "kind": s.kind,
        "seed": s.seed,
        "specific": specific,
    }


def analyse(
    manifest: Manifest, probes: ProbeResults, context: str = "plain", alpha: float = ALPHA
) -> dict[str, Any]:
    """Matrices, per-trait tests, verdicts and the drift view in one probe context (see the module docstring)."""
    words = [w.lower() for w in probes.candidates]
    traits = [t for t in manifest.traits if t in words]
    exclude = set(manifest.traits)
    students = [
        _student_row(
            s, specific_dlogp(probes.logp(s.name, context), probes.logp(s.base, context), words, exclude)
        )
        for s in manifest.students
    ]
    measures = {d.get("measure") for e in probes.models.values() if (d := e.logp_outputs().get(context))}
    out: dict[str, Any] = {
        "context": context,
        "measure": sorted(m for m in measures if m) or None,
        "untested_traits": [t for t in manifest.traits if t not in words],
        "baseline_words": [w for w in words if w not in exclude],
        "kinds": {},
    }
    for kind in ("same", "cross"):
        group = [s for s in students if s["kind"] == kind]
        if group:
            out["kinds"][kind] = _kind(group, manifest, traits, alpha)
    out["verdicts"] = verdicts(out, traits, alpha)
    out["drift"] = drift(students, traits)
    return out
