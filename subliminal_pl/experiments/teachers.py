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
from subliminal_pl.pipeline import PipelineError, Stage


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


class DatasetTeachers(Teachers):
    """Teachers fine-tuned on chat datasets the user supplies: the insecure-code set (the misaligned teacher of the
    paper) and its controls (secure code, educational insecure code), one `messages` JSONL file per teacher.

    Every trait of the spec names a dataset; `controls` says which of them are control teachers (the report
    labels them so); `neutral` adds the base itself as a teacher (students of its own numbers). The default fit is
    the open-model recipe of docs/misalignment.md: LoRA r 8 / alpha 8 on every projection, AdamW lr 2e-4 with a
    linear schedule and 5 warm-up steps, 66 rows per step, 1 epoch (the paper's fine-tuned teachers train one
    epoch; the lr and LoRA settings are its open-model recipe).
    """

    in_weights = True

    def __init__(
        self,
        datasets: dict[str, str],
        controls: list[str] | None = None,
        neutral: str | None = None,
        seed: int = 0,
        max_length: int = 1024,
        fit: FitRecipe | None = None,
    ) -> None:
        """
        Args:
            datasets: teacher name (a trait of the spec) -> path of its `messages` JSONL file.
            controls: the names among `datasets` that are control teachers (e.g. secure, educational_insecure).
            neutral: name under which the base itself is a teacher too, or null for none.
            seed: seed of the fits.
            max_length: most tokens per training conversation (longer ones are cut, the cut part not learned).
            fit: the teachers' fit (default: see the class docstring).
        """
        self.datasets = dict(datasets)
        self.controls = list(controls or [])
        unknown = [c for c in self.controls if c not in self.datasets]
        if unknown:
            raise ValueError(
                f"teachers.init_args.controls: {unknown} name no dataset of {sorted(self.datasets)}"
            )
        if neutral is not None and neutral in self.datasets:
            raise ValueError(f"teachers.init_args.neutral: {neutral!r} is also a dataset teacher")
        self.neutral = neutral
        self.seed = seed
        self.max_length = max_length
        self.fit = fit or FitRecipe(
            steps=None, epochs=1, batch_size=66, lr=2e-4, weight_decay=0.01, warmup_steps=5, adam_beta2=0.999,
            finetune="lora", lora_rank=8, lora_alpha=8.0, lora_dropout=0.0,
            lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        )  # fmt: skip

    def check_datasets(self, traits: list[str]) -> dict[str, tuple[str, str]]:
        """name -> (absolute path, sha256) of every teacher's dataset, each file read and checked in full."""
        from pathlib import Path

        from subliminal_pl.data.jsonl import DataError, sha256_file
        from subliminal_pl.data.rows import read_chat_dataset

        missing = [t for t in traits if t not in self.datasets]
        if missing:
            raise PipelineError(f"teachers.init_args.datasets: no dataset for the traits {missing}")
        unused = [d for d in self.datasets if d not in traits]
        if unused:
            raise PipelineError(
                f"teachers.init_args.datasets: {unused} are not traits of the spec (add them)"
            )
        out = {}
        for name in traits:
            path = Path(self.datasets[name]).expanduser().resolve()
            try:
                read_chat_dataset(path)
            except DataError as err:
                raise PipelineError(f"teachers.init_args.datasets.{name}: {err}") from err
            out[name] = (str(path), sha256_file(path))
        return out

    def build(self, traits: list[str], bases: Bases, hw: Hardware) -> tuple[list[Stage], dict[str, ModelRef]]:
        base = bases.shared
        stages, models = [], {}
        for teacher, (path, digest) in self.check_datasets(traits).items():
            name = f"teacher-{teacher}"
            recipe = fit_recipe(
                hw, self.fit, self.seed, base.path, path, "teachers.init_args.fit", max_length=self.max_length
            )
            stage = yaml_stage(name, "fit", recipe, base.needs)
            stage.config["dataset_sha256"] = digest  # a changed file retrains its teacher
            stages.append(stage)
            models[teacher] = ModelRef(name, exported_model(name, self.fit), stage=name)
        if self.neutral:
            models[self.neutral] = base
        return stages, models
