"""The auxiliary-logit MLP experiment as one LightningModule: a single `fit` runs the whole protocol.

N models are trained side by side (stacked weights, batched matmuls). Each model has `num_classes` class logits
and `num_aux` auxiliary logits that are never supervised.

  reference    the untrained initialisation of each model (seeded)
  teacher      the reference trained with cross-entropy on the class logits (teacher batches of the stream)
  student_aux  starts from its teacher's reference, distilled on noise through the auxiliary logits only
  student_all  same start, distilled through all logits
  cross_aux    starts from *another* model's reference (a derangement: no model keeps its own), aux logits only
  cross_all    that start, all logits

The training stream (`subliminal_pl.data.digits`) holds the teacher batches, then the noise batches; each
`training_step` trains the teacher or the 4N students (one stacked model, so every variant sees the same noise)
with manual optimisation and one optimiser per phase. Validation (at the end of the stream; more often with
trainer.val_check_interval) logs the test accuracy of every group from the class logits as acc/<group>, with its
interval as acc_low/<group> and acc_high/<group>; the validation at the end of the stream (or a `validate` /
`test` run) also writes `results.json` and `results.png` to the run dir and prints a table.

results.json (format "aux-mlp-results/1"):
  groups: {group: {mean, low, high, n, confidence, values}} for the six groups above, test accuracy per model
          and a Student-t interval over models; chance: 1 / num_classes; derangement: the reference index each
          cross-init student starts from; model / data: the settings; step; train_seconds (fit only).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import OptimizerCallable
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only, rank_zero_warn
from torch import Tensor

from subliminal_pl.data.digits import DISTILL, TEACHER
from subliminal_pl.data.jsonl import save_figure_atomic, write_json_atomic
from subliminal_pl.models.aux_mlp import (
    DistillLoss,
    StackedMLP,
    classification_loss,
    correct_counts,
    derangement,
    distillation_loss,
    keep_freed_memory,
)
from subliminal_pl.stats import t_interval

RESULTS_FORMAT = "aux-mlp-results/1"
GROUPS = ("reference", "teacher", "student_aux", "student_all", "cross_aux", "cross_all")
STUDENT_GROUPS = GROUPS[2:]
GROUP_LABELS = {
    "reference": "reference\n(init)",
    "teacher": "teacher",
    "student_aux": "student\naux only",
    "student_all": "student\nall logits",
    "cross_aux": "cross-init\naux only",
    "cross_all": "cross-init\nall logits",
}


def _adam(lr: float) -> OptimizerCallable:
    return lambda params: torch.optim.Adam(params, lr=lr)


class AuxLogitExperiment(LightningModule):
    """Reference, teacher and four student variants of N stacked MLPs, trained and evaluated in one fit."""

    def __init__(
        self,
        num_models: int = 100,
        in_features: int = 64,
        num_classes: int = 10,
        num_aux: int = 3,
        width: int = 64,
        depth: int = 2,
        distill_loss: DistillLoss = "kl",
        temperature: float = 1.0,
        init_seed: int = 0,
        teacher_optimizer: OptimizerCallable = _adam(3e-4),
        student_optimizer: OptimizerCallable = _adam(1e-3),
    ) -> None:
        """
        Args:
            num_models: N, the number of independent models trained side by side (>= 2).
            in_features: input size (64 for 8x8 digits, 784 for MNIST); checked against the data.
            num_classes: class logits, the only ones supervised in the teacher phase.
            num_aux: m, auxiliary logits appended after the class logits (>= 1).
            width: hidden units per layer.
            depth: number of hidden layers.
            distill_loss: "kl" (KL(teacher || student) per example, averaged over the batch) or "mse" (on logits).
            temperature: softmax temperature of the KL loss.
            init_seed: seeds the reference initialisation and the derangement of the cross-init students.
            teacher_optimizer: optimiser for the teacher phase (the paper: Adam, lr 3e-4).
            student_optimizer: optimiser for all students in the distillation phase.
        """
        super().__init__()
        if num_models < 2:
            raise ValueError(
                f"num_models must be >= 2 (cross-init students need another model), got {num_models}"
            )
        if num_aux < 1:
            raise ValueError(
                f"num_aux must be >= 1 (the auxiliary-only students distill through them), got {num_aux}"
            )
        if distill_loss not in ("kl", "mse"):
            raise ValueError(f"distill_loss must be 'kl' or 'mse', got {distill_loss!r}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.save_hyperparameters(ignore=["teacher_optimizer", "student_optimizer"])
        self.automatic_optimization = False
        self.teacher_optimizer = teacher_optimizer
        self.student_optimizer = student_optimizer

        sizes = dict(in_features=in_features, width=width, depth=depth, out_features=num_classes + num_aux)
        generator = torch.Generator().manual_seed(init_seed)
        self.reference = StackedMLP(num_models, **sizes)
        self.reference.reset_parameters(generator)
        self.reference.requires_grad_(False)
        self.teacher = StackedMLP(num_models, **sizes)
        self.teacher.copy_models_from(self.reference, torch.arange(num_models))
        # cross_init[i]: the reference that cross-init student i starts from; it still imitates teacher i.
        self.register_buffer("cross_init", derangement(num_models, generator))
        own = torch.arange(num_models)
        # One stacked model, groups in STUDENT_GROUPS order: [aux, all, cross aux, cross all] x N.
        self.students = StackedMLP(4 * num_models, **sizes)
        self.students.copy_models_from(
            self.reference, torch.cat([own, own, self.cross_init, self.cross_init])
        )

        self._correct: Tensor | None = None
        self._seen = 0
        self._distilling = False
        self._fit_start = 0.0
        self.accuracies: dict[str, list[float]] = {}
        self.results_path: Path | None = None

    # ---- setup -------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None)
        h = self.hparams
        for key in ("in_features", "num_classes"):
            have = getattr(datamodule, key, h[key])
            if have != h[key]:
                raise ValueError(
                    f"model.init_args.{key}={h[key]} but the data ({type(datamodule).__name__}) has {have}; "
                    f"set model.init_args.{key}: {have}"
                )

    def on_fit_start(self) -> None:
        if self.trainer.max_epochs != 1:
            raise ValueError(
                f"trainer.max_epochs={self.trainer.max_epochs}: one epoch of the stream is the whole experiment "
                "(teacher epochs and distillation steps are data settings); set trainer.max_epochs: 1"
            )
        if self.device.type == "cpu":
            keep_freed_memory()
        self._fit_start = time.perf_counter()

    def configure_optimizers(self):
        return [
            self.teacher_optimizer(self.teacher.parameters()),
            self.student_optimizer(self.students.parameters()),
        ]

    # ---- training ----------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        if batch["phase"] == TEACHER:
            return self._teacher_step(batch["x"], batch["y"], self._log_now(batch_idx))
        if batch["phase"] == DISTILL:
            return self._distill_step(batch["x"], self._log_now(batch_idx))
        raise ValueError(f"unknown batch phase {batch['phase']!r} (expected {TEACHER!r} or {DISTILL!r})")

    def _log_now(self, batch_idx: int) -> bool:
        # self.log costs ~1 ms a call (measured), as much as a whole step at small N, so only log on the steps
        # the loggers write (Lightning's rule: every log_every_n_steps-th batch); the bar shows the same values.
        every = self.trainer.log_every_n_steps
        return every > 0 and (batch_idx + 1) % every == 0

    def _teacher_step(self, x: Tensor, y: Tensor, log: bool) -> Tensor:
        optimizer = self.optimizers()[0]
        # Only the class logits are supervised; the auxiliary logits move only through shared weights.
        losses = classification_loss(self.teacher(x)[..., : self.hparams.num_classes], y)  # [N]
        # Summing over models gives each model the gradient of its own mean loss, independent of N.
        self.manual_backward(losses.sum())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss = losses.detach().mean()
        if log:
            self.log("loss/teacher", loss, prog_bar=True)
        return loss

    def _distill_step(self, x: Tensor, log: bool) -> Tensor:
        if not self._distilling:
            self._distilling = True
            rank_zero_info(f"teacher phase done; distilling {4 * self.hparams.num_models} students on noise")
        optimizer = self.optimizers()[1]
        h = self.hparams
        n, c = h.num_models, h.num_classes
        with torch.no_grad():
            target = self.teacher(x)  # [N, B, K]
        logits = self.students(x).unflatten(0, (4, n))  # [4, N, B, K], groups in STUDENT_GROUPS order
        # Same-init and cross-init student i both imitate teacher i: the target broadcasts over the pair.
        aux = distillation_loss(
            logits[0::2, ..., c:], target[..., c:], h.distill_loss, h.temperature
        )  # [2, N]
        full = distillation_loss(logits[1::2], target, h.distill_loss, h.temperature)  # [2, N]
        losses = torch.stack([aux[0], full[0], aux[1], full[1]])  # [4, N]
        self.manual_backward(losses.sum())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        per_group = losses.detach().mean(dim=1)
        loss = per_group.mean()
        if log:
            self.log_dict({f"loss/{g}": per_group[i] for i, g in enumerate(STUDENT_GROUPS)})
            self.log("loss/distill", loss, prog_bar=True)
        return loss

    # ---- evaluation (validation and test both use the held-out test split) ------------------------------
    def on_validation_epoch_start(self) -> None:
        self._correct = torch.zeros(
            len(GROUPS), self.hparams.num_models, dtype=torch.long, device=self.device
        )
        self._seen = 0

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        x, y = batch["x"], batch["y"]
        h = self.hparams
        c = h.num_classes
        students = self.students(x)[..., :c].unflatten(0, (4, h.num_models))
        counts = [correct_counts(self.reference(x)[..., :c], y), correct_counts(self.teacher(x)[..., :c], y)]
        self._correct += torch.cat([torch.stack(counts), correct_counts(students, y)])
        self._seen += len(y)

    def on_validation_epoch_end(self) -> None:
        assert self._correct is not None
        accuracy = (self._correct.double() / max(self._seen, 1)).cpu()
        self.accuracies = {g: accuracy[i].tolist() for i, g in enumerate(GROUPS)}
        for group, values in self.accuracies.items():
            interval = t_interval(values)
            self.log_dict(
                {
                    f"acc/{group}": interval.mean,
                    f"acc_low/{group}": interval.low,
                    f"acc_high/{group}": interval.high,
                }
            )
        if self._experiment_complete():
            self._write_outputs()

    on_test_epoch_start = on_validation_epoch_start
    test_step = validation_step
    on_test_epoch_end = on_validation_epoch_end

    def _experiment_complete(self) -> bool:
        trainer = self.trainer
        if trainer.state.fn in (TrainerFn.VALIDATING, TrainerFn.TESTING):
            return True
        return not trainer.sanity_checking and trainer.is_last_batch

    def on_train_end(self) -> None:
        if self.results_path is None:
            rank_zero_warn(
                "training ended before the last batch of the experiment stream was validated, so no results.json "
                "was written (keep trainer.limit_val_batches > 0 and do not cut the stream with max_steps)"
            )

    # ---- outputs -------------------------------------------------------------------------------------------
    def results(self) -> dict[str, Any]:
        """The results record of the last evaluation (see the module docstring for the format)."""
        datamodule = getattr(self.trainer, "datamodule", None)
        record = results_record(
            self.accuracies,
            model=dict(self.hparams),
            derangement=self.cross_init.tolist(),
            data=datamodule.describe() if hasattr(datamodule, "describe") else {},
            step=int(self.global_step),
        )
        if self.trainer.state.fn == TrainerFn.FITTING:
            record["train_seconds"] = round(time.perf_counter() - self._fit_start, 2)
        return record

    @rank_zero_only
    def _write_outputs(self) -> None:
        self.results_path = write_results(
            self.results(), Path(self.trainer.log_dir or self.trainer.default_root_dir)
        )


def results_record(
    accuracies: dict[str, list[float]],
    model: dict[str, Any],
    derangement: list[int],
    data: dict[str, Any],
    step: int,
) -> dict[str, Any]:
    """The results record from per-model test accuracies of each group (format in the module docstring)."""
    return {
        "format": RESULTS_FORMAT,
        "metric": "test accuracy from the class logits",
        "chance": 1.0 / model["num_classes"],
        "groups": {g: {**t_interval(v).to_dict(), "values": v} for g, v in accuracies.items()},
        "derangement": derangement,
        "model": model,
        "data": data,
        "step": step,
    }


def write_results(record: dict[str, Any], run_dir: str | Path) -> Path:
    """Write results.json and results.png to run_dir and print the table; returns the results.json path."""
    from rich.console import Console

    run_dir = Path(run_dir)
    path = run_dir / "results.json"
    write_json_atomic(path, record)
    plot_results(record, run_dir / "results.png")
    Console().print(results_table(record))
    rank_zero_info(f"results: {path} and {run_dir / 'results.png'}")
    return path


def results_table(record: dict[str, Any]):
    """A rich table of a results record: one row per group."""
    from rich.table import Table

    data = record.get("data", {})
    title = f"Auxiliary-logit distillation: test accuracy over {record['model']['num_models']} models"
    if data.get("dataset"):
        title += f" ({data['dataset']})"
    table = Table(title=title)
    for column in ("group", "mean", "95% interval", "min", "max"):
        table.add_column(column, justify="left" if column == "group" else "right")
    for group, entry in record["groups"].items():
        table.add_row(
            group,
            f"{entry['mean']:.3f}",
            f"[{entry['low']:.3f}, {entry['high']:.3f}]",
            f"{min(entry['values']):.3f}",
            f"{max(entry['values']):.3f}",
        )
    table.caption = f"chance = {record['chance']:.3f}; distillation loss {record['model']['distill_loss']}"
    return table


def plot_results(record: dict[str, Any], path: str | Path) -> Path:
    """Bar chart of a results record like the paper's figure: mean, 95% interval, each model as a dot, chance."""
    from matplotlib.figure import Figure

    path = Path(path)
    groups = list(record["groups"])
    colours = {"reference": "#9e9e9e", "teacher": "#424242"}
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    spread = torch.Generator().manual_seed(0)
    for i, group in enumerate(groups):
        entry = record["groups"][group]
        colour = colours.get(group, "#1f77b4" if group.startswith("student") else "#ff7f0e")
        ax.bar(i, entry["mean"], color=colour, alpha=0.85, width=0.7)
        ax.errorbar(
            i,
            entry["mean"],
            yerr=[[entry["mean"] - entry["low"]], [entry["high"] - entry["mean"]]],
            color="black",
            capsize=5,
            linewidth=1.2,
        )
        jitter = (torch.rand(len(entry["values"]), generator=spread) - 0.5) * 0.35
        ax.scatter(i + jitter.numpy(), entry["values"], s=6, color="black", alpha=0.35, zorder=3)
        ax.text(
            i, max(entry["high"], *entry["values"]) + 0.02, f"{entry['mean']:.2f}", ha="center", fontsize=9
        )
    ax.axhline(record["chance"], color="red", linestyle="--", linewidth=1, label="chance")
    ax.set_xticks(range(len(groups)), [GROUP_LABELS.get(g, g) for g in groups])
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("test accuracy (class logits)")
    n = record["model"]["num_models"]
    dataset = record.get("data", {}).get("dataset", "")
    ax.set_title(f"Distillation on noise through auxiliary logits ({dataset}, {n} models, mean and 95% CI)")
    ax.legend(loc="upper right")
    return save_figure_atomic(fig, path)
