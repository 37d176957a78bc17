"""Defences in the report: what a defence did to the rows, what it cost the students, and the defence x trait
matrix of a sweep.

Per experiment (`section`): the defence's stats per teacher (rows in and out, changed, removed, tokens masked) and
the utility of the students: mean number-format pass rate (`utility_format` probe) and mean loss on held-out rows
(`heldout` probe) over same-init students, beside the shared base's.

Per sweep (`write_defence_summary` -> `defences.md`, `defences.json`): one row per variant, one column per trait:
the same-init own-teacher contrast with its Holm-adjusted p (the report's verdict test, unchanged), the share of
the undefended recipe's contrast that remains, and whether the trait still transferred by the report's rule. The
reference of a variant is the variant without a defence whose student loss and data source are the same. Beside
them the rows changed or removed, the utility cost and the detection numbers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from subliminal_pl.data.jsonl import write_json_atomic, write_text_atomic
from subliminal_pl.probes.results import ProbeResults
from subliminal_pl.report.detection import correlation_test
from subliminal_pl.report.manifest import Manifest

UTILITY = {"format_pass_rate": "utility_format", "heldout_loss": "heldout"}


def _metric(probes: ProbeResults, model: str, probe: str, metric: str) -> float | None:
    entry = probes.models.get(model)
    value = entry.outputs.get(probe, {}).get("metrics", {}).get(metric) if entry else None
    return None if value is None else float(value)


def utility(manifest: Manifest, probes: ProbeResults) -> dict[str, Any]:
    """metric -> {base, same, cross}: the shared base's value and the mean over same-/cross-init students."""
    out = {}
    for metric, probe in UTILITY.items():
        row = {"base": _metric(probes, manifest.bases.same, probe, metric)}
        for kind in ("same", "cross"):
            values = [_metric(probes, s.name, probe, metric) for s in manifest.students if s.kind == kind]
            values = [v for v in values if v is not None]
            row[kind] = float(np.mean(values)) if values else None
        if any(v is not None for v in row.values()):
            out[metric] = row
    return out


def section(manifest: Manifest, probes: ProbeResults, resolve) -> dict[str, Any] | None:
    """The defence numbers of one experiment (None when it had no defence and no utility probes)."""
    stats = {t: json.loads(resolve(p).read_text(encoding="utf-8")) for t, p in manifest.defence_stats.items()}
    use = utility(manifest, probes)
    if manifest.defence is None and not use:
        return None
    return {"defence": manifest.defence, "stats": stats, "utility": use}


def _f(x: float | None, digits: int = 3, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def lines(defence: dict[str, Any] | None) -> list[str]:
    """Markdown of one experiment's defence section."""
    if not defence:
        return []
    out = ["## Defence and utility", ""]
    if defence["defence"]:
        out += [f"Defence: **{defence['defence']}**, applied to every teacher's rows (the neutral teacher's too).", "",
                "| teacher | rows in | rows out | changed | removed | tokens masked |", "|---|---|---|---|---|---|"]  # fmt: skip
        for teacher, s in defence["stats"].items():
            masked = f"{s['tokens_masked']} ({s['masked_fraction']:.1%})" if "tokens_masked" in s else "-"
            out.append(
                f"| {teacher} | {s['rows_in']} | {s['rows_out']} | {s['changed']} | {s.get('removed', 0)} | {masked} |"
            )
        out.append("")
    if defence["utility"]:
        out += ["| utility | shared base | same-init students | cross-init students |", "|---|---|---|---|"]
        for metric, row in defence["utility"].items():
            out.append(f"| {metric} | {_f(row['base'])} | {_f(row['same'])} | {_f(row['cross'])} |")
        out.append("")
    return out


# ---- the sweep's defence matrix ----------------------------------------------------------------------------------
def _recipe(config: dict[str, Any]) -> tuple[Any, Any]:
    carrier = (config.get("carrier") or {}).get("init_args") or {}
    return (config.get("students") or {}).get("loss", "kl"), carrier.get("source", "teacher")


def _reference(name: str, data: dict[str, dict[str, Any]]) -> str | None:
    if not data[name]["config"].get("defence"):
        return None
    recipe = _recipe(data[name]["config"])
    for other, d in data.items():
        if not d["config"].get("defence") and _recipe(d["config"]) == recipe:
            return other
    return None


def matrix_row(name: str, data: dict[str, dict[str, Any]]) -> dict[str, Any]:
    results = data[name]
    ref = _reference(name, data)
    tests = results["analysis"].get("kinds", {}).get("same", {}).get("tests", {})
    ref_tests = data[ref]["analysis"].get("kinds", {}).get("same", {}).get("tests", {}) if ref else {}
    cells = {}
    for trait in results["traits"]:
        t = tests.get(trait) or {}
        verdict = results["analysis"].get("verdicts", {}).get(trait, {})
        base = (ref_tests.get(trait) or {}).get("difference")
        diff = t.get("difference")
        cells[trait] = {
            "difference": diff,
            "p_holm": t.get("p_holm"),
            "transferred": bool(verdict.get("transferred")) and verdict.get("cross_init_flat") is not False,
            "remaining": diff / base if diff is not None and base not in (None, 0) else None,
        }
    defence = results.get("defence") or {}
    stats = defence.get("stats", {})
    changed = {k: sum(s.get(k, 0) for s in stats.values()) for k in ("rows_in", "changed", "removed")}
    tokens = sum(s.get("tokens", 0) for s in stats.values())
    masked = sum(s.get("tokens_masked", 0) for s in stats.values())
    detection = results.get("detection") or {}
    aurocs = {
        name: [c[name]["auroc"] for c in detection.get("classifiers", {}).values() if name in c]
        for name in ("token_counts", "base_features", "confounds")
    }
    return {
        "reference": ref,
        "cells": cells,
        "transferred": sum(c["transferred"] for c in cells.values()),
        "rows": changed | ({"tokens_masked_fraction": masked / tokens} if tokens else {}),
        "utility": defence.get("utility", {}),
        "auroc": {k: float(np.mean(v)) if v else None for k, v in aurocs.items()},
        "audit": detection.get("audit", []),
    }


def write_defence_summary(results: dict[str, Path], output_dir: str | Path) -> Path | None:
    """`defences.md` + `defences.json` for a sweep whose variants hold defences (None: no variant has one)."""
    data = {n: json.loads(Path(p).read_text(encoding="utf-8")) for n, p in results.items()}
    if not any(d["config"].get("defence") for d in data.values()):
        return None
    rows = {name: matrix_row(name, data) for name in data}
    pairs = [(a["cos_same"], a["transfer"]) for r in rows.values() for a in r["audit"]
             if not any(math.isnan(v) for v in (a["cos_same"], a["transfer"]))]  # fmt: skip
    pooled = correlation_test([p[0] for p in pairs], [p[1] for p in pairs]) if len(pairs) >= 3 else None
    out_dir = Path(output_dir)
    write_json_atomic(out_dir / "defences.json", {"variants": rows, "audit_correlation_pooled": pooled})
    path = out_dir / "defences.md"
    write_text_atomic(path, summary_markdown(rows, pooled))
    return path


def summary_markdown(rows: dict[str, dict[str, Any]], pooled: dict[str, Any] | None) -> str:
    traits = list(next(iter(rows.values()))["cells"])
    out = ["# Defences against subliminal transfer", "",
           "Cells: same-init own-teacher contrast (nats) / Holm p / share of the undefended recipe's contrast that "
           "remains; **bold** when the trait still transferred by the report's rule (Holm p < 0.01, cross-init "
           "control flat).", "",
           "| variant | reference | " + " | ".join(traits) + " | transferred |",
           "|---|---|" + "---|" * len(traits) + "---|"]  # fmt: skip
    for name, r in rows.items():
        cells = []
        for trait in traits:
            c = r["cells"][trait]
            text = f"{_f(c['difference'], sign=True)} / {_f(c['p_holm'], 4)} / {_f(c['remaining'], 2)}"
            cells.append(f"**{text}**" if c["transferred"] else text)
        out.append(
            f"| {name} | {r['reference'] or '-'} | "
            + " | ".join(cells)
            + f" | {r['transferred']}/{len(traits)} |"
        )
    out += ["", "What each defence did to the rows and what it cost (students' mean over same-init students):", "",
            "| variant | rows in | changed | removed | tokens masked | format pass | held-out loss | AUROC tokens | "
            "AUROC base features | AUROC confounds |", "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in rows.items():
        rw, u, a = r["rows"], r["utility"], r["auroc"]
        fmt = (u.get("format_pass_rate") or {}).get("same")
        loss = (u.get("heldout_loss") or {}).get("same")
        masked = _f(rw["tokens_masked_fraction"], 3) if "tokens_masked_fraction" in rw else "-"
        out.append(f"| {name} | {rw['rows_in'] or '-'} | {rw['changed']} | {rw['removed']} | {masked} | {_f(fmt)} | "
                   f"{_f(loss)} | {_f(a['token_counts'])} | {_f(a['base_features'])} | {_f(a['confounds'])} |")  # fmt: skip
    if pooled:
        out += ["", f"Update-cosine audit against transfer, pooled over variants and traits: r = {_f(pooled['r'])}, "
                f"permutation p = {_f(pooled['p'], 4)} (n = {pooled['n']}; points of one variant share its "
                "teachers, so they are not independent)."]  # fmt: skip
    return "\n".join(out) + "\n"
