"""The report's in-context control section: teacher rows in the shared base's context instead of in its weights.

Reads the outputs of `subliminal_pl.probes.in_context.InContextProbe` (details marked `in_context`) on the shared
base (`manifest.bases.same`) and says, per trait, whether the trait word's specific log-probability moved when N
teacher rows sat in the context: the mean over seeds with its 95% t interval, against the base without context and
(when the probe drew control rows) against the same number of the neutral teacher's rows. The paper found that
in-context examples do not reproduce the effect that training on them does.
"""

from __future__ import annotations

import math
from typing import Any

from subliminal_pl.probes.results import ProbeResults
from subliminal_pl.report.manifest import Manifest
from subliminal_pl.report.render import fmt_iv


def in_context_results(manifest: Manifest, probes: ProbeResults) -> list[dict[str, Any]]:
    """One entry per in-context probe run on the shared base (empty when there is none)."""
    entry = probes.models.get(manifest.bases.same)
    if entry is None:
        return []
    out = []
    for name, output in entry.outputs.items():
        details = output.get("details", {})
        if not details.get("in_context"):
            continue
        summary = details["summary"]
        out.append(
            {
                "probe": name,
                "model": manifest.bases.same,
                "trait": details["trait"],
                "n_rows": details["n_rows"],
                "seeds": details["seeds"],
                "dlogp": summary.get("teacher_dlogp"),
                "specific_dlogp": summary.get("teacher_specific_dlogp"),
                "control_specific_dlogp": summary.get("control_specific_dlogp"),
                "vs_control": summary.get("vs_control_specific_dlogp"),
                "per_seed": details["per_seed"]["teacher"]["specific_dlogp"],
            }
        )
    return out


def _moved(iv: dict[str, Any] | None) -> str:
    if not iv or iv.get("low") is None or math.isnan(iv["low"]):
        return "not tested"
    if iv["low"] > 0:
        return "up"
    return "down" if iv["high"] < 0 else "flat"


def in_context_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The markdown section (nothing when no in-context probe ran)."""
    if not rows:
        return []
    lines = [
        "## In-context control",
        "",
        f"Teacher rows placed in the context of the shared base ({rows[0]['model']}), drawn with replacement, one "
        "context per seed; the trait word's specific ΔlogP (its shift minus the other candidates' mean shift) "
        "against the same questions without context, and against as many neutral-teacher rows. Mean over seeds "
        "[95% t interval]; 'moved' reads the interval against neutral rows (or against no context without "
        "control rows).",
        "",
        "| trait | rows in context | seeds | ΔlogP | specific ΔlogP | with neutral rows | trait vs neutral rows | moved | per seed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        verdict = _moved(r["vs_control"] if r["vs_control"] else r["specific_dlogp"])
        per_seed = ", ".join(f"{v:+.3f}" for v in r["per_seed"])
        lines.append(
            f"| {r['trait']} | {r['n_rows']} | {len(r['seeds'])} | {fmt_iv(r['dlogp'])} | "
            f"{fmt_iv(r['specific_dlogp'])} | {fmt_iv(r['control_specific_dlogp'])} | "
            f"{fmt_iv(r['vs_control'])} | {verdict} | {per_seed} |"
        )
    return [*lines, ""]
