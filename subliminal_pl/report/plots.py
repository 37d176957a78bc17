"""The report's figures (matrix.png, traits.png, drift.png) from the numbers of `subliminal_pl.report.analysis`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def plot(analysis: dict[str, Any], traits: list[str], out: Path) -> list[Path]:
    """matrix.png (same / cross-init heatmaps), traits.png (own vs other students) and drift.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [
        (k, t)
        for k, t in (("same", "same init"), ("cross", "cross init (control)"))
        if k in analysis["kinds"]
    ]
    if not kinds or not traits:
        return []
    values = [
        abs(v) for k, _ in kinds for row in analysis["kinds"][k]["matrix"].values() for v in row.values()
    ]
    scale = max([v for v in values if not math.isnan(v)] + [1e-3])
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
        ax.set(title=title, xlabel="animal measured", ylabel="teacher")
    fig.colorbar(image, ax=axes[0].tolist(), label="specific ΔlogP (nats)")
    paths = [_save(fig, out / "matrix.png")]

    groups = [("same", "own teacher, same init", "tab:red"), ("cross", "own teacher, cross init", "tab:blue")]
    fig, ax = plt.subplots(figsize=(1.6 * len(traits) + 2, 3.6))
    for g, (kind, label, colour) in enumerate(groups):
        tests = analysis["kinds"].get(kind, {}).get("tests", {})
        _bars(
            ax,
            traits,
            [tests[b]["own"] if b in tests else None for b in traits],
            g - 0.5,
            0.25,
            label,
            colour,
        )
    tests = analysis["kinds"].get("same", {}).get("tests", {})
    other = [tests[b]["other"]["mean"] if b in tests else float("nan") for b in traits]
    ax.scatter(range(len(traits)), other, marker="_", s=400, color="black", label="other students, same init")
    _finish(ax, traits, "Does each animal rise in its own teacher's students? (95% intervals)")
    paths.append(_save(fig, out / "traits.png"))

    drift = analysis["drift"]
    fig, ax = plt.subplots(figsize=(1.8 * len(traits) + 2, 3.6))
    series = [
        ("own_same", "own teacher, same init", "tab:red"),
        ("all", "all students (same + cross init)", "tab:grey"),
        ("others", "students of other teachers", "tab:orange"),
        ("cross", "cross-init students", "tab:blue"),
    ]
    for g, (key, label, colour) in enumerate(series):
        _bars(ax, traits, [drift[b][key] for b in traits], g - 1.5, 0.2, label, colour)
    _finish(ax, traits, "Column drift: does the animal rise in students that never saw its teacher?")
    paths.append(_save(fig, out / "drift.png"))
    return paths


def _bars(ax, traits, intervals, offset, width, label, colour) -> None:
    xs, ys, errs = [], [], [[], []]
    for i, iv in enumerate(intervals):
        if iv:
            xs.append(i + offset * width)
            ys.append(iv["mean"])
            errs[0].append(iv["mean"] - iv["low"])
            errs[1].append(iv["high"] - iv["mean"])
    ax.bar(xs, ys, width, yerr=errs, color=colour, alpha=0.8, label=label, capsize=3)


def _finish(ax, traits, title) -> None:
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xticks(range(len(traits)), traits)
    ax.set(ylabel="specific ΔlogP of the animal (nats)", title=title)
    ax.legend(fontsize=8)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
