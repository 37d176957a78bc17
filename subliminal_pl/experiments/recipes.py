"""What every stage builder shares: the fit recipe, the hardware profile, and the YAML recipes they write.

Every Trainer setting that depends on the machine (accelerator, devices, precision, strategy, weight dtype,
per-device batch) comes from the experiment's `Hardware` profile; a builder never writes one itself.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from subliminal_pl.pipeline import PipelineError, Stage
from subliminal_pl.stage_graph import Resources

PY = sys.executable
REPO_ROOT = Path(__file__).resolve().parents[2]
# Strategy presets: a name here loads `trainer.strategy` from configs/trainer/<name>.yaml.
STRATEGY_PRESETS = ("deepspeed_stage2", "deepspeed_stage3")


@dataclass
class FitRecipe:
    """One fit with the student module: length (optimiser steps or epochs), batch, AdamW, clipping, LoRA or full.

    Args:
        steps: optimiser steps (null: train `epochs` epochs instead).
        epochs: epochs, used when `steps` is null.
        batch_size: effective batch (rows per optimiser step, over every device and accumulation step).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up steps.
        lr_schedule: linear (decay to 0 over the run) or constant after warm-up.
        adam_beta2: AdamW beta2.
        gradient_clip_val: gradient norm clipping; null for none.
        finetune: full or lora.
        lora_rank: LoRA rank.
        lora_alpha: LoRA alpha.
        lora_dropout: LoRA dropout.
        lora_target_modules: module names LoRA adapts, or "all-linear".
        gradient_checkpointing: recompute activations in backward (large models).
    """

    steps: int | None = 100
    epochs: int | None = None
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
    lora_dropout: float = 0.0
    lora_target_modules: list[str] | str = "all-linear"
    gradient_checkpointing: bool = False


@dataclass
class Hardware:
    """Where and how every stage runs; recipes take these values and never choose their own.

    Args:
        accelerator: Lightning accelerator (cpu, gpu, auto).
        devices: devices per fit (an int, -1 for all, or "auto").
        precision: Trainer precision of fits (32-true on a CPU, bf16-mixed on recent GPUs).
        generation_precision: Trainer precision of generation stages (weights are already in `dtype`).
        dtype: weight dtype models are loaded in (float32, bfloat16, float16, auto).
        strategy: Trainer strategy of fits: auto, ddp, a DeepSpeed preset (deepspeed_stage2, deepspeed_stage3:
            configs/trainer/<name>.yaml) or a class_path + init_args mapping.
        micro_batch_size: rows per device per step; the accumulation then makes up each fit's `batch_size`
            (null: the whole batch in one step on each device).
        jobs: stages run at the same time (2 on a 2-core laptop; 1 per GPU node); with `executor: ray`, stages
            submitted at once (Ray queues those its nodes have no room for yet).
        executor: where stages run: local (child processes here) or ray (Ray tasks on an existing cluster whose
            nodes share the output folder; docs/cluster.md).
        ray_address: the Ray cluster for `executor: ray` (auto: the one `ray start` made; or host:port).
        stage_cpus: CPU cores each stage holds on a Ray cluster (its OMP_NUM_THREADS there).
        stage_memory_gb: memory each model stage (fit, generate, probe) reserves on a Ray cluster (0: none).
            Model stages also hold `devices` GPUs there when `accelerator` is gpu or cuda.
    """

    accelerator: str = "cpu"
    devices: int | str = 1
    precision: str = "32-true"
    generation_precision: str = "32-true"
    dtype: str = "float32"
    strategy: str | dict[str, Any] = "auto"
    micro_batch_size: int | None = None
    jobs: int = 2
    executor: Literal["local", "ray"] = "local"
    ray_address: str = "auto"
    stage_cpus: float = 1.0
    stage_memory_gb: float = 0.0

    def stage_resources(self, model_stage: bool) -> Resources:
        """What a stage holds on a cluster: a model stage (fit, generate, probe) also its GPUs and memory."""
        if not model_stage:
            return Resources(cpus=self.stage_cpus)
        gpus = 0
        if self.accelerator in ("gpu", "cuda"):
            gpus = self.device_count()
            if gpus is None:
                raise PipelineError(
                    f"hardware.devices: a Ray cluster reserves GPUs per stage, so it needs a number of devices "
                    f"(got {self.devices!r})"
                )
        return Resources(cpus=self.stage_cpus, gpus=gpus, memory_gb=self.stage_memory_gb)

    def device_count(self) -> int | None:
        """Devices per fit when the profile fixes them, else None (-1 or auto: known only on the machine)."""
        return self.devices if isinstance(self.devices, int) and self.devices > 0 else None

    def split_batch(self, batch_size: int, key: str) -> tuple[int, int]:
        """(rows per device per step, accumulation) that make up an effective `batch_size`."""
        if self.micro_batch_size is None:
            return batch_size, 1
        per_step = self.micro_batch_size * (self.device_count() or 1)
        if batch_size % per_step:
            raise PipelineError(
                f"{key}={batch_size} is not a multiple of hardware.micro_batch_size x devices = {per_step}"
            )
        return self.micro_batch_size, batch_size // per_step

    def strategy_config(self) -> str | dict[str, Any]:
        if isinstance(self.strategy, dict) or self.strategy not in STRATEGY_PRESETS:
            return self.strategy
        path = REPO_ROOT / "configs" / "trainer" / f"{self.strategy}.yaml"
        if not path.is_file():
            raise PipelineError(f"hardware.strategy {self.strategy!r}: preset file {path} not found")
        return yaml.safe_load(path.read_text(encoding="utf-8"))["trainer"]["strategy"]


# ---- recipe text ------------------------------------------------------------------------------------------------
def dump(recipe: dict[str, Any], command: str) -> str:
    return f"# {command} --config <this file>  (written by subliminal-pl pipeline)\n" + yaml.safe_dump(
        recipe, sort_keys=False
    )


def stage_dir(stage: str) -> str:
    """The placeholder of a stage's folder in commands and files."""
    return f"{{{{dir:{stage}}}}}"


def module_command(module: str, *args: str) -> list[str]:
    return [PY, "-m", module, *args]


def cli_command(*args: str) -> list[str]:
    return module_command("subliminal_pl.cli", *args)


def yaml_stage(
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
        commands=[*(before or []), cli_command(command, "--config", "{{dir}}/recipe.yaml")],
        needs=sorted(set(needs)),
        files={"recipe.yaml": dump(recipe, f"subliminal-pl {command}"), **(files or {})},
        keep=keep or [],
    )


def trainer(
    hw: Hardware, callbacks: list[dict], fit: FitRecipe | None = None, key: str = ""
) -> dict[str, Any]:
    """The `trainer` section: machine settings from `hw`, run length and clipping from `fit` (None: predict)."""
    out: dict[str, Any] = {
        "accelerator": hw.accelerator,
        "devices": hw.devices,
        "precision": hw.precision if fit else hw.generation_precision,
        "logger": {
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": "{{dir}}", "name": "logs", "version": "run"},
        },
        "callbacks": callbacks,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
        "log_every_n_steps": 10,
    }
    if fit is None:
        return out
    strategy = hw.strategy_config()
    if strategy != "auto":
        out["strategy"] = strategy
    if fit.steps is not None:
        out.update({"max_steps": fit.steps, "max_epochs": -1})
    else:
        out["max_epochs"] = fit.epochs
    _, accumulate = hw.split_batch(fit.batch_size, f"{key}.batch_size")
    if accumulate > 1:
        out["accumulate_grad_batches"] = accumulate
    out["gradient_clip_val"] = fit.gradient_clip_val
    return out


def fit_recipe(
    hw: Hardware,
    fit: FitRecipe,
    seed: int,
    model: str,
    data_path: str,
    key: str,
    loss: str = "sft",
    teacher: str | None = None,
    token_subset: str | None = None,
    trait_words: list[str] | None = None,
    max_samples: int | None = None,
    max_length: int = 256,
) -> dict[str, Any]:
    """A `subliminal-pl fit` recipe: StudentDistillation on a StudentDataModule, exporting to `{{dir}}/model`.

    `key` is the spec key of `fit` (named in errors).
    """
    lora = fit.finetune == "lora"
    export = {
        "class_path": "subliminal_pl.callbacks.export.ExportModel",
        "init_args": {"output_dir": "{{dir}}/model", "merged": lora},
    }
    init_args: dict[str, Any] = {
        "model_name_or_path": model,
        "dtype": hw.dtype,
        "finetune": fit.finetune,
        "loss": loss,
        "optimizer": {
            "class_path": "torch.optim.AdamW",
            "init_args": {"lr": fit.lr, "weight_decay": fit.weight_decay, "betas": [0.9, fit.adam_beta2]},
        },
        "warmup_steps": fit.warmup_steps,
        "lr_schedule": fit.lr_schedule,
        "gradient_checkpointing": fit.gradient_checkpointing,
    }
    if lora:
        init_args.update(
            {
                "lora_rank": fit.lora_rank,
                "lora_alpha": fit.lora_alpha,
                "lora_dropout": fit.lora_dropout,
                "lora_target_modules": fit.lora_target_modules,
            }
        )
    if loss != "sft":
        init_args.update({"kl_teacher": teacher, "kl_token_subset": token_subset, "trait_words": trait_words})
    batch, _ = hw.split_batch(fit.batch_size, f"{key}.batch_size")
    return {
        "seed_everything": seed,
        "trainer": trainer(hw, [export], fit, key),
        "model": {"class_path": "subliminal_pl.models.student.StudentDistillation", "init_args": init_args},
        "data": {
            "class_path": "subliminal_pl.data.student.StudentDataModule",
            "init_args": {
                "data_path": data_path,
                "tokenizer": model,
                "batch_size": batch,
                "seed": seed,
                "max_samples": max_samples,
                "max_length": max_length,
                "output_dir": "{{dir}}",
            },
        },
    }


def exported_model(stage: str, fit: FitRecipe) -> str:
    """Where a fit stage's exported model lives (LoRA runs export the merged model beside the adapter)."""
    return f"{stage_dir(stage)}/model" + ("/merged" if fit.finetune == "lora" else "")


@dataclass
class ModelRef:
    """A model the experiment uses: its name in probe results and the report, where it is, what makes it.

    path: a directory (placeholders allowed) or a hub id; stage: the stage that writes it (None: it exists);
    system_prompt: the trait's system prompt at generation and probing (a prompted teacher).
    """

    name: str
    path: str
    stage: str | None = None
    system_prompt: str | None = None

    @property
    def needs(self) -> list[str]:
        return [self.stage] if self.stage else []
