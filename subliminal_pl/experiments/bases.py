"""Bases: the shared init that teachers and students start from, and the controls (other inits or models).

- `ToyBases`: tiny Llamas built and pretrained in the embedded tiny world (a world stage, then one stage per
  init seed); the first seed is the shared init, the others are cross-init controls.
- `PretrainedBases`: a Hugging Face model (hub id or directory, optionally with an adapter merged in by a stage),
  plus other pretrained models as cross-model controls.

`python -m subliminal_pl.experiments.bases merge ...` is the stage command that merges an adapter into a base.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass

import yaml

from subliminal_pl.experiments.recipes import (
    FitRecipe,
    Hardware,
    ModelRef,
    fit_recipe,
    module_command,
    stage_dir,
    yaml_stage,
)
from subliminal_pl.pipeline import Stage
from subliminal_pl.toy.world import ToyWorld


class Bases(ABC):
    """The role `bases`: which models teachers and students start from."""

    @abstractmethod
    def stages(self, hw: Hardware) -> list[Stage]:
        """Stages that make the bases (none for models that already exist)."""

    @property
    @abstractmethod
    def shared(self) -> ModelRef:
        """The shared init: every teacher and every same-init student starts here."""

    @property
    @abstractmethod
    def controls(self) -> list[ModelRef]:
        """Other inits or models whose students (of the same teachers, on the same data) are the control."""

    def trait_rows_command(self, trait: str | None, rows: int, seed: int, output: str) -> list[str] | None:
        """A command writing fine-tuning rows that put `trait` in a teacher's weights (None: the neutral
        teacher, which is then the shared base itself)."""
        if trait is None:
            return None
        return module_command("subliminal_pl.cli", "trait-rows", "--word", trait, "--output", output)

    @property
    def answer_count(self) -> int | None:
        """Most numbers a number prompt asks for, when the bases fix it (the tiny world does)."""
        return None

    @property
    def question_sets(self) -> list[str]:
        """Question sets whose candidates the traits must be among, beyond the probes' own."""
        return []

    @property
    def other_traits(self) -> tuple[str, ...]:
        """Traits these bases know beyond the candidates of `question_sets` (e.g. the tiny world's dispositions)."""
        return ()


@dataclass
class ModelShape:
    """Tiny Llama shape (`subliminal_pl.toy.model.build_tiny_llama`)."""

    hidden_size: int = 96
    num_layers: int = 3
    num_heads: int = 4
    intermediate_size: int | None = None
    max_positions: int = 256


class ToyBases(Bases):
    def __init__(
        self,
        world: ToyWorld | None = None,
        model: ModelShape | None = None,
        seed: int = 0,
        cross_seeds: list[int] | None = None,
        pretrain: FitRecipe | None = None,
    ) -> None:
        """
        Args:
            world: the tiny world (`subliminal_pl.toy.world.ToyWorld`: seed, rows, fractions, ...).
            model: tiny Llama shape of every base.
            seed: init seed of the shared base (teachers and students start from it).
            cross_seeds: init seeds of the other bases, whose students are the cross-init control.
            pretrain: pretraining fit (SFT on the corpus, full fine-tuning) of every base.
        """
        self.world = world or ToyWorld()
        self.model = model or ModelShape()
        self.seed = seed
        self.cross_seeds = [1] if cross_seeds is None else list(cross_seeds)
        self.pretrain = pretrain or FitRecipe(steps=800, batch_size=64, lr=2e-3)
        if self.pretrain.finetune != "full":
            raise ValueError(
                "bases.init_args.pretrain.finetune must be full (a base trains from its random init)"
            )
        seeds = [self.seed, *self.cross_seeds]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"bases.init_args: seed and cross_seeds must all differ, got {seeds}")

    def _ref(self, seed: int) -> ModelRef:
        name = f"base-s{seed}"
        return ModelRef(name, f"{stage_dir(name)}/model", stage=name)

    @property
    def shared(self) -> ModelRef:
        return self._ref(self.seed)

    @property
    def controls(self) -> list[ModelRef]:
        return [self._ref(s) for s in self.cross_seeds]

    @property
    def answer_count(self) -> int:
        return self.world.answer_count

    @property
    def question_sets(self) -> list[str]:
        return [self.world.questions]

    @property
    def other_traits(self) -> tuple[str, ...]:
        # A world with dilemmas also knows the dispositions (harmful, harmless) as traits.
        if self.world.dilemma_fraction > 0:
            from subliminal_pl.toy.dilemmas import dispositions

            return dispositions()
        return ()

    def stages(self, hw: Hardware) -> list[Stage]:
        world_file = yaml.safe_dump({"world": self.world.config()}, sort_keys=False)
        build = module_command(
            "subliminal_pl.toy.world", "build", "--config", "{{dir}}/world.yaml", "--output_dir", "{{dir}}"
        )
        stages = [Stage("world", [build], files={"world.yaml": world_file})]
        # Random init, then pretraining on the corpus with the student fit module.
        for seed in [self.seed, *self.cross_seeds]:
            init = {"tokenizer_dir": "{{dir:world}}/tokenizer", "output_dir": "{{dir}}/init", "seed": seed}
            init.update(asdict(self.model))
            recipe = fit_recipe(
                hw, self.pretrain, seed, "{{dir}}/init", "{{dir:world}}/corpus.jsonl", "bases.pretrain"
            )
            make_init = module_command("subliminal_pl.toy.world", "init", "--config", "{{dir}}/init.yaml")
            files = {"init.yaml": yaml.safe_dump(init, sort_keys=False)}
            stages.append(
                yaml_stage(f"base-s{seed}", "fit", recipe, ["world"], before=[make_init], files=files)
            )
        return stages

    def trait_rows_command(self, trait: str | None, rows: int, seed: int, output: str) -> list[str]:
        # The tiny world writes its own rows (its question mix); its neutral teacher answers uniformly.
        return module_command(
            "subliminal_pl.toy.world", "traits", "--config", "{{dir:world}}/world.yaml",
            "--trait", trait or "neutral", "--rows", str(rows), "--seed", str(seed), "--output", output,
        )  # fmt: skip


@dataclass
class PretrainedModel:
    """A pretrained control model: a hub id or directory, and its name in the report (letters, digits, _.-)."""

    model_name_or_path: str
    name: str


class PretrainedBases(Bases):
    def __init__(
        self,
        model_name_or_path: str,
        adapter_path: str | None = None,
        name: str = "base",
        controls: list[PretrainedModel] | None = None,
    ) -> None:
        """
        Args:
            model_name_or_path: the shared init: a hub id (e.g. Qwen/Qwen2.5-7B-Instruct) or a local directory.
            adapter_path: a PEFT adapter merged into it first (by a stage), e.g. an earlier fine-tune.
            name: its name in the probe results and the report.
            controls: other pretrained models (another family or size): their students learn from the same
                teachers' data and are the cross-model control.
        """
        self.model_name_or_path = model_name_or_path
        self.adapter_path = adapter_path
        self.name = name
        self.control_models = list(controls or [])
        names = [name, *(c.name for c in self.control_models)]
        if len(set(names)) != len(names):
            raise ValueError(f"bases.init_args: model names must all differ, got {names}")

    @property
    def shared(self) -> ModelRef:
        if self.adapter_path:
            return ModelRef(self.name, f"{stage_dir(self.name)}/model", stage=self.name)
        return ModelRef(self.name, self.model_name_or_path)

    @property
    def controls(self) -> list[ModelRef]:
        return [ModelRef(c.name, c.model_name_or_path) for c in self.control_models]

    def sources(self) -> dict[str, str]:
        """Spec key -> hub id or directory of every model these bases read (checked before any stage runs)."""
        out = {"bases.init_args.model_name_or_path": self.model_name_or_path}
        if self.adapter_path:
            out["bases.init_args.adapter_path"] = self.adapter_path
        for i, c in enumerate(self.control_models):
            out[f"bases.init_args.controls[{i}].model_name_or_path"] = c.model_name_or_path
        return out

    def stages(self, hw: Hardware) -> list[Stage]:
        if not self.adapter_path:
            return []
        merge = module_command(
            "subliminal_pl.experiments.bases", "merge", "--model_name_or_path", self.model_name_or_path,
            "--adapter_path", self.adapter_path, "--dtype", hw.dtype, "--output_dir", "{{dir}}/model",
        )  # fmt: skip
        return [Stage(self.name, [merge])]


def merge_adapter(
    model_name_or_path: str, adapter_path: str, output_dir: str, dtype: str = "float32"
) -> None:
    """Write `model_name_or_path` with the adapter folded in, and its tokenizer, to `output_dir`."""
    from subliminal_pl.data.hub import load_tokenizer
    from subliminal_pl.models.loading import load_causal_lm

    model = load_causal_lm(model_name_or_path, dtype=dtype, adapter_path=adapter_path)
    model.save_pretrained(output_dir)
    load_tokenizer(model_name_or_path).save_pretrained(output_dir)


def main(argv: list[str]) -> None:
    from subliminal_pl.commands import command_parser

    parser = command_parser(
        "python -m subliminal_pl.experiments.bases", __doc__.splitlines()[0], config=False
    )
    merge = command_parser(None, "Merge a PEFT adapter into its base model and save both with the tokenizer.")
    merge.add_function_arguments(merge_adapter)
    parser.add_subcommands().add_subcommand("merge", merge)
    args = parser.parse_args(argv)
    options = {k: v for k, v in args.merge.as_dict().items() if k != "config"}
    merge_adapter(**options)
    print(f"wrote {options['output_dir']}")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
