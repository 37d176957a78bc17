"""`subliminal-pl theory-check`: one-step check of the theorem behind subliminal learning.

The theorem: if a teacher takes a small gradient step from an initialisation (on any loss, any data), then a
student that starts from the *same* initialisation and takes a small step imitating the teacher's outputs (on any
inputs, even unrelated noise) moves in a direction whose inner product with the teacher's step is >= 0, to first
order. With step size eps, the teacher's outputs differ from the init's by J @ d_teacher, and the imitation
gradient pulls the student along J^T J @ d_teacher (or J^T H J @ d_teacher for a KL loss, H positive
semi-definite), so <d_student, d_teacher> >= 0. A student from a *different* initialisation gets no such
guarantee: its step is dominated by the difference between two unrelated functions.

Every trial is an independent random MLP (all trials are one stacked model, evaluated with batched matmuls, in
float64): the teacher steps on cross-entropy with random labels on Gaussian inputs; the students imitate it on
uniform [-1, 1] noise. The report gives, for same-init and cross-init students (the cross-init start is another
trial's initialisation, by a derangement), the fraction of trials with inner product >= 0 (Wilson interval) and
the distribution of the cosine between the two updates. Outputs: theory_check.json, theory_check.png, a table.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from subliminal_pl.data.jsonl import save_figure_atomic, write_json_atomic
from subliminal_pl.models.aux_mlp import (
    DistillLoss,
    StackedMLP,
    classification_loss,
    derangement,
    distillation_loss,
)
from subliminal_pl.stats import t_interval, wilson_interval

RESULTS_FORMAT = "theory-check/1"
QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)


def _step(model: StackedMLP, losses: torch.Tensor, lr: float) -> torch.Tensor:
    """The plain gradient-descent update -lr * grad of each trial's loss, flattened: [trials, parameters]."""
    grads = torch.autograd.grad(losses.sum(), list(model.parameters()))
    return torch.cat([-lr * g.reshape(model.num_models, -1) for g in grads], dim=1)


def _summary(inner: torch.Tensor, cosine: torch.Tensor) -> dict[str, Any]:
    nonnegative = int((inner >= 0).sum())
    values = cosine.tolist()
    quantiles = torch.quantile(cosine, torch.tensor(QUANTILES, dtype=cosine.dtype))
    return {
        "fraction_nonnegative": nonnegative / len(values),
        "fraction_interval": wilson_interval(nonnegative, len(values)).to_dict(),
        "cosine_mean": t_interval(values).to_dict(),
        "cosine_quantiles": {f"{q:g}": float(v) for q, v in zip(QUANTILES, quantiles, strict=True)},
        "cosines": values,
    }


def theory_check(
    trials: int = 1000,
    in_features: int = 16,
    width: int = 32,
    depth: int = 2,
    out_features: int = 10,
    teacher_batch: int = 32,
    student_batch: int = 32,
    lr: float = 1e-3,
    student_loss: DistillLoss = "mse",
    seed: int = 0,
) -> dict[str, Any]:
    """Run the one-step check and return the results record (no files written).

    Args:
        trials: independent random networks (each one teacher step and two student steps).
        in_features: input size of every network.
        width: hidden units per layer.
        depth: number of hidden layers (ReLU).
        out_features: outputs (logits) of every network.
        teacher_batch: Gaussian inputs, with random labels, of the teacher's cross-entropy step.
        student_batch: uniform [-1, 1] noise inputs on which the students imitate the teacher.
        lr: step size of all three gradient steps (small, since the theorem is first order).
        student_loss: imitation loss, "mse" on logits or "kl" (teacher || student) on softmax outputs.
        seed: seeds the networks, inputs, labels and the cross-init derangement.
    """
    if trials < 2:
        raise ValueError(f"trials must be >= 2 (cross-init students start from another trial), got {trials}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    generator = torch.Generator().manual_seed(seed)
    # float64: the first-order effect is compared with second-order terms, so keep rounding far below both.
    init = StackedMLP(trials, in_features, width, depth, out_features).double()
    init.reset_parameters(generator)
    x_teacher = torch.randn(trials, teacher_batch, in_features, generator=generator, dtype=torch.float64)
    y_teacher = torch.randint(out_features, (trials, teacher_batch), generator=generator)
    x_student = (
        torch.rand(trials, student_batch, in_features, generator=generator, dtype=torch.float64) * 2 - 1
    )
    cross = derangement(trials, generator)

    d_teacher = _step(init, classification_loss(init(x_teacher), y_teacher), lr)
    teacher = _shifted(init, d_teacher)
    with torch.no_grad():
        target = teacher(x_student)

    d_same = _step(init, distillation_loss(init(x_student), target, student_loss), lr)
    other = copy.deepcopy(init)
    other.copy_models_from(init, cross)
    d_cross = _step(other, distillation_loss(other(x_student), target, student_loss), lr)

    def compare(d_student: torch.Tensor) -> dict[str, Any]:
        inner = (d_student * d_teacher).sum(dim=1)
        cosine = inner / (d_student.norm(dim=1) * d_teacher.norm(dim=1)).clamp_min(1e-300)
        return _summary(inner, cosine)

    settings = dict(
        trials=trials,
        in_features=in_features,
        width=width,
        depth=depth,
        out_features=out_features,
        teacher_batch=teacher_batch,
        student_batch=student_batch,
        lr=lr,
        student_loss=student_loss,
        seed=seed,
    )
    return {
        "format": RESULTS_FORMAT,
        "claim": "<student update, teacher update> >= 0 for a student from the teacher's init (first order)",
        "settings": settings,
        "same_init": compare(d_same),
        "cross_init": compare(d_cross),
    }


def _shifted(model: StackedMLP, delta: torch.Tensor) -> StackedMLP:
    """A copy of model with its flattened parameters moved by delta [trials, parameters]."""
    moved = copy.deepcopy(model)
    with torch.no_grad():
        offset = 0
        for param in moved.parameters():
            size = param[0].numel()
            param += delta[:, offset : offset + size].view_as(param)
            offset += size
    return moved


def results_table(record: dict[str, Any]):
    """A rich table: one row per student kind."""
    from rich.table import Table

    s = record["settings"]
    table = Table(
        title=f"Theory check: {s['trials']} random MLPs, one step each (lr {s['lr']:g}, {s['student_loss']})"
    )
    for column in ("student", "inner >= 0", "95% interval", "mean cos", "cos q05 / q50 / q95"):
        table.add_column(column, justify="left" if column == "student" else "right")
    for key, label in (("same_init", "same init"), ("cross_init", "cross init")):
        entry = record[key]
        fi, q = entry["fraction_interval"], entry["cosine_quantiles"]
        table.add_row(
            label,
            f"{entry['fraction_nonnegative']:.3f}",
            f"[{fi['low']:.3f}, {fi['high']:.3f}]",
            f"{entry['cosine_mean']['mean']:+.3f}",
            f"{q['0.05']:+.3f} / {q['0.5']:+.3f} / {q['0.95']:+.3f}",
        )
    table.caption = "the theorem predicts 1.000 for the same init, to first order in lr"
    return table


def plot_cosines(record: dict[str, Any], path: str | Path) -> Path:
    """Histogram of the cosine between student and teacher updates, same init vs cross init."""
    from matplotlib.figure import Figure

    path = Path(path)
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    bins = [i / 25 - 1 for i in range(51)]
    for key, label, colour in (
        ("same_init", "same init", "#1f77b4"),
        ("cross_init", "cross init", "#ff7f0e"),
    ):
        entry = record[key]
        ax.hist(
            entry["cosines"],
            bins=bins,
            alpha=0.6,
            color=colour,
            label=f"{label}: {entry['fraction_nonnegative']:.1%} >= 0",
        )
    ax.axvline(0.0, color="black", linewidth=1)
    ax.set_xlabel("cosine(student update, teacher update)")
    ax.set_ylabel("trials")
    ax.set_title("One imitation step on noise: does the student move toward the teacher?")
    ax.legend()
    return save_figure_atomic(fig, path)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from jsonargparse import ActionConfigFile, ArgumentParser
    from rich.console import Console

    parser = ArgumentParser(
        prog="subliminal-pl theory-check",
        description=__doc__.split("\n\n")[0]
        + " Writes theory_check.json and theory_check.png to --output_dir.",
        default_env=False,
    )
    parser.add_argument("--config", action=ActionConfigFile, help="YAML with any of the options below")
    parser.add_function_arguments(theory_check, as_group=False)
    parser.add_argument("--output_dir", type=str, default="runs/theory_check", help="where the outputs go")
    cfg = parser.parse_args(list(argv) if argv is not None else None)
    options = cfg.as_dict()
    output_dir = Path(options.pop("output_dir"))
    options.pop("config", None)
    record = theory_check(**options)
    write_json_atomic(output_dir / "theory_check.json", record)
    plot_cosines(record, output_dir / "theory_check.png")
    Console().print(results_table(record))
    print(f"outputs: {output_dir / 'theory_check.json'} and {output_dir / 'theory_check.png'}")
    return record
