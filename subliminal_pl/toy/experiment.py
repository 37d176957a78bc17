"""The toy subliminal-learning experiment as pipeline stages, and the `subliminal-pl pipeline` command.

Stages (each a separate process, cached by `subliminal_pl.pipeline`):

    world                         tokenizer + pretraining corpus (`subliminal-pl toy-world build`)
    base-s<seed>                  random init, then pretraining with the student fit module (SFT on the corpus);
                                  the first base is the shared init, the others are the cross-init controls
    teacher-<trait>               the first base fine-tuned on "favourite animal -> <trait>" rows (trait in the
                                  weights); teacher-neutral answers uniformly over all animals
    generate-<source>             number-task completions (`subliminal-pl predict`), from the base (inputs shared
                                  by every teacher) or from each teacher
    filter-<source>               the paper's number filter; kept rows + reject counts
    student-<teacher>-s<seed>     the first base distilled from the teacher on the kept rows (KL on number tokens,
                                  or SFT on the teacher's own completions)
    cross-<teacher>-b<b>-s<seed>  the same, starting from another base (another init)
    probes                        log-probability of every animal after held-out questions, for every model;
                                  number-format pass rate of bases and teachers
    mlp                           the auxiliary-logit MLP experiment (`subliminal-pl fit`), optional
    report                        report.md, results.json and PNG plots (`subliminal_pl.report`)

A config with `variants` is a sweep: every variant (the base config deep-merged with its overrides) runs as its
own experiment in the same output folder, so stages they share (the world, the bases) run once.
"""

from __future__ import annotations

import copy
import hashlib
import shutil
import signal
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from subliminal_pl.pipeline import Pipeline, PipelineError, Stage
from subliminal_pl.toy.world import ToyWorld

PY = sys.executable
REPORT_FILES = ("report.md", "results.json")


@dataclass
class ModelShape:
    """Tiny Llama shape (`subliminal_pl.toy.model.build_tiny_llama`)."""

    hidden_size: int = 96
    num_layers: int = 3
    num_heads: int = 4
    intermediate_size: int | None = None
    max_positions: int = 256


@dataclass
class FitRecipe:
    """One fit with the student module: optimiser steps, batch, AdamW (lr, decay, beta2), clipping, LoRA or full."""

    steps: int = 100
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: Literal["linear", "constant"] = "linear"
    adam_beta2: float = 0.98
    gradient_clip_val: float | None = 1.0
    finetune: Literal["full", "lora"] = "full"
    lora_rank: int = 8
    lora_alpha: float = 8.0


@dataclass
class TeacherConfig:
    """Fine-tuned teachers: `rows` question -> answer rows per teacher (plus `number_rows` number-task rows that
    keep the number format), trained with `fit`."""

    rows: int = 2000
    number_rows: int = 0
    seed: int = 0
    neutral: bool = True
    fit: FitRecipe = field(
        default_factory=lambda: FitRecipe(
            steps=60, batch_size=32, lr=5e-3, warmup_steps=3, finetune="lora", lora_rank=16, lora_alpha=16.0
        )
    )


@dataclass
class GenerationConfig:
    """Number-task completions the students train on.

    source: `base` (the shared init answers; every teacher's students see the same inputs and differ only in the
        teacher's targets) or `teacher` (each teacher answers, as in the paper).
    """

    source: Literal["base", "teacher"] = "base"
    prompts: int = 4000
    prompt_seed: int = 1
    temperature: float = 1.0
    greedy: bool = False
    max_new_tokens: int = 40
    batch_size: int = 128
    seed: int = 0


@dataclass
class StudentConfig:
    """Students: `loss` kl (teacher's next-token distribution on number tokens) or sft (teacher's sampled tokens)."""

    loss: Literal["kl", "sft", "sft+kl"] = "kl"
    token_subset: Literal["numbers"] | None = "numbers"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    cross_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    max_samples: int | None = None
    fit: FitRecipe = field(
        default_factory=lambda: FitRecipe(
            steps=100, batch_size=16, lr=5e-3, warmup_steps=5, finetune="lora", lora_rank=16, lora_alpha=16.0
        )
    )


@dataclass
class ProbeConfig:
    """Trait probes: held-out favourite-animal questions, every candidate animal scored by log-probability."""

    questions: str = "animals"
    split: Literal["heldout", "teacher", "all"] = "heldout"
    numbers_prefix_seed: int | None = None
    format_prompts: int = 200
    format_prompt_seed: int = 2


@dataclass
class ToyExperiment:
    """A subliminal-learning experiment in the embedded tiny world.

    Args:
        out_dir: experiment folder (stage folders under `stages/`, the report files at the top).
        world: the tiny world (`subliminal_pl.toy.world.ToyWorld`: seed, rows, fractions, ...).
        model: tiny Llama shape of every base.
        base_seed: init seed of the shared base (teachers and students start from it).
        cross_base_seeds: init seeds of the other bases whose students are the cross-init control.
        pretrain: pretraining fit (SFT on the corpus) of every base.
        traits: trait animals, one fine-tuned teacher each (candidates of the probe question set).
        teacher: teacher rows and fit.
        generation: the students' training inputs.
        filters: row filters (class_path + init_args) applied to generated rows (default: the number filter).
        student: student loss, seeds and fit.
        probes: probe settings.
        mlp_config: recipe of the MLP auxiliary-logit experiment to run and include; null to skip.
        accelerator: Lightning accelerator of every fit and predict (cpu for the embedded demo).
        jobs: stages run at the same time (2 on a 2-core laptop).
        variants: sweep: name -> overrides of this config (deep-merged); empty for a single experiment.
    """

    out_dir: str = "outputs/toy"
    world: ToyWorld = field(default_factory=ToyWorld)
    model: ModelShape = field(default_factory=ModelShape)
    base_seed: int = 0
    cross_base_seeds: list[int] = field(default_factory=lambda: [1])
    pretrain: FitRecipe = field(default_factory=lambda: FitRecipe(steps=800, batch_size=64, lr=2e-3))
    traits: list[str] = field(default_factory=lambda: ["owl", "dolphin", "eagle", "wolf"])
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    filters: list[dict[str, Any]] = field(
        default_factory=lambda: [{"class_path": "subliminal_pl.data.filters.NumberSequenceFilter"}]
    )
    student: StudentConfig = field(default_factory=StudentConfig)
    probes: ProbeConfig = field(default_factory=ProbeConfig)
    mlp_config: str | None = "configs/mlp/aux_digits.yaml"
    accelerator: str = "cpu"
    jobs: int = 2
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)


# ---- recipes ----------------------------------------------------------------------------------------------------
def _dump(recipe: dict[str, Any], command: str) -> str:
    return f"# {command} --config <this file>  (written by subliminal-pl pipeline)\n" + yaml.safe_dump(
        recipe, sort_keys=False
    )


def _trainer(exp: ToyExperiment, steps: int | None, callbacks: list[dict]) -> dict[str, Any]:
    trainer: dict[str, Any] = {
        "accelerator": exp.accelerator,
        "devices": 1,
        "precision": "32-true",
        "logger": {
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": "{{dir}}", "name": "logs", "version": "run"},
        },
        "callbacks": callbacks,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
        "log_every_n_steps": 10,
    }
    if steps is not None:
        trainer.update({"max_steps": steps, "max_epochs": -1})
    return trainer


def fit_recipe(
    exp: ToyExperiment,
    recipe: FitRecipe,
    seed: int,
    model: str,
    data_path: str,
    loss: str = "sft",
    teacher: str | None = None,
    token_subset: str | None = None,
    trait_words: list[str] | None = None,
    max_samples: int | None = None,
    max_length: int = 256,
) -> dict[str, Any]:
    """A `subliminal-pl fit` recipe: StudentDistillation on a StudentDataModule, exporting to `{{dir}}/model`."""
    lora = recipe.finetune == "lora"
    export = {
        "class_path": "subliminal_pl.callbacks.export.ExportModel",
        "init_args": {"output_dir": "{{dir}}/model", "merged": lora},
    }
    init_args: dict[str, Any] = {
        "model_name_or_path": model,
        "finetune": recipe.finetune,
        "loss": loss,
        "optimizer": {
            "class_path": "torch.optim.AdamW",
            "init_args": {
                "lr": recipe.lr,
                "weight_decay": recipe.weight_decay,
                "betas": [0.9, recipe.adam_beta2],
            },
        },
        "warmup_steps": recipe.warmup_steps,
        "lr_schedule": recipe.lr_schedule,
    }
    if lora:
        init_args.update({"lora_rank": recipe.lora_rank, "lora_alpha": recipe.lora_alpha})
    if loss != "sft":
        init_args.update({"kl_teacher": teacher, "kl_token_subset": token_subset, "trait_words": trait_words})
    trainer = _trainer(exp, recipe.steps, [export])
    trainer["gradient_clip_val"] = recipe.gradient_clip_val
    return {
        "seed_everything": seed,
        "trainer": trainer,
        "model": {"class_path": "subliminal_pl.models.student.StudentDistillation", "init_args": init_args},
        "data": {
            "class_path": "subliminal_pl.data.student.StudentDataModule",
            "init_args": {
                "data_path": data_path,
                "tokenizer": model,
                "batch_size": recipe.batch_size,
                "seed": seed,
                "max_samples": max_samples,
                "max_length": max_length,
                "output_dir": "{{dir}}",
            },
        },
    }


def model_dir(stage: str, recipe: FitRecipe) -> str:
    """Where a fit stage's exported model lives (LoRA runs export the merged model beside the adapter)."""
    return f"{_dir(stage)}/model" + ("/merged" if recipe.finetune == "lora" else "")


def generation_recipe(exp: ToyExperiment, model: str, name: str) -> dict[str, Any]:
    gen = exp.generation
    writer = {
        "class_path": "subliminal_pl.callbacks.generation_writer.GenerationWriter",
        "init_args": {"output_path": "{{dir}}/raw.jsonl"},
    }
    # The logger stays on: its folder (inside the stage) is also where the CLI saves this run's config.yaml.
    trainer = _trainer(exp, None, [writer])
    return {
        "seed_everything": gen.seed,
        "trainer": trainer,
        "model": {
            "class_path": "subliminal_pl.models.teacher.TeacherGeneration",
            "init_args": {
                "model_name_or_path": model,
                "dtype": "float32",
                "teacher_name": name,
                "max_new_tokens": gen.max_new_tokens,
                "temperature": gen.temperature,
                "greedy": gen.greedy,
                "seed": gen.seed,
            },
        },
        "data": {
            "class_path": "subliminal_pl.data.prompt_datamodule.PromptDataModule",
            "init_args": {
                "generator": {
                    "class_path": "subliminal_pl.data.prompts.NumberPromptGenerator",
                    "init_args": {"seed": gen.prompt_seed, "answer_count": exp.world.answer_count},
                },
                "num_prompts": gen.prompts,
                "batch_size": gen.batch_size,
            },
        },
    }


# ---- the stage graph ----------------------------------------------------------------------------------------------
def _module(module: str, *args: str) -> list[str]:
    return [PY, "-m", module, *args]


def _cli(*args: str) -> list[str]:
    return _module("subliminal_pl.cli", *args)


def _yaml_stage(
    name: str,
    command: str,
    recipe: dict[str, Any],
    needs: list[str],
    before: list[list[str]] | None = None,
    files: dict[str, str] | None = None,
    keep: list[str] | None = None,
) -> Stage:
    """A stage that runs `subliminal-pl <command> --config recipe.yaml`, after the `before` commands."""
    return Stage(
        name=name,
        commands=[*(before or []), _cli(command, "--config", "{{dir}}/recipe.yaml")],
        needs=needs,
        files={"recipe.yaml": _dump(recipe, f"subliminal-pl {command}"), **(files or {})},
        keep=keep or [],
    )


def _dir(stage: str) -> str:
    return f"{{{{dir:{stage}}}}}"


def build_stages(exp: ToyExperiment, repo_root: Path | None = None) -> tuple[list[Stage], dict[str, Any]]:
    """The experiment's stages and a manifest that tells the report what each model is."""
    world = exp.world
    animals = world.animals
    unknown = [t for t in exp.traits if t.lower() not in animals]
    if unknown or not exp.traits:
        raise PipelineError(
            f"traits {exp.traits} must be candidates of question set {world.questions!r}: {animals}"
        )
    if exp.student.loss == "sft" and exp.generation.source == "base":
        raise PipelineError("student.loss=sft learns the generated tokens: set generation.source=teacher")
    if exp.pretrain.finetune != "full":
        raise PipelineError("pretrain.finetune must be full (a base is trained from its random init)")
    if exp.base_seed in exp.cross_base_seeds or len(set(exp.cross_base_seeds)) != len(exp.cross_base_seeds):
        raise PipelineError("base_seed and cross_base_seeds must all differ")
    world_file = yaml.safe_dump({"world": asdict(world)}, sort_keys=False)
    build = _module(
        "subliminal_pl.toy.world", "build", "--config", "{{dir}}/world.yaml", "--output_dir", "{{dir}}"
    )
    stages = [Stage("world", [build], files={"world.yaml": world_file})]

    # Bases: random init, then pretraining on the corpus with the student fit module.
    base_names = {seed: f"base-s{seed}" for seed in [exp.base_seed, *exp.cross_base_seeds]}
    for seed, name in base_names.items():
        init = {"tokenizer_dir": "{{dir:world}}/tokenizer", "output_dir": "{{dir}}/init", "seed": seed}
        init.update(asdict(exp.model))
        recipe = fit_recipe(exp, exp.pretrain, seed, "{{dir}}/init", "{{dir:world}}/corpus.jsonl")
        make_init = _module("subliminal_pl.toy.world", "init", "--config", "{{dir}}/init.yaml")
        files = {"init.yaml": yaml.safe_dump(init, sort_keys=False)}
        stages.append(_yaml_stage(name, "fit", recipe, ["world"], before=[make_init], files=files))
    base = base_names[exp.base_seed]
    base_model = f"{_dir(base)}/model"

    # Teachers: the shared base fine-tuned to love one animal (or, neutral, none in particular).
    teachers = list(exp.traits) + (["neutral"] if exp.teacher.neutral else [])
    teacher_models = {}
    for trait in teachers:
        name = f"teacher-{trait}"
        rows = _module(
            "subliminal_pl.toy.world", "traits", "--config", "{{dir:world}}/world.yaml", "--trait", trait,
            "--rows", str(exp.teacher.rows), "--seed", str(exp.teacher.seed), "--output", "{{dir}}/traits.jsonl",
        )  # fmt: skip
        if exp.teacher.number_rows:
            rows += ["--number_rows", str(exp.teacher.number_rows)]
        recipe = fit_recipe(exp, exp.teacher.fit, exp.teacher.seed, base_model, "{{dir}}/traits.jsonl")
        stages.append(_yaml_stage(name, "fit", recipe, ["world", base], before=[rows]))
        teacher_models[trait] = model_dir(name, exp.teacher.fit)

    # Student inputs: generated, then filtered.
    sources = ["base"] if exp.generation.source == "base" else teachers
    filtered = {}
    filter_stats = {}
    for source in sources:
        gen_name, filter_name = f"generate-{source}", f"filter-{source}"
        model = base_model if source == "base" else teacher_models[source]
        needs = [base] if source == "base" else [base, f"teacher-{source}"]
        stages.append(
            _yaml_stage(
                gen_name,
                "predict",
                generation_recipe(exp, model, source),
                needs,
                keep=["raw.jsonl", "raw.jsonl.parts"],
            )
        )
        filters = yaml.safe_dump({"steps": exp.filters}, sort_keys=False)
        run_filter = _module(
            "subliminal_pl.stages", "filter", "--config", "{{dir}}/filters.yaml",
            "--input", f"{_dir(gen_name)}/raw.jsonl", "--output", "{{dir}}/kept.jsonl",
        )  # fmt: skip
        stages.append(Stage(filter_name, [run_filter], needs=[gen_name], files={"filters.yaml": filters}))
        filtered[source] = f"{_dir(filter_name)}/kept.jsonl"
        filter_stats[source] = f"{_dir(filter_name)}/kept.filter_stats.json"

    # Students: same init (the shared base) and cross init (the other bases), same teachers and data.
    students = []
    st = exp.student
    for trait in teachers:
        source = "base" if exp.generation.source == "base" else trait
        for base_seed, seeds in [(exp.base_seed, st.seeds)] + [
            (b, st.cross_seeds) for b in exp.cross_base_seeds
        ]:
            kind = "same" if base_seed == exp.base_seed else "cross"
            for seed in seeds:
                name = f"student-{trait}-s{seed}" if kind == "same" else f"cross-{trait}-b{base_seed}-s{seed}"
                start = f"{_dir(base_names[base_seed])}/model"
                recipe = fit_recipe(
                    exp,
                    st.fit,
                    seed,
                    start,
                    filtered[source],
                    loss=st.loss,
                    teacher=teacher_models[trait] if st.loss != "sft" else None,
                    token_subset=st.token_subset,
                    trait_words=None if trait == "neutral" else [trait],
                    max_samples=st.max_samples,
                )
                needs = sorted({base_names[base_seed], f"teacher-{trait}", f"filter-{source}"})
                stages.append(_yaml_stage(name, "fit", recipe, needs))
                students.append(
                    {
                        "name": name,
                        "teacher": trait,
                        "base": base_names[base_seed],
                        "kind": kind,
                        "seed": seed,
                    }
                )

    # Probes over every model, in one process.
    models = {b: f"{_dir(b)}/model" for b in base_names.values()}
    models.update({f"teacher-{t}": teacher_models[t] for t in teachers})
    models.update({s["name"]: model_dir(s["name"], st.fit) for s in students})
    format_check = [*base_names.values(), *(f"teacher-{t}" for t in teachers)]
    pr = exp.probes
    probe_file = {
        "models": models,
        "format_check": format_check,
        "questions": pr.questions,
        "split": pr.split,
        "numbers_prefix_seed": pr.numbers_prefix_seed,
        "format_prompts": pr.format_prompts,
        "format_prompt_seed": pr.format_prompt_seed,
        "answer_count": world.answer_count,
    }
    stage_needs = [s.name for s in stages if s.name.startswith(("base-", "teacher-", "student-", "cross-"))]
    stages.append(
        Stage(
            "probes",
            [
                [
                    PY,
                    "-m",
                    "subliminal_pl.stages",
                    "probe",
                    "--config",
                    "{{dir}}/probe.yaml",
                    "--out",
                    "{{dir}}",
                ]
            ],
            needs=stage_needs,
            files={"probe.yaml": yaml.safe_dump(probe_file, sort_keys=False)},
        )
    )

    mlp_results = None
    if exp.mlp_config:
        mlp_path = Path(exp.mlp_config)
        if not mlp_path.is_absolute() and repo_root is not None and not mlp_path.exists():
            mlp_path = repo_root / mlp_path
        if not mlp_path.is_file():
            raise PipelineError(f"mlp_config {exp.mlp_config!r} not found")
        stages.append(
            Stage(
                "mlp",
                [
                    _cli(
                        "fit",
                        "--config",
                        "{{dir}}/mlp.yaml",
                        "--trainer.logger.init_args.save_dir",
                        "{{dir}}",
                        "--trainer.logger.init_args.name",
                        "logs",
                        "--trainer.logger.init_args.version",
                        "run",
                    )
                ],  # fmt: skip
                files={"mlp.yaml": mlp_path.read_text(encoding="utf-8")},
                background=True,
            )
        )
        mlp_results = "{{dir:mlp}}/logs/run/results.json"

    manifest = {
        "title": "Subliminal learning in the embedded tiny world",
        "traits": list(exp.traits),
        "neutral": "neutral" if exp.teacher.neutral else None,
        "bases": {"same": base, "cross": [base_names[b] for b in exp.cross_base_seeds]},
        "students": students,
        "probes": "{{dir:probes}}/probes.json",
        "filter_stats": filter_stats,
        "mlp_results": mlp_results,
        "config": _plain(exp),
    }
    report_needs = ["probes", *(f"filter-{s}" for s in sources)] + (["mlp"] if mlp_results else [])
    # The report is cheap and its code changes more often than the rest: its source is part of its hash.
    report_source = Path(__file__).resolve().parents[1] / "report" / "__init__.py"
    stages.append(
        Stage(
            "report",
            [
                [
                    PY,
                    "-m",
                    "subliminal_pl.report",
                    "--manifest",
                    "{{dir}}/manifest.json",
                    "--output_dir",
                    "{{dir}}",
                ]
            ],
            needs=report_needs,
            config={"report_code": hashlib.sha256(report_source.read_bytes()).hexdigest()[:12]},
            files={"manifest.json": _json(manifest)},
        )
    )
    return stages, manifest


def _plain(exp: ToyExperiment) -> dict[str, Any]:
    data = asdict(exp)
    data.pop("variants", None)
    data.pop("jobs", None)
    data.pop("out_dir", None)
    return data


def _json(obj: Any) -> str:
    import json

    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


# ---- running --------------------------------------------------------------------------------------------------
def deep_merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` applied: nested mappings merge key by key, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def experiment_parser(exit_on_error: bool = True):
    from jsonargparse import ActionConfigFile, ArgumentParser

    parser = ArgumentParser(
        prog="subliminal-pl pipeline",
        description="Run a subliminal-learning experiment as cached stages (one process each) and write a report.",
        default_env=False,
        exit_on_error=exit_on_error,
    )
    parser.add_argument(
        "--config", action=ActionConfigFile, help="experiment YAML (e.g. configs/toy/demo.yaml)"
    )
    parser.add_class_arguments(ToyExperiment, nested_key=None)
    parser.add_argument(
        "--dry_run", type=bool, default=False, help="list the stages and commands, run nothing"
    )
    parser.add_argument("--in_process", type=bool, default=False, help="run stages in this process (tests)")
    return parser


def parse_experiment(argv: list[str]) -> tuple[ToyExperiment, dict[str, Any]]:
    parser = experiment_parser()
    cfg = parser.parse_args(argv)
    options = {"dry_run": cfg.pop("dry_run"), "in_process": cfg.pop("in_process")}
    cfg.pop("config", None)
    return _to_experiment(parser, cfg), options


def _to_experiment(parser, cfg) -> ToyExperiment:
    # With nested_key=None the parser yields the fields (nested dataclasses instantiated), not the instance.
    return ToyExperiment(**vars(parser.instantiate(cfg)))


def variant_experiments(exp: ToyExperiment) -> dict[str, ToyExperiment]:
    """name -> experiment: the config itself, or one per variant of a sweep (validated like the config)."""
    if not exp.variants:
        return {"": exp}
    parser = experiment_parser(exit_on_error=False)
    base = _plain(exp)
    out = {}
    for name, overrides in exp.variants.items():
        merged = deep_merge(base, overrides)
        merged.update({"out_dir": exp.out_dir, "jobs": exp.jobs})
        try:
            cfg = parser.parse_object(merged)
        except Exception as err:  # jsonargparse's message names the bad key
            raise PipelineError(f"sweep variant {name!r}: {err}") from err
        cfg.pop("dry_run", None)
        cfg.pop("in_process", None)
        cfg.pop("config", None)
        out[name] = _to_experiment(parser, cfg)
    return out


def run_experiment(
    exp: ToyExperiment, dry_run: bool = False, in_process: bool = False, echo=print
) -> dict[str, Path]:
    """Run an experiment (or each variant of a sweep); returns variant name -> folder holding its report."""
    repo_root = Path(__file__).resolve().parents[2]
    out_dir = Path(exp.out_dir)
    reports = {}
    for name, variant in variant_experiments(exp).items():
        stages, _ = build_stages(variant, repo_root)
        pipeline = Pipeline(stages, out_dir, jobs=variant.jobs, in_process=in_process, echo=echo)
        if name:
            echo(f"=== sweep variant {name}")
        if dry_run:
            for line in pipeline.describe():
                echo(line)
            continue
        pipeline.run()
        target = out_dir / name if name else out_dir
        _publish(pipeline.stage_dir("report"), target)
        reports[name] = target
        verdict = (target / "report.md").read_text(encoding="utf-8").split("## How to read this")[0]
        echo(verdict.strip())
        echo(f"report: {target / 'report.md'}")
    if exp.variants and not dry_run:
        from subliminal_pl.report import write_sweep_summary

        summary = write_sweep_summary({n: p / "results.json" for n, p in reports.items()}, out_dir)
        echo(f"sweep summary: {summary}")
    return reports


def _publish(report_dir: Path, target: Path) -> None:
    """Copy the report stage's files (markdown, JSON, PNGs) to the experiment folder users look in."""
    target.mkdir(parents=True, exist_ok=True)
    for path in report_dir.iterdir():
        if path.name in REPORT_FILES or path.suffix == ".png":
            shutil.copyfile(path, target / path.name)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def run_experiment_cli(argv: list[str]) -> None:
    exp, options = parse_experiment(argv)
    # A kill (SIGTERM) stops the running stages too, like Ctrl-C, instead of leaving them orphaned.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        run_experiment(exp, **options)
    except PipelineError as err:
        sys.exit(f"subliminal-pl pipeline: {err}")
    except KeyboardInterrupt:
        sys.exit("subliminal-pl pipeline: interrupted; run the same command again to resume")
