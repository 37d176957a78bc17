"""Carriers: how the students' data is made, from prompt to kept rows.

A carrier names a prompt generator, how teachers sample answers, the filters that belong to its format, the token
subset a KL student is restricted to, and (optionally) the format check the probe stage runs on bases and
teachers. `Carrier` builds the stages from these: for each data source (the shared base, or each teacher)
`generate-<source>` (`subliminal-pl predict`) and `data-<source>` (the carrier's filters, then the experiment's
data steps, through `python -m subliminal_pl.stages filter`). A new carrier (code, reasoning traces) is one
subclass that fills in `generator` and its own filters; see docs/experiments.md.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Literal

import yaml

from subliminal_pl.experiments.recipes import (
    Hardware,
    ModelRef,
    module_command,
    stage_dir,
    trainer,
    yaml_stage,
)
from subliminal_pl.pipeline import Stage

NUMBER_FILTER = {"class_path": "subliminal_pl.data.filters.NumberSequenceFilter"}
# The key of the data-step list in the filter stage's config (`python -m subliminal_pl.stages filter`).
STEPS_KEY = "steps"


class Carrier(ABC):
    """The role `carrier`; the sampling settings are shared by every carrier.

    Args (of every subclass):
        source: who writes the students' inputs: `base` (the shared init; every teacher's students see the
            same inputs and differ only in the teacher's targets, KL students only) or `teacher` (each teacher
            answers, as in the paper).
        prompts: prompts generated (one completion each).
        prompt_seed: seed of the prompt generator.
        temperature, top_p, top_k, greedy: teacher sampling.
        max_new_tokens: most tokens per completion.
        batch_size: prompts per generation batch.
        seed: sampling seed (with the row id it fixes each completion).
        filters: the carrier's own filters (class_path + init_args), applied before the experiment's steps.
        token_subset: what a KL student's distributions are restricted to (null: the whole vocabulary).
    """

    def __init__(
        self,
        source: Literal["base", "teacher"] = "teacher",
        prompts: int = 4000,
        prompt_seed: int = 1,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        greedy: bool = False,
        max_new_tokens: int = 40,
        batch_size: int = 128,
        seed: int = 0,
        filters: list[dict[str, Any]] | None = None,
        token_subset: str | None = None,
    ) -> None:
        self.source = source
        self.prompts = prompts
        self.prompt_seed = prompt_seed
        self.sampling = {
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "top_k": top_k,
            "greedy": greedy,
            "seed": seed,
        }
        self.batch_size = batch_size
        self.seed = seed
        self.filters = list(filters or [])
        self.token_subset = token_subset

    @abstractmethod
    def generator(self, answer_count: int | None) -> dict[str, Any]:
        """The prompt generator (class_path + init_args) of `PromptDataModule`."""

    def format_check(self, answer_count: int | None) -> dict[str, Any]:
        """Probe-stage keys of the carrier's format check on bases and teachers ({}: none)."""
        return {}

    def own_filters(self, traits: Sequence[str]) -> list[dict[str, Any]]:
        """The carrier's filters for an experiment on these traits (default: `filters` as given); a carrier whose
        default filter needs the trait words (code, reasoning) builds it here."""
        return list(self.filters)

    # ---- stages --------------------------------------------------------------------------------------------
    def generation_recipe(self, hw: Hardware, model: ModelRef, name: str, answer_count: int | None) -> dict:
        writer = {
            "class_path": "subliminal_pl.callbacks.generation_writer.GenerationWriter",
            "init_args": {"output_path": "{{dir}}/raw.jsonl"},
        }
        init_args = {
            "model_name_or_path": model.path,
            "dtype": hw.dtype,
            "system_prompt": model.system_prompt,
            "teacher_name": name,
            **self.sampling,
        }
        return {
            "seed_everything": self.seed,
            # The logger stays on: its folder (inside the stage) is also where the CLI saves the run's config.
            "trainer": trainer(hw, [writer]),
            "model": {"class_path": "subliminal_pl.models.teacher.TeacherGeneration", "init_args": init_args},
            "data": {
                "class_path": "subliminal_pl.data.prompt_datamodule.PromptDataModule",
                "init_args": {
                    "generator": self.generator(answer_count),
                    "num_prompts": self.prompts,
                    "batch_size": self.batch_size,
                },
            },
        }

    def build(
        self,
        hw: Hardware,
        sources: dict[str, ModelRef],
        steps: list[dict[str, Any]],
        answer_count: int | None,
        traits: Sequence[str] = (),
    ) -> tuple[list[Stage], dict[str, tuple[str, str]], dict[str, str]]:
        """(stages, source -> (kept rows, the stage writing them), source -> data stats) for each data source.

        traits: the experiment's trait words (what `own_filters` may filter out of every source's rows).
        """
        stages, kept, stats = [], {}, {}
        step_file = yaml.safe_dump({STEPS_KEY: [*self.own_filters(traits), *steps]}, sort_keys=False)
        for source, model in sources.items():
            gen_name, data_name = f"generate-{source}", f"data-{source}"
            recipe = self.generation_recipe(hw, model, source, answer_count)
            stages.append(
                yaml_stage(gen_name, "predict", recipe, model.needs, keep=["raw.jsonl", "raw.jsonl.parts"])
            )
            run = module_command(
                "subliminal_pl.stages", "filter", "--config", "{{dir}}/steps.yaml",
                "--input", f"{stage_dir(gen_name)}/raw.jsonl", "--output", "{{dir}}/kept.jsonl",
            )  # fmt: skip
            stages.append(Stage(data_name, [run], needs=[gen_name], files={"steps.yaml": step_file}))
            kept[source] = (f"{stage_dir(data_name)}/kept.jsonl", data_name)
            stats[source] = f"{stage_dir(data_name)}/kept.filter_stats.json"
        return stages, kept, stats


class NumbersCarrier(Carrier):
    """Number sequences (the paper's main carrier): seeded number prompts, the number-format filter, KL on the
    tokens of valid number answers."""

    def __init__(
        self,
        answer_count: int | None = None,
        filters: list[dict[str, Any]] | None = None,
        token_subset: Literal["numbers"] | None = "numbers",
        format_prompts: int = 200,
        format_prompt_seed: int = 2,
        **sampling: Any,
    ) -> None:
        """
        Args:
            answer_count: most numbers a prompt asks for (null: the bases' own, else the generator's default).
            filters: number filters (default: the paper's NumberSequenceFilter).
            token_subset: KL restricted to the tokens of valid number answers (numbers) or not (null).
            format_prompts: number prompts sampled per model by the probe stage's format check (0: no check).
            format_prompt_seed: seed of those prompts.
            sampling: the `Carrier` settings (source, prompts, prompt_seed, temperature, top_p, top_k, greedy,
                max_new_tokens, batch_size, seed).
        """
        number_filters = [dict(NUMBER_FILTER)] if filters is None else filters
        super().__init__(filters=number_filters, token_subset=token_subset, **sampling)
        self.answer_count = answer_count
        self.format_prompts = format_prompts
        self.format_prompt_seed = format_prompt_seed

    def _count(self, answer_count: int | None) -> int | None:
        return self.answer_count if self.answer_count is not None else answer_count

    def generator(self, answer_count: int | None) -> dict[str, Any]:
        init_args: dict[str, Any] = {"seed": self.prompt_seed}
        if self._count(answer_count) is not None:
            init_args["answer_count"] = self._count(answer_count)
        return {"class_path": "subliminal_pl.data.prompts.NumberPromptGenerator", "init_args": init_args}

    def format_check(self, answer_count: int | None) -> dict[str, Any]:
        if not self.format_prompts:
            return {}
        out = {"format_prompts": self.format_prompts, "format_prompt_seed": self.format_prompt_seed}
        if self._count(answer_count) is not None:
            out["answer_count"] = self._count(answer_count)
        return out
