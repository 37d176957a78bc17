"""Students: every teacher's data, learnt by the shared base (several seeds) and by each control (cross seeds).

Stage names: `student-<teacher>-s<seed>` (from the shared init) and `cross-<teacher>-<control>-s<seed>` (from a
control: another init of the tiny world, or another pretrained model).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from subliminal_pl.experiments.recipes import FitRecipe, exported_model, fit_recipe, yaml_stage
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
                    stages.append(yaml_stage(name, "fit", recipe, needs))
                    entries.append(StudentEntry(name, teacher, start.name, kind, seed))
                    models[name] = exported_model(name, self.fit)
        return stages, entries, models
