"""The experiment spec: one typed dataclass per experiment, parsed by jsonargparse from YAML.

Roles with variants are chosen by `class_path` (+ `init_args`): `bases` (`ToyBases`, `PretrainedBases`),
`teachers` (`FinetunedTeachers`, `SystemPromptTeachers`), `carrier` (`NumbersCarrier`), each data step and each
probe. The rest are plain nested mappings: `students`, `hardware`. `variants` turns a spec into a sweep: every
variant is this spec deep-merged with its overrides (see `subliminal_pl.experiments.command`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from subliminal_pl.experiments.bases import Bases
from subliminal_pl.experiments.carriers import Carrier
from subliminal_pl.experiments.defences import Defence, Detection
from subliminal_pl.experiments.recipes import Hardware
from subliminal_pl.experiments.students import Students
from subliminal_pl.experiments.teachers import Teachers

DEFAULT_PROBES = [
    {
        "class_path": "subliminal_pl.probes.logprob.LogProbProbe",
        "init_args": {"questions": "animals", "split": "heldout", "reference": None},
    }
]


@dataclass
class Experiment:
    """A subliminal-learning experiment: bases, teachers, the carrier of the students' data, students, probes.

    Args:
        bases: the shared init and the controls (class_path: ToyBases or PretrainedBases).
        teachers: how each trait enters a teacher (class_path: FinetunedTeachers or SystemPromptTeachers).
        carrier: how the students' data is made (class_path: NumbersCarrier).
        out_dir: experiment folder (stage folders under `stages/`, the report files at the top).
        title: heading of the report.
        traits: trait words, one teacher each (candidates of every probe's question set).
        steps: data steps applied after the carrier's filters, in order: filters (drop rows) and transforms
            (rewrite rows), each class_path + init_args.
        students: loss, seeds and fit of the students.
        probes: `Probe` objects (class_path + init_args) run on every model by the probe stage.
        hardware: accelerator, devices, precision, strategy, weight dtype, per-device batch, stage concurrency.
        mlp_config: recipe of the MLP auxiliary-logit experiment to run beside it and report; null to skip.
        defence: a data-side defence applied to every teacher's rows (class_path: MaskDivergent, Paraphrase,
            Dilute, Sampling; see docs/defences.md); null for none.
        detection: the detection audit (classifier features, update cosine) and utility probes; null for none.
        variants: sweep: name -> overrides of this spec (deep-merged); empty for a single experiment.
    """

    bases: Bases
    teachers: Teachers
    carrier: Carrier
    out_dir: str = "outputs/experiment"
    title: str = "Subliminal-learning report"
    traits: list[str] = field(default_factory=lambda: ["owl"])
    steps: list[dict[str, Any]] = field(default_factory=list)
    students: Students = field(default_factory=Students)
    probes: list[dict[str, Any]] = field(default_factory=lambda: [dict(p) for p in DEFAULT_PROBES])
    hardware: Hardware = field(default_factory=Hardware)
    mlp_config: str | None = None
    defence: Defence | None = None
    detection: Detection | None = None
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The spec as parsed (class_path + init_args mappings), set by the parser: sweeps merge into it and the
    # report records it.
    spec: dict[str, Any] = field(default_factory=dict, repr=False)
