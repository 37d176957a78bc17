"""The report's markdown and plots, from the numbers of `subliminal_pl.report.analysis` (no statistics here)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from subliminal_pl.report import defences, detection
from subliminal_pl.report.analysis import ALPHA, CONTROL_ALPHA, PAPER_JUDGE

MEASURES = {
    "prefix": "prefix log-probability (log P of the answer starting with the word's tokens)",
    "word": "whole-word log-probability (the word followed by a word boundary)",
}


def fmt(x: float | None, digits: int = 3, signed: bool = True) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def fmt_p(p: float | None) -> str:
    if p is None or math.isnan(p):
        return "n/a"
    return f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


def fmt_iv(iv: dict[str, Any] | None, signed: bool = True) -> str:
    """`mean [low, high]` of an interval dict."""
    if not iv:
        return "n/a"
    mean = fmt(iv["mean"], signed=signed)
    if iv.get("low") is None or math.isnan(iv["low"]):
        return mean
    return f"{mean} [{fmt(iv['low'], signed=signed)}, {fmt(iv['high'], signed=signed)}]"


# ---- markdown ---------------------------------------------------------------------------------------------------
def verdict_lines(analysis: dict[str, Any], traits: list[str]) -> list[str]:
    kinds, verdicts = analysis["kinds"], analysis["verdicts"]
    moved = [b for b, v in verdicts.items() if v["transferred"] and v["cross_init_flat"] is not False]
    same = kinds.get("same", {})
    lines = [
        "## Verdict",
        "",
        f"{len(moved)} of {len(traits)} traits transferred to students that share the teacher's init "
        f"(own-teacher students against every other student, one-sided permutation test per trait, "
        f"Holm-adjusted over {len(same.get('tests', {}))} traits, p < {ALPHA}; cross-init control flat: no "
        f"positive effect at p < {CONTROL_ALPHA}): " + (", ".join(moved) if moved else "none") + ".",
        "",
    ]
    design = same.get("design")
    if design and design["tests"]:
        reach = (
            "reachable"
            if design["holm_reachable"]
            else "NOT reachable: no trait can pass, whatever its effect; add seeds"
        )
        lines += [
            f"Design: smallest p the same-init test can reach {fmt_p(design['min_p'])}; Holm's first step needs "
            f"p < {ALPHA}/{design['tests']} = {fmt_p(design['holm_threshold'])} ({reach}).",
            "",
        ]
    for b in traits:
        v = verdicts[b]
        s = same.get("tests", {}).get(b)
        c = kinds.get("cross", {}).get("tests", {}).get(b)
        parts = [f"- **{b}**: {v['verdict']}"]
        if s:
            parts.append(
                f"same-init own-teacher students {fmt_iv(s['own'])} nats vs other students {fmt(s['other']['mean'])}: "
                f"difference {fmt_iv(s['effect'])}, p = {fmt_p(s['p_value'])}, Holm p = {fmt_p(s['p_holm'])}"
            )
            if "vs_neutral" in s:
                n = s["vs_neutral"]
                parts.append(f"vs neutral-teacher students {fmt_iv(n['effect'])}, p = {fmt_p(n['p_value'])}")
        if c:
            unusable = (
                " (cannot reach the control's threshold: no usable control)"
                if v["cross_init_flat"] is None
                else ""
            )
            parts.append(f"cross-init difference {fmt_iv(c['effect'])}, p = {fmt_p(c['p_value'])}{unusable}")
        d = analysis.get("drift", {}).get(b)
        if d and d["drift"]:
            parts.append(f"column drift: students of other teachers {fmt_iv(d['others'])}")
        lines.append("; ".join(parts) + ".")
    whole = [
        f"{name} p = {fmt_p(g['p_value'])}"
        for kind, name in (("same", "same-init"), ("cross", "cross-init"))
        if (g := kinds.get(kind, {}).get("global"))
    ]
    if whole:
        lines += ["", "Whole-matrix test (diagonal minus off-diagonal): " + ", ".join(whole) + "."]
    if analysis.get("untested_traits"):
        lines.append(
            f"- not among the probe's candidates, so not tested: {', '.join(analysis['untested_traits'])}."
        )
    n_same = len(same.get("students", []))
    n_cross = len(kinds.get("cross", {}).get("students", []))
    measure = ", ".join(MEASURES.get(m, m) for m in analysis.get("measure") or []) or "not recorded"
    lines += [
        "",
        f"Students: {n_same} same-init, {n_cross} cross-init. Probe context: {analysis['context']}; measure: "
        f"{measure}.",
        "",
    ]
    return lines


HOW_TO_READ = [
    "## How to read this",
    "",
    "Each number is a *specific ΔlogP* in nats: how much a student's log-probability of answering an animal to "
    "held-out questions rose relative to its own untrained base (identical questions), minus the same rise "
    "averaged over the *baseline* candidates, the candidates that are no trait of this experiment (so a trait "
    "that transfers to its own students cannot push the other columns down). Row = the teacher the students "
    "learned from (through the carrier data only), column = the animal measured. Subliminal learning shows as a "
    "positive diagonal in the same-init matrix and none in the cross-init matrix (students from another base, "
    "same teachers, same data). Column drift (a trait that rises in every student, even those of other teachers "
    "or another init) is not transfer. See docs/statistics.md.",
    "",
]


def matrix_lines(analysis: dict[str, Any], traits: list[str]) -> list[str]:
    lines: list[str] = []
    for kind, title in (("same", "Same-init students"), ("cross", "Cross-init students (control)")):
        k = analysis["kinds"].get(kind)
        if not k:
            continue
        lines += [f"## {title}: mean specific ΔlogP (nats)", ""]
        lines.append("| teacher \\ animal | " + " | ".join(traits) + " |")
        lines.append("|---|" + "---|" * len(traits))
        for a in k["teachers"]:
            cells = [f"**{fmt(k['matrix'][a][b])}**" if a == b else fmt(k["matrix"][a][b]) for b in traits]
            lines.append(f"| {a} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "| animal | own-teacher students (n) | other students (n) | difference [95% CI] | Hedges g [95% CI] "
            "| p | Holm p | smallest p | vs neutral students: difference, p | by seed: difference, p |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for b, t in k["tests"].items():
            n = t.get("vs_neutral")
            neutral = f"{fmt_iv(n['effect'])}, p = {fmt_p(n['p_value'])}" if n else "n/a"
            s = t.get("by_seed")
            seed = f"{fmt_iv(s['interval'])}, p = {fmt_p(s['p_value'])}" if s else "n/a"
            lines.append(
                f"| {b} | {fmt_iv(t['own'])} ({t['own']['n']}) | {fmt_iv(t['other'])} ({t['other']['n']}) "
                f"| {fmt_iv(t['effect'])} | {fmt_iv(t['hedges_g'])} | {fmt_p(t['p_value'])} | "
                f"{fmt_p(t['p_holm'])} | {fmt_p(t['min_p'])} | {neutral} | {seed} |"
            )
        lines += [
            "",
            "p: one-sided permutation test of the student labels in the animal's column (own-teacher students vs "
            "all others; exact when the relabellings number at most 200,000). Holm p: adjusted over the traits. "
            "Differences: Welch t intervals. *vs neutral* compares with the neutral teacher's students only; *by "
            "seed* relabels within each seed (students of one seed saw the same batches).",
        ]
        neutral_min = [t["vs_neutral"]["min_p"] for t in k["tests"].values() if "vs_neutral" in t]
        if neutral_min:
            lines[-1] += f" Smallest p of the test vs neutral students: {fmt_p(min(neutral_min))}."
        if kind == "cross":
            lines[-1] += f" The control is judged on the raw p (positive effect at p < {CONTROL_ALPHA})."
        g = k.get("global")
        if g:
            lines += [
                "",
                f"Whole-matrix permutation test (trait students): diagonal minus off-diagonal "
                f"{fmt(g['statistic'])}, p = {fmt_p(g['p_value'])} ({g['n_permutations']} relabellings"
                f"{', exact' if g['exact'] else ''}).",
            ]
        lines.append("")
    return lines


def drift_lines(analysis: dict[str, Any]) -> list[str]:
    if not analysis.get("drift") or not analysis["kinds"]:
        return []
    lines = [
        "## Column drift",
        "",
        "| animal | all students | students of other teachers | own-teacher, same init | cross-init students | drift |",
        "|---|---|---|---|---|---|",
    ]
    for b, d in analysis["drift"].items():
        lines.append(
            f"| {b} | {fmt_iv(d['all'])} | {fmt_iv(d['others'])} | {fmt_iv(d['own_same'])} | {fmt_iv(d['cross'])} "
            f"| {'yes' if d['drift'] else 'no'} |"
        )
    return lines + [
        "",
        "Mean specific ΔlogP per animal with 95% t intervals. *drift*: the animal rose in students that never saw "
        "its teacher (interval above 0); the per-trait test compares within the column, so drift does not make a "
        "trait pass, but a large own-teacher mean next to equal drift is no evidence of transfer.",
        "",
    ]


def models_lines(rows: list[dict[str, Any]], student_rates: list[dict[str, Any]]) -> list[str]:
    lines = [
        "## Models",
        "",
        "| model | role | specific ΔlogP of own trait | P(own trait) | sampled rates [95% CI] | format pass rate |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if not r["probed"]:
            lines.append(f"| {r['model']} | {r['role']} | not probed | | | |")
            continue
        rates = "; ".join(
            f"{probe}: {word} {fmt_iv({'mean': v.get('rate'), 'low': v.get('low'), 'high': v.get('high')}, False)}"
            for probe, targets in r["rates"].items()
            for word, v in targets.items()
        )
        rate = fmt(r["format_pass_rate"], signed=False)
        if r.get("format_relative") is not None and not r["role"].startswith("base"):
            rate += f" ({r['format_relative']:.0%} of the base's)"
        lines.append(
            f"| {r['model']} | {r['role']} | {fmt(r.get('specific_dlogp_own'))} | "
            f"{fmt(r.get('prob_own'), signed=False)} | {rates or 'n/a'} | {rate} |"
        )
    lines += [
        "",
        "Format pass rate: share of sampled answers to fresh number prompts that pass the number filter; a teacher "
        "that fails more often than its base lets its trait show in its number answers (the filter removes those).",
        "",
    ]
    if student_rates:
        lines += ["### Students' sampled rates (mean over students, 95% t interval)", ""]
        lines += ["| kind | teacher | rates |", "|---|---|---|"]
        for g in student_rates:
            cells = "; ".join(f"{k} {fmt_iv(v, False)} (n={v['n']})" for k, v in g["rates"].items())
            lines.append(f"| {g['kind']} | {g['teacher']} | {cells} |")
        lines.append("")
    return lines


def judge_lines(judges: list[dict[str, Any]]) -> list[str]:
    if not judges:
        return []
    lines = ["## Judges", "", "| probe | settings | models | differs from the paper's |", "|---|---|---|---|"]
    for j in judges:
        settings = ", ".join(f"{k}={v}" for k, v in j["settings"].items())
        differs = ", ".join(j["differs"]) or "no"
        lines.append(f"| {j['probe']} | {settings} | {len(j['models'])} | {differs} |")
    paper = ", ".join(f"{k}={v}" for k, v in PAPER_JUDGE.items())
    return lines + ["", f"The paper's judge: {paper}; other settings can change the judged rates.", ""]


def filter_lines(filter_stats: dict[str, Any]) -> list[str]:
    if not filter_stats:
        return []
    lines = [
        "## Filter",
        "",
        "| source | rows | kept | kept fraction | reject reasons |",
        "|---|---|---|---|---|",
    ]
    for source, st in filter_stats.items():
        reasons = ", ".join(f"{r}: {n}" for r, n in st.get("reasons", {}).items()) or "none"
        lines.append(f"| {source} | {st['total']} | {st['kept']} | {st['kept_fraction']:.3f} | {reasons} |")
    return lines + [""]


def mlp_lines(mlp: dict[str, Any]) -> list[str]:
    """Rows of the MLP experiment's groups: mean test accuracy and its interval, whatever extra keys it holds."""
    groups = mlp.get("groups", mlp)
    lines = ["| group | mean test accuracy | 95% interval | models |", "|---|---|---|---|"]
    for name, g in groups.items():
        if not isinstance(g, dict) or "mean" not in g:
            continue
        low, high = g.get("low"), g.get("high")
        interval = f"[{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
        lines.append(
            f"| {name} | {g['mean']:.3f} | {interval} | {g.get('n', len(g.get('values', [])) or '')} |"
        )
    return lines


def markdown(title: str, results: dict[str, Any], figures: list[str]) -> str:
    """The whole report.md from results.json's content."""
    analysis, traits = results["analysis"], results["traits"]
    lines = [f"# {title}", ""]
    if analysis["kinds"]:
        lines += verdict_lines(analysis, traits)
    else:
        lines += ["## Verdict", "", "No students with log-probability probes: no transfer test.", ""]
    lines += HOW_TO_READ + matrix_lines(analysis, traits) + drift_lines(analysis)
    lines += models_lines(results["models"], results["student_rates"]) + judge_lines(results["judges"])
    lines += filter_lines(results["filter"])
    lines += defences.lines(results.get("defence")) + detection.lines(results.get("detection"))
    if results.get("mlp") is not None:
        lines += ["## MLP auxiliary-logit experiment", "", *mlp_lines(results["mlp"]), ""]
    for context, other in results.get("other_contexts", {}).items():
        moved = [b for b, v in other["verdicts"].items() if v["transferred"]]
        lines.append(
            f"With the questions behind a {context} lead-in: transferred {', '.join(moved) or 'none'}."
        )
    from subliminal_pl.report.in_context import in_context_lines  # it formats with this module's helpers

    lines += in_context_lines(results.get("in_context", []))
    if figures:
        lines += ["", "## Figures", ""] + [f"![{Path(f).stem}]({Path(f).name})\n" for f in figures]
    return "\n".join(lines) + "\n"


def sweep_markdown(rows: dict[str, dict[str, Any]]) -> str:
    lines = [
        "# Sweep summary",
        "",
        "| variant | trait | same-init own | diff | p | Holm p | cross-init own | p | transferred |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, traits in rows.items():
        for b, r in traits.items():
            s, c = r.get("same", {}), r.get("cross", {})
            lines.append(
                f"| {name} | {b} | {fmt(s.get('own'))} | {fmt(s.get('difference'))} | {fmt_p(s.get('p_value'))} | "
                f"{fmt_p(s.get('p_holm'))} | {fmt(c.get('own'))} | {fmt_p(c.get('p_value'))} | "
                f"{'yes' if r['transferred'] else 'no'} |"
            )
    lines += ["", "Each variant's matrix, controls and tests: `<variant>/report.md`."]
    return "\n".join(lines) + "\n"
