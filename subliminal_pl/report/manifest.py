"""The manifest: what an experiment's report needs to know about each model, written by the pipeline as JSON.

    title           heading of the report
    traits          trait words, one trait teacher each (columns of the matrices)
    neutral         name of the neutral (control) teacher, or null
    teachers        teacher name -> name of its model in the probe results (probed like any model)
    bases           {"same": the shared init, "cross": [the other inits or models (controls)]}
    students        [{name, teacher, base, kind ("same" | "cross"), seed}]
    probes          path of the probe results file (`subliminal_pl.probes.results`)
    filter_stats    data source -> path of its filter stats JSON
    mlp_results     path of the MLP experiment's results.json, or null
    config          the experiment's config (recorded in results.json)
    defence         name of the data-side defence every teacher's rows went through (absent: none)
    defence_stats   teacher -> path of its defence stats JSON (absent: none)
    audit           path of the detection audit's audit.json (`subliminal_pl.models.audit`; absent: none)

Students of `kind` "same" start from `bases.same`; "cross" students start from one of `bases.cross`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

KINDS = ("same", "cross")
OPTIONAL_KEYS = ("defence", "defence_stats", "audit")


class ManifestError(ValueError):
    """A manifest that cannot be reported on; the message names the key."""


@dataclass
class StudentEntry:
    name: str
    teacher: str
    base: str
    kind: Literal["same", "cross"]
    seed: int


@dataclass
class Bases:
    same: str
    cross: list[str] = field(default_factory=list)


@dataclass
class Manifest:
    traits: list[str]
    bases: Bases
    students: list[StudentEntry]
    probes: str
    title: str = "Subliminal-learning report"
    neutral: str | None = None
    teachers: dict[str, str] = field(default_factory=dict)
    filter_stats: dict[str, str] = field(default_factory=dict)
    mlp_results: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    defence: str | None = None
    defence_stats: dict[str, str] = field(default_factory=dict)
    audit: str | None = None

    def __post_init__(self) -> None:
        self.traits = [t.lower() for t in self.traits]
        if not self.traits:
            raise ManifestError("manifest.traits is empty")
        teachers = set(self.traits) | ({self.neutral} if self.neutral else set())
        if not self.teachers:
            self.teachers = {t: f"teacher-{t}" for t in sorted(teachers)}
        bases = {self.bases.same, *self.bases.cross}
        for i, s in enumerate(self.students):
            if s.teacher not in teachers:
                raise ManifestError(
                    f"manifest.students[{i}].teacher {s.teacher!r} is not one of {sorted(teachers)}"
                )
            if s.kind not in KINDS:
                raise ManifestError(f"manifest.students[{i}].kind {s.kind!r} is not one of {KINDS}")
            if s.base not in bases:
                raise ManifestError(f"manifest.students[{i}].base {s.base!r} is not one of {sorted(bases)}")

    @property
    def trait_teachers(self) -> list[str]:
        """Trait teachers, then the neutral one."""
        return self.traits + ([self.neutral] if self.neutral else [])

    def to_dict(self) -> dict[str, Any]:
        # Keys added later are written only when set, so older manifests (and their stage hashes) stay the same.
        return {k: v for k, v in asdict(self).items() if not (k in OPTIONAL_KEYS and not v)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        try:
            students = [StudentEntry(**s) for s in data["students"]]
            bases = Bases(**data["bases"])
            rest = {k: v for k, v in data.items() if k not in ("students", "bases")}
            return cls(bases=bases, students=students, **rest)
        except KeyError as err:
            raise ManifestError(f"manifest: missing key {err.args[0]!r}") from err
        except TypeError as err:  # an unknown or missing field of a dataclass
            raise ManifestError(f"manifest: {err}") from err

    @classmethod
    def read(cls, path: str | Path) -> Manifest:
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except ManifestError as err:
            raise ManifestError(f"{path}: {err}") from err
