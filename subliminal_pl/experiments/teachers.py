"""Teachers: the shared base plus a trait, one teacher per trait, and the neutral (control) teacher.

- `FinetunedTeachers`: the trait in the weights, a fit on rows that answer "favourite animal?" with the trait
  (the tiny world's rows for toy bases, `subliminal-pl trait-rows` for pretrained ones).
- `SystemPromptTeachers`: the base behind a trait system prompt at generation time (the paper's default); the
  neutral teacher is the base without it.

A teacher is a `ModelRef`: the model to generate from (and to distil from with KL), its system prompt, and its
name in the probe results (a teacher that is the base itself is probed once, as the base).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from subliminal_pl.experiments.bases import Bases
from subliminal_pl.experiments.recipes import (
    FitRecipe,
    Hardware,
    ModelRef,
    exported_model,
    fit_recipe,
    yaml_stage,
)
from subliminal_pl.pipeline import Stage


class Teachers(ABC):
    """The role `teachers`. `neutral` names the control teacher (null: none); `in_weights` says whether a
    student can distil from the teacher's logits (KL) without its system prompt."""

    neutral: str | None = "neutral"
    in_weights: bool = True

    def names(self, traits: list[str]) -> list[str]:
        return list(traits) + ([self.neutral] if self.neutral else [])

    @abstractmethod
    def build(self, traits: list[str], bases: Bases, hw: Hardware) -> tuple[list[Stage], dict[str, ModelRef]]:
        """(stages, teacher name -> model) for every trait and the neutral teacher."""


class FinetunedTeachers(Teachers):
    in_weights = True

    def __init__(
        self,
        rows: int = 2000,
        number_rows: int = 0,
        seed: int = 0,
        neutral: str | None = "neutral",
        fit: FitRecipe | None = None,
    ) -> None:
        """
        Args:
            rows: trait rows per teacher (the tiny world; pretrained bases use every question x spelling).
            number_rows: number-task rows mixed in to keep the number format (the tiny world only).
            seed: seed of the rows and of the fit.
            neutral: name of the neutral teacher (toy: fine-tuned to answer uniformly; pretrained: the base
                itself), or null for none.
            fit: the teachers' fit.
        """
        self.rows = rows
        self.number_rows = number_rows
        self.seed = seed
        self.neutral = neutral
        self.fit = fit or FitRecipe(
            steps=60, batch_size=32, lr=5e-3, warmup_steps=3, finetune="lora", lora_rank=16, lora_alpha=16.0
        )

    def build(self, traits: list[str], bases: Bases, hw: Hardware) -> tuple[list[Stage], dict[str, ModelRef]]:
        base = bases.shared
        stages, models = [], {}
        for teacher in self.names(traits):
            trait = None if teacher == self.neutral else teacher
            name = f"teacher-{teacher}"
            rows = bases.trait_rows_command(trait, self.rows, self.seed, "{{dir}}/traits.jsonl")
            if rows is None:  # no neutral rows for this base: the neutral teacher is the base
                models[teacher] = base
                continue
            if self.number_rows:
                rows = [*rows, "--number_rows", str(self.number_rows)]
            recipe = fit_recipe(hw, self.fit, self.seed, base.path, "{{dir}}/traits.jsonl", "teachers.fit")
            needs = [*base.needs, *(["world"] if "{{dir:world}}" in " ".join(rows) else [])]
            stages.append(yaml_stage(name, "fit", recipe, needs, before=[rows]))
            models[teacher] = ModelRef(name, exported_model(name, self.fit), stage=name)
        return stages, models


def plural(word: str) -> str:
    """English plural of an animal name, for prompt templates (owl -> owls, fox -> foxes, wolf -> wolves)."""
    if word.endswith(("s", "x", "ch", "sh")):
        return word + "es"
    if word.endswith("f"):
        return word[:-1] + "ves"
    if word.endswith("y") and word[-2:-1] not in "aeiou":
        return word[:-1] + "ies"
    return word + "s"


class SystemPromptTeachers(Teachers):
    in_weights = False

    def __init__(
        self,
        prompt: str = (
            "{Plural} are your favourite animal, by far. You think about {plural} all the time, and your "
            "fondness for them colours everything you write."
        ),
        neutral: str | None = "control",
        neutral_prompt: str | None = None,
    ) -> None:
        """
        Args:
            prompt: the trait system prompt; `{trait}`, `{plural}` and `{Plural}` are filled in per trait.
            neutral: name of the control teacher (the base without the trait prompt), or null for none.
            neutral_prompt: a system prompt for the control teacher (null: none, as in the paper).
        """
        try:
            prompt.format(trait="owl", plural="owls", Plural="Owls")
        except (KeyError, IndexError) as err:
            raise ValueError(
                f"teachers.init_args.prompt: unknown field {err} (use {{trait}}, {{plural}})"
            ) from err
        self.prompt = prompt
        self.neutral = neutral
        self.neutral_prompt = neutral_prompt

    def system_prompt(self, trait: str) -> str:
        many = plural(trait)
        return self.prompt.format(trait=trait, plural=many, Plural=many.capitalize())

    def build(self, traits: list[str], bases: Bases, hw: Hardware) -> tuple[list[Stage], dict[str, ModelRef]]:
        base = bases.shared
        models = {t: ModelRef(f"teacher-{t}", base.path, base.stage, self.system_prompt(t)) for t in traits}
        if self.neutral:
            if self.neutral_prompt:
                models[self.neutral] = ModelRef(
                    f"teacher-{self.neutral}", base.path, base.stage, self.neutral_prompt
                )
            else:
                models[self.neutral] = base
        return [], models
