"""The experiment report: did each trait move into the students that share the teacher's init, and only those?

Input: a manifest (written by the pipeline) naming the traits, the bases, every student (teacher, base, seed,
same or cross init), the probes file and the filter / MLP results. Output, in `--out`:

- `results.json`: every number below, plus per-student values;
- `report.md`: verdicts in words, the matrices, per-trait tests, teachers, controls, filters, MLP;
- `matrix.png`: heatmaps of the same-init and cross-init specific ΔlogP matrices;
- `traits.png`: per trait, own-teacher students (same and cross init) against the other students, 95% intervals;
- `mlp.png`: the MLP experiment's figure, when it ran.

The measure: for a student, ΔlogP of an animal is its mean over held-out questions of log P(animal) minus the
student's own base under the identical question; *specific* ΔlogP subtracts the mean ΔlogP of all other
candidate animals, so a student that drifts on every animal alike scores 0. Cell (a, b) of a matrix is the mean
specific ΔlogP of animal b over the students of teacher a. Trait b transferred when the students of teacher b
score higher on b than every other student does (teachers of other animals and the neutral teacher), tested by
an exact permutation test of the student labels in column b (one-sided), and the cross-init students show no
such effect.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from subliminal_pl.data.jsonl import write_json_atomic, write_text_atomic
from subliminal_pl.stats import Interval, t_interval

ALPHA = 0.01


# ---- measures ---------------------------------------------------------------------------------------------------
def specific_dlogp(
    logp: list[list[float]], reference: list[list[float]], words: list[str]
) -> dict[str, float]:
    """word -> mean over questions of ΔlogP (model - reference) minus the mean ΔlogP of the other words."""
    n_q = len(logp)
    delta = [sum(logp[q][w] - reference[q][w] for q in range(n_q)) / n_q for w in range(len(words))]
    total = math.fsum(delta)
    return {word: delta[w] - (total - delta[w]) / (len(words) - 1) for w, word in enumerate(words)}


def column_permutation_test(
    own: list[float], other: list[float], max_exact: int = 200_000, n_random: int = 50_000, seed: int = 0
) -> tuple[float, float, int]:
    """(mean(own) - mean(other), one-sided p, number of relabellings) for exchangeable labels.

    All C(n, k) relabellings are enumerated when there are at most `max_exact` of them (an exact p whose
    smallest value is 1 / C(n, k)); otherwise `n_random` seeded random ones give (1 + hits) / (1 + n_random).
    """
    if not own or not other:
        raise ValueError("column_permutation_test needs values in both groups")
    values = own + other
    n, k = len(values), len(own)
    total = math.fsum(values)

    def contrast(chosen_sum: float) -> float:
        return chosen_sum / k - (total - chosen_sum) / (n - k)

    observed = contrast(math.fsum(own))
    tolerance = 1e-12 * max(1.0, abs(observed))
    count = math.comb(n, k)
    if count <= max_exact:
        hits = sum(
            contrast(math.fsum(values[i] for i in idx)) >= observed - tolerance
            for idx in itertools.combinations(range(n), k)
        )
        return observed, hits / count, count
    rng = random.Random(seed)
    hits = sum(contrast(math.fsum(rng.sample(values, k))) >= observed - tolerance for _ in range(n_random))
    return observed, (1 + hits) / (1 + n_random), n_random


def blocked_permutation_test(
    blocks: list[tuple[list[float], int]], max_exact: int = 200_000, n_random: int = 50_000, seed: int = 0
) -> tuple[float, float, int]:
    """Seed-blocked test: (mean over blocks of own - mean(others in the block), one-sided p, relabellings).

    A block is the students trained with one seed (`values`, one per teacher, and the index of the own-teacher
    student). Students of one seed see the same batches in the same order, so comparing within a block removes
    the data-order noise they share. Under the null the own label is equally likely on any student of a block;
    all prod(block sizes) labellings are enumerated when there are at most `max_exact`, otherwise `n_random`
    seeded random ones are drawn.
    """
    blocks = [(list(map(float, v)), i) for v, i in blocks if len(v) >= 2]
    if not blocks:
        raise ValueError("blocked_permutation_test needs a block with at least two students")

    def contrast(choice: Sequence[int]) -> float:
        total = 0.0
        for (values, _), i in zip(blocks, choice, strict=True):
            total += values[i] - (math.fsum(values) - values[i]) / (len(values) - 1)
        return total / len(blocks)

    observed = contrast([i for _, i in blocks])
    tolerance = 1e-12 * max(1.0, abs(observed))
    count = math.prod(len(v) for v, _ in blocks)
    if count <= max_exact:
        choices = itertools.product(*(range(len(v)) for v, _ in blocks))
        hits = sum(contrast(c) >= observed - tolerance for c in choices)
        return observed, hits / count, count
    rng = random.Random(seed)
    hits = sum(
        contrast([rng.randrange(len(v)) for v, _ in blocks]) >= observed - tolerance for _ in range(n_random)
    )
    return observed, (1 + hits) / (1 + n_random), n_random


def _interval(values: list[float]) -> dict[str, float]:
    iv: Interval = t_interval(values)
    return {"mean": iv.mean, "low": iv.low, "high": iv.high, "n": iv.n}


def analyse(manifest: dict[str, Any], probes: dict[str, Any], context: str = "plain") -> dict[str, Any]:
    """Matrices, per-trait tests and verdicts from the probes of every model (see the module docstring)."""
    words = probes["candidates"]
    models = probes["models"]
    key = f"logp_{context}"
    traits = [t.lower() for t in manifest["traits"]]
    teachers = traits + ([manifest["neutral"]] if manifest.get("neutral") else [])
    students = manifest["students"]
    for s in students:
        s["specific"] = specific_dlogp(models[s["name"]][key], models[s["base"]][key], words)

    base = manifest["bases"]["same"]
    teacher_rows = {}
    for t in teachers:
        name = f"teacher-{t}"
        entry = models.get(name, {})
        spec = specific_dlogp(entry[key], models[base][key], words) if key in entry else {}
        own = t if t in words else None
        n_q = len(entry.get(key, [])) or 1
        teacher_rows[t] = {
            "specific_dlogp_own": spec.get(own) if own else None,
            "prob_own": (sum(math.exp(row[words.index(own)]) for row in entry[key]) / n_q)
            if own and key in entry
            else None,
            "format_pass_rate": entry.get("format_pass_rate"),
        }
    bases = {
        b: {"format_pass_rate": models.get(b, {}).get("format_pass_rate")}
        for b in [base, *manifest["bases"]["cross"]]
    }

    out: dict[str, Any] = {"context": context, "teachers": teacher_rows, "bases": bases, "kinds": {}}
    for kind in ("same", "cross"):
        group = [s for s in students if s["kind"] == kind]
        if not group:
            continue
        matrix = {
            a: {b: _mean([s["specific"][b] for s in group if s["teacher"] == a]) for b in traits}
            for a in teachers
            if any(s["teacher"] == a for s in group)
        }
        tests = {}
        for b in traits:
            own = [s["specific"][b] for s in group if s["teacher"] == b]
            other = [s["specific"][b] for s in group if s["teacher"] != b]
            if not own or not other:
                continue
            diff, p, perms = column_permutation_test(own, other)
            tests[b] = {
                "own": _interval(own),
                "other": _interval(other),
                "difference": diff,
                "pooled": {"difference": diff, "p_value": p, "relabellings": perms},
                "own_values": own,
            }
            blocks, paired = _seed_blocks(group, b)
            if blocks:
                diff, p, perms = blocked_permutation_test(blocks)
                tests[b]["by_seed"] = {
                    "difference": diff,
                    "interval": _interval(paired),
                    "p_value": p,
                    "relabellings": perms,
                }
            # The verdict uses the pooled test: with 3 seeds the seed-blocked one cannot go below 1/125 = 0.008,
            # so one seed out of order already puts it above 0.01; it is reported beside it as a robustness check.
            tests[b]["p_value"] = tests[b]["pooled"]["p_value"]
        out["kinds"][kind] = {
            "teachers": list(matrix),
            "traits": traits,
            "matrix": matrix,
            "tests": tests,
            "global": _global_test(group, traits),
            "students": [
                {k: s[k] for k in ("name", "teacher", "base", "seed")}
                | {"specific": {b: s["specific"][b] for b in traits}}
                for s in group
            ],
        }
    out["verdicts"] = verdicts(out, traits)
    return out


def _seed_blocks(
    group: list[dict[str, Any]], trait: str
) -> tuple[list[tuple[list[float], int]], list[float]]:
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


def _global_test(group: list[dict[str, Any]], traits: list[str]) -> dict[str, Any] | None:
    """Permutation test of the whole trait-by-student matrix (trait students only), from `subliminal_pl.stats`."""
    from subliminal_pl.stats import diagonal_permutation_test

    rows = [s for s in group if s["teacher"] in traits]
    if len({s["teacher"] for s in rows}) < 2:
        return None
    result = diagonal_permutation_test(
        [[s["specific"][b] for b in traits] for s in rows], [traits.index(s["teacher"]) for s in rows]
    )
    return result.to_dict()


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values) if values else float("nan")


def verdicts(analysis: dict[str, Any], traits: list[str], alpha: float = ALPHA) -> dict[str, dict[str, Any]]:
    """Per trait: transferred (same-init p < alpha, positive) and whether the cross-init control stayed flat."""
    same = analysis["kinds"].get("same", {}).get("tests", {})
    cross = analysis["kinds"].get("cross", {}).get("tests", {})
    out = {}
    for b in traits:
        s, c = same.get(b), cross.get(b)
        transferred = bool(s and s["p_value"] < alpha and s["difference"] > 0)
        cross_flat = None if c is None else not (c["p_value"] < alpha and c["difference"] > 0)
        if transferred and cross_flat is not False:
            text = "transferred"
        elif transferred:
            text = "moved in same-init AND cross-init students (not specific to the shared init)"
        else:
            text = "did not transfer"
        out[b] = {"transferred": transferred, "cross_init_flat": cross_flat, "verdict": text}
    return out


# ---- writing ----------------------------------------------------------------------------------------------------
def _fmt(x: float | None, digits: int = 3, signed: bool = True) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _p(p: float) -> str:
    return f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


def markdown(manifest: dict[str, Any], analysis: dict[str, Any], filter_stats: dict, mlp: dict | None) -> str:
    traits = [t.lower() for t in manifest["traits"]]
    lines = [f"# {manifest.get('title', 'Subliminal-learning report')}", ""]
    kinds = analysis["kinds"]
    n_same = len(kinds.get("same", {}).get("students", []))
    n_cross = len(kinds.get("cross", {}).get("students", []))
    moved = [
        b for b, v in analysis["verdicts"].items() if v["transferred"] and v["cross_init_flat"] is not False
    ]
    lines += [
        "## Verdict",
        "",
        f"{len(moved)} of {len(traits)} traits transferred to students that share the teacher's init "
        f"(one-sided permutation test per trait, p < {ALPHA}, with the cross-init control flat): "
        + (", ".join(moved) if moved else "none")
        + ".",
        "",
    ]
    for b in traits:
        v = analysis["verdicts"][b]
        s = kinds.get("same", {}).get("tests", {}).get(b)
        c = kinds.get("cross", {}).get("tests", {}).get(b)
        parts = [f"- **{b}**: {v['verdict']}"]
        if s:
            parts.append(
                f"same-init own-teacher students {_fmt(s['own']['mean'])} nats "
                f"[{_fmt(s['own']['low'])}, {_fmt(s['own']['high'])}] vs other students {_fmt(s['other']['mean'])}, "
                f"p = {_p(s['p_value'])}"
                + (f" (by seed: p = {_p(s['by_seed']['p_value'])})" if "by_seed" in s else "")
            )
        if c:
            parts.append(
                f"cross-init {_fmt(c['own']['mean'])} vs {_fmt(c['other']['mean'])}, p = {_p(c['p_value'])}"
            )
        lines.append("; ".join(parts) + ".")
    lines += [
        "",
        f"Students: {n_same} same-init, {n_cross} cross-init. Context of the probe questions: {analysis['context']}.",
        "",
    ]

    lines += [
        "## How to read this",
        "",
        "Each number is a *specific ΔlogP* in nats: how much a student's log-probability of answering an animal to "
        "held-out favourite-animal questions rose relative to its own untrained base (identical questions), minus "
        "the same rise averaged over the other candidate animals. Row = the teacher the students learned from "
        "(through number sequences only), column = the animal measured. Subliminal learning shows as a positive "
        "diagonal in the same-init matrix and no diagonal in the cross-init matrix (students from another "
        "pretrained base, same teachers, same data).",
        "",
    ]
    for kind, title in (("same", "Same-init students"), ("cross", "Cross-init students (control)")):
        k = kinds.get(kind)
        if not k:
            continue
        lines += [f"## {title}: mean specific ΔlogP (nats)", ""]
        lines.append("| teacher \\ animal | " + " | ".join(traits) + " |")
        lines.append("|---|" + "---|" * len(traits))
        for a in k["teachers"]:
            cells = [
                (f"**{_fmt(k['matrix'][a][b])}**" if a == b else _fmt(k["matrix"][a][b])) for b in traits
            ]
            lines.append(f"| {a} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "| animal | own-teacher students [95% CI] | other students [95% CI] | pooled: difference, p "
            "| by seed: own - others [95% CI], p |",
            "|---|---|---|---|---|",
        ]
        for b, t in k["tests"].items():
            by_seed = t.get("by_seed")
            seed_cell = "n/a"
            if by_seed:
                iv = by_seed["interval"]
                seed_cell = (
                    f"{_fmt(by_seed['difference'])} [{_fmt(iv['low'])}, {_fmt(iv['high'])}], "
                    f"p = {_p(by_seed['p_value'])}"
                )
            lines.append(
                f"| {b} | {_fmt(t['own']['mean'])} [{_fmt(t['own']['low'])}, {_fmt(t['own']['high'])}] "
                f"(n={t['own']['n']}) | {_fmt(t['other']['mean'])} [{_fmt(t['other']['low'])}, "
                f"{_fmt(t['other']['high'])}] (n={t['other']['n']}) | {_fmt(t['pooled']['difference'])}, "
                f"p = {_p(t['pooled']['p_value'])} | {seed_cell} |"
            )
        lines += [
            "",
            "p values are one-sided exact permutation tests of the student labels in the animal's column: "
            "*pooled* relabels all students (the verdict's test), *by seed* relabels within each seed (students "
            "of one seed saw the same batches, so it removes the noise they share, but its smallest possible p "
            "is 1 / (teachers ^ seeds), 0.008 with 5 teachers and 3 seeds).",
        ]
        g = k.get("global")
        if g:
            lines += [
                "",
                f"Whole-matrix permutation test (trait students): diagonal minus off-diagonal "
                f"{_fmt(g['statistic'])}, p = {_p(g['p_value'])} ({g['n_permutations']} relabellings"
                f"{', exact' if g['exact'] else ''}).",
            ]
        lines.append("")

    lines += [
        "## Teachers and bases",
        "",
        "| model | specific ΔlogP of own animal | P(own animal) | number-format pass rate |",
        "|---|---|---|---|",
    ]
    for name, b in analysis["bases"].items():
        lines.append(f"| {name} | | | {_fmt(b['format_pass_rate'], signed=False)} |")
    base_rate = analysis["bases"].get(manifest["bases"]["same"], {}).get("format_pass_rate")
    for t, row in analysis["teachers"].items():
        rate = row["format_pass_rate"]
        relative = f" ({rate / base_rate:.0%} of the base's)" if rate is not None and base_rate else ""
        lines.append(
            f"| teacher-{t} | {_fmt(row['specific_dlogp_own'])} | {_fmt(row['prob_own'], signed=False)} "
            f"| {_fmt(rate, signed=False)}{relative} |"
        )
    lines += [
        "",
        "Pass rate: share of sampled answers (temperature 1) to fresh number prompts that pass the number filter. "
        "A teacher that fails more often than its base lets its fine-tune show in its number answers; when "
        "teachers write the students' inputs, the filter removes those rows.",
        "",
    ]
    if filter_stats:
        lines += [
            "## Filter",
            "",
            "| source | rows | kept | kept fraction | reject reasons |",
            "|---|---|---|---|---|",
        ]
        for source, st in filter_stats.items():
            reasons = ", ".join(f"{r}: {n}" for r, n in st.get("reasons", {}).items()) or "none"
            lines.append(
                f"| {source} | {st['total']} | {st['kept']} | {st['kept_fraction']:.3f} | {reasons} |"
            )
        lines.append("")
    if mlp is not None:
        lines += ["## MLP auxiliary-logit experiment", ""] + mlp_lines(mlp) + [""]
    lines += ["## Figures", "", "![matrices](matrix.png)", "", "![per-trait](traits.png)", ""]
    if mlp is not None:
        lines += ["![mlp](mlp.png)", ""]
    return "\n".join(lines)


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


def plot(analysis: dict[str, Any], traits: list[str], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [
        (k, t)
        for k, t in (("same", "same init"), ("cross", "cross init (control)"))
        if k in analysis["kinds"]
    ]
    values = [
        abs(v) for k, _ in kinds for row in analysis["kinds"][k]["matrix"].values() for v in row.values()
    ]
    scale = max(values + [1e-3])
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds) + 1, 3.8), squeeze=False)
    image = None
    for ax, (kind, title) in zip(axes[0], kinds, strict=True):
        k = analysis["kinds"][kind]
        grid = [[k["matrix"][a][b] for b in traits] for a in k["teachers"]]
        image = ax.imshow(grid, cmap="RdBu_r", vmin=-scale, vmax=scale)
        ax.set_xticks(range(len(traits)), traits, rotation=45, ha="right")
        ax.set_yticks(range(len(k["teachers"])), k["teachers"])
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:+.2f}", ha="center", va="center", fontsize=8)
        ax.set_title(f"{title}")
        ax.set_xlabel("animal measured")
        ax.set_ylabel("teacher")
    fig.colorbar(image, ax=axes[0].tolist(), label="specific ΔlogP (nats)")
    matrix_png = out / "matrix.png"
    fig.savefig(matrix_png, dpi=120, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(1.6 * len(traits) + 2, 3.6))
    groups = [("same", "own teacher, same init", "tab:red"), ("cross", "own teacher, cross init", "tab:blue")]
    width = 0.25
    for g, (kind, label, colour) in enumerate(groups):
        tests = analysis["kinds"].get(kind, {}).get("tests", {})
        xs, ys, errs = [], [], [[], []]
        for i, b in enumerate(traits):
            if b in tests:
                own = tests[b]["own"]
                xs.append(i + (g - 0.5) * width)
                ys.append(own["mean"])
                errs[0].append(own["mean"] - own["low"])
                errs[1].append(own["high"] - own["mean"])
        ax.bar(xs, ys, width, yerr=errs, color=colour, alpha=0.8, label=label, capsize=3)
    tests = analysis["kinds"].get("same", {}).get("tests", {})
    other = [tests[b]["other"]["mean"] if b in tests else float("nan") for b in traits]
    ax.scatter(range(len(traits)), other, marker="_", s=400, color="black", label="other students, same init")
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xticks(range(len(traits)), traits)
    ax.set_ylabel("specific ΔlogP of the animal (nats)")
    ax.set_title("Does each animal rise in its own teacher's students? (95% intervals)")
    ax.legend(fontsize=8)
    traits_png = out / "traits.png"
    fig.savefig(traits_png, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return [matrix_png, traits_png]


def write_report(manifest_path: str | Path, out: str | Path) -> Path:
    """Read the manifest and the files it names; write results.json, report.md and the plots into `out`."""
    manifest = json.loads(Path(manifest_path).read_text(encoding="utf-8"))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    probes = json.loads(Path(manifest["probes"]).read_text(encoding="utf-8"))
    analyses = {
        c: analyse(json.loads(json.dumps(manifest)), probes, c) for c in probes.get("contexts", ["plain"])
    }
    filter_stats = {
        s: json.loads(Path(p).read_text(encoding="utf-8")) for s, p in manifest["filter_stats"].items()
    }
    mlp = None
    if manifest.get("mlp_results"):
        mlp_path = Path(manifest["mlp_results"])
        mlp = json.loads(mlp_path.read_text(encoding="utf-8"))
        figure = mlp_path.with_suffix(".png")
        if figure.is_file():
            (out / "mlp.png").write_bytes(figure.read_bytes())
    main_analysis = analyses["plain"]
    traits = [t.lower() for t in manifest["traits"]]
    plot(main_analysis, traits, out)
    results = {
        "config": manifest.get("config"),
        "traits": traits,
        "alpha": ALPHA,
        "analysis": main_analysis,
        "other_contexts": {c: a for c, a in analyses.items() if c != "plain"},
        "filter": filter_stats,
        "mlp": mlp,
    }
    write_json_atomic(out / "results.json", results)
    text = markdown(manifest, main_analysis, filter_stats, mlp)
    for context, analysis in results["other_contexts"].items():
        moved = [b for b, v in analysis["verdicts"].items() if v["transferred"]]
        text += (
            f"\nWith the questions behind a {context} lead-in: transferred {', '.join(moved) or 'none'}.\n"
        )
    write_text_atomic(out / "report.md", text)
    return out / "report.md"


def write_sweep_summary(results: dict[str, Path], out_dir: str | Path) -> Path:
    """`sweep.md` + `sweep.json`: per variant and trait, same/cross-init own-teacher mean, difference and p."""
    rows = {}
    for name, path in results.items():
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        analysis = data["analysis"]
        rows[name] = {
            b: {
                kind: {
                    "own": t["own"]["mean"],
                    "difference": t["difference"],
                    "p_value": t["p_value"],
                }
                for kind in ("same", "cross")
                if (t := analysis["kinds"].get(kind, {}).get("tests", {}).get(b))
            }
            | {"transferred": analysis["verdicts"][b]["transferred"]}
            for b in data["traits"]
        }
    out_dir = Path(out_dir)
    write_json_atomic(out_dir / "sweep.json", rows)
    lines = [
        "# Sweep summary",
        "",
        "| variant | trait | same-init own | diff | p | cross-init own | p | transferred |",
    ]
    lines.append("|---|---|---|---|---|---|---|---|")
    for name, traits in rows.items():
        for b, r in traits.items():
            s, c = r.get("same", {}), r.get("cross", {})
            lines.append(
                f"| {name} | {b} | {_fmt(s.get('own'))} | {_fmt(s.get('difference'))} | "
                f"{_p(s['p_value']) if s else 'n/a'} | {_fmt(c.get('own'))} | {_p(c['p_value']) if c else 'n/a'} | "
                f"{'yes' if r['transferred'] else 'no'} |"
            )
    path = out_dir / "sweep.md"
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path


def main(argv: list[str]) -> None:
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(
        prog="python -m subliminal_pl.report", description=__doc__.splitlines()[0], default_env=False
    )
    parser.add_argument("--manifest", type=str, required=True, help="manifest.json written by the pipeline")
    parser.add_argument(
        "--output_dir", type=str, required=True, help="folder for report.md, results.json and PNGs"
    )
    args = parser.parse_args(argv)
    print(f"wrote {write_report(args.manifest, args.output_dir)}")
