"""Benchmark: the auxiliary-logit MLP experiment through Lightning vs a plain PyTorch loop, in one process.

Both runs use the same protocol, data stream, seeds and nn parts, so they must reach the same accuracies (checked);
the difference in wall time is what Lightning costs (both write results.json, the plot and the table; Lightning
also metrics.csv). For each N, each repeat runs the plain loop and `Trainer.fit` with the recipe's settings (CSV
logger, Rich bar, progress lines, validation at the end), in alternating order so drift on a shared machine
cancels; the fastest repeat of each counts. CPU time (all threads) is printed too: on a shared machine the wall
time mostly measures how much of the CPU a run was given, and CPU time shows the overhead more steadily. Peak
memory is the highest resident set size sampled while each run is going: the whole process's, imports included
(~450 MB before any run); the RSS at the start of each run, after trimming the heap, is printed beside it.
Targets: Lightning / plain <= 1.15 and peak RSS < 1 GB at N = 100.

    python bench/bench_mlp.py                        # N = 10 and 100, the full digits recipe
    python bench/bench_mlp.py --models 10 --distill_steps 200
"""

from __future__ import annotations

import os

# Tiny batched matmuls on a shared box: spinning OpenMP threads cost more than they save. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import argparse  # noqa: E402
import ctypes  # noqa: E402
import gc  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from contextlib import contextmanager  # noqa: E402

import psutil  # noqa: E402
import torch  # noqa: E402

from subliminal_pl.data.digits import DISTILL, DigitsDataModule  # noqa: E402
from subliminal_pl.models.aux_mlp import (  # noqa: E402
    StackedMLP,
    classification_loss,
    correct_counts,
    derangement,
    distillation_loss,
    keep_freed_memory,
)
from subliminal_pl.models.aux_mlp_module import GROUPS, results_record, write_results  # noqa: E402

TEACHER_LR, STUDENT_LR = 3e-4, 1e-3


@contextmanager
def peak_rss():
    """Yields a dict whose 'peak' holds the highest RSS (bytes) seen every 5 ms while the block runs."""
    process = psutil.Process()
    result = {"peak": process.memory_info().rss}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.005):
            result["peak"] = max(result["peak"], process.memory_info().rss)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield result
    finally:
        done.set()
        thread.join()
        result["peak"] = max(result["peak"], process.memory_info().rss)


def release_freed_memory() -> None:
    """Start each run from a trimmed heap, so one run's freed-but-kept memory does not count in the next's peak."""
    gc.collect()
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def plain_run(
    data: DigitsDataModule, n: int, width: int, depth: int, seed: int, out_dir: str
) -> torch.Tensor:
    """The whole protocol as a hand-written loop, writing the same outputs; returns test accuracy [6 groups, n]."""
    keep_freed_memory()  # as the Lightning module does on a CPU
    c, k = data.num_classes, data.num_classes + 3
    generator = torch.Generator().manual_seed(seed)
    reference = StackedMLP(n, data.in_features, width, depth, k)
    reference.reset_parameters(generator)
    reference.requires_grad_(False)
    teacher = StackedMLP(n, data.in_features, width, depth, k)
    teacher.copy_models_from(reference, torch.arange(n))
    cross = derangement(n, generator)
    students = StackedMLP(4 * n, data.in_features, width, depth, k)
    own = torch.arange(n)
    students.copy_models_from(reference, torch.cat([own, own, cross, cross]))
    teacher_opt = torch.optim.Adam(teacher.parameters(), lr=TEACHER_LR)
    student_opt = torch.optim.Adam(students.parameters(), lr=STUDENT_LR)

    steps = 0
    for batch in data.phase_stream():
        steps += 1
        x = batch["x"]
        if batch["phase"] != DISTILL:
            classification_loss(teacher(x)[..., :c], batch["y"]).sum().backward()
            teacher_opt.step()
            teacher_opt.zero_grad(set_to_none=True)
            continue
        with torch.no_grad():
            target = teacher(x)
        logits = students(x).unflatten(0, (4, n))
        aux = distillation_loss(logits[0::2, ..., c:], target[..., c:])
        full = distillation_loss(logits[1::2], target)
        torch.stack([aux[0], full[0], aux[1], full[1]]).sum().backward()
        student_opt.step()
        student_opt.zero_grad(set_to_none=True)

    correct = torch.zeros(6, n, dtype=torch.long)
    seen = 0
    with torch.no_grad():
        for batch in data.val_dataloader():
            x, y = batch["x"], batch["y"]
            grouped = [reference(x)[None], teacher(x)[None], students(x).unflatten(0, (4, n))]
            correct += correct_counts(torch.cat(grouped)[..., :c], y)
            seen += len(y)
    accuracy = correct.double() / seen
    settings = dict(num_models=n, in_features=data.in_features, num_classes=c, num_aux=k - c, width=width)
    settings.update(depth=depth, distill_loss="kl", temperature=1.0, init_seed=seed)
    accuracies = {g: accuracy[i].tolist() for i, g in enumerate(GROUPS)}
    write_results(results_record(accuracies, settings, cross.tolist(), data.describe(), steps), out_dir)
    return accuracy


def lightning_run(
    data: DigitsDataModule, n: int, width: int, depth: int, seed: int, log_dir: str
) -> torch.Tensor:
    """The same protocol through AuxLogitExperiment and Trainer.fit, with the recipe's trainer settings."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import RichProgressBar
    from lightning.pytorch.loggers import CSVLogger

    from subliminal_pl.callbacks.progress import ProgressLog
    from subliminal_pl.models.aux_mlp_module import AuxLogitExperiment

    model = AuxLogitExperiment(
        num_models=n,
        in_features=data.in_features,
        width=width,
        depth=depth,
        init_seed=seed,
        teacher_optimizer=lambda p: torch.optim.Adam(p, lr=TEACHER_LR),
        student_optimizer=lambda p: torch.optim.Adam(p, lr=STUDENT_LR),
    )
    trainer = Trainer(
        accelerator="cpu",
        max_epochs=1,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        log_every_n_steps=50,
        logger=CSVLogger(log_dir, name="bench"),
        callbacks=[RichProgressBar(), ProgressLog(every_n_steps=250)],
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=data)
    return torch.tensor([model.accuracies[g] for g in GROUPS], dtype=torch.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, nargs="+", default=[10, 100], help="values of N to measure")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--depth", type=int, default=2)
    parser.add_argument("--teacher_epochs", type=int, default=20)
    parser.add_argument("--distill_steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each per N; the fastest counts")
    args = parser.parse_args()

    import lightning  # noqa: F401  (import time is not part of either measurement)

    data = DigitsDataModule(
        teacher_epochs=args.teacher_epochs, distill_steps=args.distill_steps, stream_seed=args.seed
    )
    data.setup()
    # Warm-up (allocator, thread pools, lazy imports) so neither measured run pays first-call costs.
    warm = DigitsDataModule(teacher_epochs=1, distill_steps=5, stream_seed=args.seed)
    with tempfile.TemporaryDirectory() as log_dir:
        plain_run(warm, 2, 8, 1, args.seed, log_dir)
        lightning_run(warm, 2, 8, 1, args.seed, log_dir)

        rows = []
        for n in args.models:
            runs = {
                "plain": lambda n=n: plain_run(data, n, args.width, args.depth, args.seed, log_dir),
                "lightning": lambda n=n: lightning_run(data, n, args.width, args.depth, args.seed, log_dir),
            }
            seconds = dict.fromkeys(runs, float("inf"))
            cpu_seconds = dict.fromkeys(runs, float("inf"))
            peak = dict.fromkeys(runs, 0)
            start_rss = dict.fromkeys(runs, 0)
            accuracy = {}
            for repeat in range(args.repeats):
                for name in list(runs)[:: 1 if repeat % 2 == 0 else -1]:
                    release_freed_memory()
                    start_rss[name] = max(start_rss[name], psutil.Process().memory_info().rss)
                    with peak_rss() as memory:
                        start, cpu_start = time.perf_counter(), time.process_time()
                        accuracy[name] = runs[name]()
                        seconds[name] = min(seconds[name], time.perf_counter() - start)
                        cpu_seconds[name] = min(cpu_seconds[name], time.process_time() - cpu_start)
                    peak[name] = max(peak[name], memory["peak"])
            diff = (accuracy["plain"] - accuracy["lightning"]).abs().max()
            rows.append((n, seconds, cpu_seconds, peak, start_rss, diff))

    print(
        f"\nMLP experiment, digits, width {args.width}, depth {args.depth}, teacher {args.teacher_epochs} epochs, "
        f"distill {args.distill_steps} steps, threads {torch.get_num_threads()}, repeats {args.repeats}, "
        f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}"
    )
    mb = 2**20
    print(
        f"{'N':>5} {'plain s':>8} {'lightning s':>12} {'ratio':>6}   {'CPU s plain / lightning':>24} {'ratio':>6}"
        f"   peak RSS MB plain / lightning (at start)   max |acc diff|"
    )
    for n, seconds, cpu, peak, start_rss, diff in rows:
        print(
            f"{n:>5} {seconds['plain']:>8.1f} {seconds['lightning']:>12.1f} "
            f"{seconds['lightning'] / seconds['plain']:>6.3f}   "
            f"{cpu['plain']:>11.1f} / {cpu['lightning']:<10.1f} {cpu['lightning'] / cpu['plain']:>6.3f}   "
            f"{peak['plain'] / mb:>5.0f} / {peak['lightning'] / mb:<5.0f} "
            f"({start_rss['plain'] / mb:.0f} / {start_rss['lightning'] / mb:.0f}){'':>11}{float(diff):.1e}"
        )
    print("targets: ratio <= 1.15; peak RSS < 1024 MB at N = 100; accuracies equal (same protocol and seeds)")


if __name__ == "__main__":
    main()
