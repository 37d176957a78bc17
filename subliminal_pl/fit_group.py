"""`subliminal-pl fit-group DIR [DIR ...]`: several fit recipes trained in one process, one after another.

Each DIR holds `recipe.yaml`, a `subliminal-pl fit` recipe (as a pipeline fit stage writes it). The recipes run
in order through the same LightningCLI as `subliminal-pl fit --config DIR/recipe.yaml`, with their own
`seed_everything`, data seed and output folders, so each member ends with the weights a separate run gives (bit
for bit on the same machine and thread count; `tests/test_fit_group.py` checks it). What a group saves is what
the members share: one interpreter start and one import of torch, transformers, PEFT and Lightning (about 8 of a
demo student's 25 CPU-seconds), and, within the process, each tokenised data file and loaded model config once.

Per-member cache and resume: after a member's fit has returned (its export written), the runner writes
`DIR/fit.done.json`; a member whose folder holds it is skipped. A group that is killed therefore resumes at its
first unfinished member, and a finished member is never trained again (the pipeline keeps the marker and the
exported model of an unfinished stage, see `subliminal_pl.experiments.students`).
"""

from __future__ import annotations

import hashlib
import json
import resource
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from subliminal_pl.data.jsonl import write_json_atomic

RECIPE = "recipe.yaml"
DONE_MARKER = "fit.done.json"
# What a finished member leaves for a rerun of its group to keep (the pipeline's `keep` of a grouped stage).
KEEP = [DONE_MARKER, "model", "logs"]


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def recipe_sha256(folder: Path) -> str:
    return hashlib.sha256((folder / RECIPE).read_bytes()).hexdigest()


def is_finished(folder: Path) -> bool:
    """True when `folder` holds a done marker written for the recipe it holds now."""
    marker = folder / DONE_MARKER
    if not marker.is_file() or not (folder / RECIPE).is_file():
        return False
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
    except ValueError:
        return False
    return record.get("recipe_sha256") == recipe_sha256(folder)


def _release_memory() -> None:
    """Free what the finished member's trainer, models and optimiser held before the next one loads its own."""
    import gc

    gc.collect()
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def fit_group(folders: list[Path], fit: Callable[[Path], None], echo=print) -> list[str]:
    """Fit every member not yet finished, in order; returns "cached" or "ran" per member.

    fit: trains one recipe file (`subliminal-pl fit --config RECIPE` in this process; `subliminal_pl.cli`
        passes it, so that this module stays below the CLI).
    """
    missing = [str(f) for f in folders if not (f / RECIPE).is_file()]
    if missing:
        raise FileNotFoundError(f"fit-group: no {RECIPE} in {', '.join(missing)}")
    states = []
    for index, folder in enumerate(folders, 1):
        if is_finished(folder):
            echo(f"[group {index}/{len(folders)}] {folder.name}: finished before, skipped")
            states.append("cached")
            continue
        # What an interrupted attempt at this member left (no done marker) is not reused.
        for name in KEEP:
            stale = folder / name
            if stale.is_dir():
                shutil.rmtree(stale)
            elif stale.exists():
                stale.unlink()
        echo(f"[group {index}/{len(folders)}] {folder.name}: fit --config {folder / RECIPE}")
        start, cpu = time.perf_counter(), _cpu_seconds()
        fit(folder / RECIPE)
        _release_memory()
        record = {
            "recipe_sha256": recipe_sha256(folder),
            "seconds": round(time.perf_counter() - start, 2),
            "cpu_seconds": round(_cpu_seconds() - cpu, 2),
            "position": index,
            "group": [f.name for f in folders],
        }
        write_json_atomic(folder / DONE_MARKER, record)
        echo(
            f"[group {index}/{len(folders)}] {folder.name}: done in {record['seconds']:.1f} s "
            f"(CPU {record['cpu_seconds']:.1f} s)"
        )
        states.append("ran")
    return states


def main(argv: list[str], fit: Callable[[Path], None]) -> None:
    """`subliminal-pl fit-group DIR [DIR ...]` (routed by `subliminal_pl.cli`, which gives `fit`)."""
    from subliminal_pl.commands import command_parser

    parser = command_parser(
        "subliminal-pl fit-group", "Train several fit recipes (DIR/recipe.yaml) in one process.", config=False
    )
    parser.add_argument(
        "folders", nargs="+", type=str, help="member folders, each with a recipe.yaml; run in order"
    )
    args = parser.parse_args(argv)
    try:
        fit_group([Path(f) for f in args.folders], fit)
    except FileNotFoundError as err:
        sys.exit(str(err))
