"""The stage graph of a pipeline: what a stage is, dependency order, and the hashes that name stage folders.

A stage's hash covers its config, its commands (without the interpreter's path) and files, with stage folders
written as placeholders (`{{dir}}`, `{{dir:NAME}}`), and the hashes of the stages it needs; so the hash does not
depend on where the output folder lives, and a changed config changes exactly the hashes downstream of it.
`subliminal_pl.pipeline.Pipeline` runs such a graph.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

PLACEHOLDER = re.compile(r"\{\{dir(?::([A-Za-z0-9_.\-]+))?\}\}")
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


class PipelineError(RuntimeError):
    """A malformed stage graph or a stage that failed; the message names the stage and its log."""


@dataclass(frozen=True)
class Resources:
    """What one stage holds while it runs, for executors that place stages on a cluster (`executor: ray`).

    cpus: CPU cores (also the stage's `OMP_NUM_THREADS` there). gpus: GPUs (0 for CPU-only stages).
    memory_gb: memory to reserve in GiB (0: none reserved). The local executor ignores them (`jobs` decides).
    """

    cpus: float = 1.0
    gpus: float = 0.0
    memory_gb: float = 0.0

    def __post_init__(self) -> None:
        for key in ("cpus", "gpus", "memory_gb"):
            if getattr(self, key) < 0:
                raise PipelineError(f"stage resources: {key} must be >= 0, got {getattr(self, key)}")


@dataclass
class Stage:
    """One step of an experiment.

    name: unique name (letters, digits, `_.-`); the folder is `<name>-<hash>`.
    commands: argv lists run in order, each `[python, -m, module, ...]`; placeholders allowed.
    needs: names of the stages whose outputs this one reads (they run first, their hashes enter this hash).
    config: JSON-ready values that define the output beyond the commands (e.g. what a recipe means).
    files: recipe files written into the stage folder before the commands run (relative path -> text).
    keep: names of files or folders in the stage folder that an interrupted attempt leaves for the next one
        (its commands resume from them).
    background: a side stage that runs on a core no regular stage is about to need (see `Pipeline`).
    batch: stages with the same batch key that are ready together run as one job: one process runs
        `batch_command` followed by the folders of every member (e.g. `subliminal-pl fit-group DIR ...`, which
        trains each member's recipe in turn). How a stage runs, not what it makes: neither field enters the hash,
        so a batch command must give each member the output its own `commands` would.
    batch_command: the argv prefix of a batch's command (placeholders of other stages allowed, as in commands).
    resources: what the stage holds on a cluster (`Resources`); like `background`, not part of the hash.
    """

    name: str
    commands: list[list[str]]
    needs: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    keep: list[str] = field(default_factory=list)
    background: bool = False
    batch: str | None = None
    batch_command: list[str] = field(default_factory=list)
    resources: Resources = field(default_factory=Resources)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise PipelineError(f"stage name {self.name!r} may only hold letters, digits and _.-")
        if not self.commands:
            raise PipelineError(f"stage {self.name!r} has no command")
        if self.batch is not None and not self.batch_command:
            raise PipelineError(f"stage {self.name!r} has a batch key but no batch_command")


def _referenced(text: str) -> set[str]:
    return {m.group(1) for m in PLACEHOLDER.finditer(text) if m.group(1)}


def order_stages(stages: Sequence[Stage]) -> list[Stage]:
    """Stages in dependency order (stable: the given order among independent ones); checks names and needs."""
    by_name: dict[str, Stage] = {}
    for stage in stages:
        if stage.name in by_name:
            raise PipelineError(f"two stages are named {stage.name!r}")
        by_name[stage.name] = stage
    for stage in stages:
        commands = [*stage.commands, stage.batch_command]
        texts = [arg for command in commands for arg in command] + list(stage.files.values())
        for name in set().union(*(_referenced(t) for t in texts)) | set(stage.needs):
            if name not in by_name:
                raise PipelineError(f"stage {stage.name!r} refers to unknown stage {name!r}")
            if name not in stage.needs:
                raise PipelineError(
                    f"stage {stage.name!r} uses the folder of {name!r} but does not list it in needs"
                )
    ordered: list[Stage] = []
    state: dict[str, str] = {}

    def visit(stage: Stage, chain: tuple[str, ...]) -> None:
        if state.get(stage.name) == "done":
            return
        if state.get(stage.name) == "visiting":
            raise PipelineError(f"stage dependency cycle: {' -> '.join((*chain, stage.name))}")
        state[stage.name] = "visiting"
        for need in stage.needs:
            visit(by_name[need], (*chain, stage.name))
        state[stage.name] = "done"
        ordered.append(stage)

    for stage in stages:
        visit(stage, ())
    return ordered


def stage_hashes(stages: Sequence[Stage]) -> dict[str, str]:
    """name -> 12-hex hash of (config, commands, files, hashes of needs), computed in dependency order."""
    hashes: dict[str, str] = {}
    for stage in order_stages(stages):
        identity = {
            "config": stage.config,
            "commands": [command[1:] for command in stage.commands],  # not the interpreter's path
            "files": stage.files,
            "needs": {name: hashes[name] for name in sorted(stage.needs)},
        }
        text = json.dumps(identity, sort_keys=True, default=str)
        hashes[stage.name] = hashlib.sha256(text.encode()).hexdigest()[:12]
    return hashes


def shell_line(command: Sequence[str]) -> str:
    """A command as one copy-pasteable shell line (the interpreter shown as `python`)."""
    shown = ["python" if i == 0 and arg == sys.executable else arg for i, arg in enumerate(command)]
    return shlex.join(shown)


def downstream_counts(stages: Sequence[Stage]) -> dict[str, int]:
    """name -> number of stages that (directly or not) need it."""
    users: dict[str, set[str]] = {s.name: set() for s in stages}
    for stage in reversed(order_stages(stages)):
        for need in stage.needs:
            users[need] |= {stage.name} | users[stage.name]
    return {name: len(found) for name, found in users.items()}
