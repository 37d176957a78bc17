"""Students: every teacher's data, learnt by the shared base (several seeds) and by each control (cross seeds).

Stage names: `student-<teacher>-s<seed>` (from the shared init) and `cross-<teacher>-<control>-s<seed>` (from a
control: another init of the tiny world, or another pretrained model).

With `group: true` (the default) the students of one teacher that start from the same model form a batch: the
pipeline runs them as one process, `subliminal-pl fit-group` over their folders, which trains each member's own
recipe in turn (`subliminal_pl.fit_group`). Stages, folders, recipes and hashes are those of separate students,
and so is every result (bit for bit); the batch saves each student's interpreter start, imports and loading. A
member that finished is never trained again: its done marker and export survive an interrupted batch (`keep`),
and a student added later (another seed) forms a batch of its own with whatever else is unfinished.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from subliminal_pl.experiments.recipes import FitRecipe, cli_command, exported_model, fit_recipe, yaml_stage
from subliminal_pl.fit_group import KEEP as GROUP_KEEP
from subliminal_pl.report.manifest import StudentEntry

if TYPE_CHECKING:
    from subliminal_pl.experiments.recipes import Hardware, ModelRef
    from subliminal_pl.pipeline import Stage


@dataclass
class Students:
    """How students learn.

    Args:
        loss: sft (the teacher's sampled tokens), kl (the teacher's next-token distribution, restricted to the
            carrier's token subset) or sft+kl.
        seeds: seeds of the students that start from the shared base, per teacher.
        cross_seeds: seeds of the students that start from each control, per teacher.
        max_samples: kept rows a student trains on (null: all).
        max_length: most tokens per training row.
        fit: the students' fit (LoRA or full, steps or epochs, batch, optimiser).
        group: train the students of one teacher and one start in one process (`subliminal-pl fit-group`),
            one after another, with the results of separate runs; false: one process per student. Only used
            on one device (`hardware.devices: 1`, strategy auto); otherwise every student is its own process.
    """

    loss: Literal["sft", "kl", "sft+kl"] = "kl"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    cross_seeds: list[int] = field(default_factory=lambda: [0, 1])
    max_samples: int | None = None
    max_length: int = 256
    fit: FitRecipe = field(
        default_factory=lambda: FitRecipe(
            steps=100, batch_size=16, lr=5e-3, warmup_steps=5, finetune="lora", lora_rank=16, lora_alpha=16.0
        )
    )
    group: bool = True

    def build(
        self,
        hw: Hardware,
        shared: ModelRef,
        controls: list[ModelRef],
        teachers: dict[str, ModelRef],
        neutral: str | None,
        data: dict[str, tuple[str, str]],
        token_subset: str | None,
    ) -> tuple[list[Stage], list[StudentEntry], dict[str, str]]:
        """(stages, manifest entries, student name -> model) for every teacher, start and seed.

        data: teacher -> (kept rows file, stage that writes it).
        """
        stages, entries, models = [], [], {}
        grouped = self.group and hw.device_count() == 1 and hw.strategy == "auto"
        starts = [(shared, "same", self.seeds)] + [(c, "cross", self.cross_seeds) for c in controls]
        for teacher, model in teachers.items():
            rows, data_stage = data[teacher]
            for start, kind, seeds in starts:
                for seed in seeds:
                    name = (
                        f"student-{teacher}-s{seed}"
                        if kind == "same"
                        else f"cross-{teacher}-{start.name}-s{seed}"
                    )
                    recipe = fit_recipe(
                        hw,
                        self.fit,
                        seed,
                        start.path,
                        rows,
                        "students.fit",
                        loss=self.loss,
                        teacher=model.path if self.loss != "sft" else None,
                        token_subset=token_subset,
                        trait_words=None if teacher == neutral else [teacher],
                        max_samples=self.max_samples,
                        max_length=self.max_length,
                    )
                    needs = [*start.needs, data_stage, *(model.needs if self.loss != "sft" else [])]
                    stage = yaml_stage(name, "fit", recipe, needs)
                    if grouped:
                        stage.batch = f"students-{teacher}-{start.name}"
                        stage.batch_command = cli_command("fit-group")
                        stage.keep = list(GROUP_KEEP)
                    stages.append(stage)
                    entries.append(StudentEntry(name, teacher, start.name, kind, seed))
                    models[name] = exported_model(name, self.fit)
        return stages, entries, models
