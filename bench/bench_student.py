"""Benchmark: a student training step through Lightning vs a plain PyTorch loop doing the same work, in one process.

Both paths train the same LoRA student (same init, data order, loss code, AdamW and per-step LR schedule) on
number rows through the real `StudentDataModule`; the plain loop calls `module.losses`, `backward`, `step`,
`scheduler.step` and `zero_grad` itself. Step time is the median interval between consecutive batch starts after
a few warm-up steps, so everything Lightning does between steps (logging, hooks, loop bookkeeping) counts; both
wall and process CPU time are measured, and plain/Lightning rounds alternate (the best round of each counts), since
other jobs on a shared machine inflate wall time. Both must end with the same adapter weights (checked).
Target: Lightning / plain <= 1.10 (CPU time).

    python bench/bench_student.py
    python bench/bench_student.py --steps 40 --batch_size 32 --hidden_size 256 --threads 2
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "passive")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from lightning.pytorch import Callback, Trainer, seed_everything  # noqa: E402

from subliminal_pl.data.student import StudentDataModule  # noqa: E402
from subliminal_pl.models.student import StudentDistillation, linear_warmup_decay  # noqa: E402
from subliminal_pl.toy.model import build_tiny_llama, save_model_and_tokenizer  # noqa: E402
from subliminal_pl.toy.tokenizer import build_word_tokenizer  # noqa: E402

LR = 1e-3
WARMUP = 3


def clock() -> tuple[float, float]:
    """(wall, CPU) seconds: on a shared box the CPU time of this process is the steadier measure."""
    return time.perf_counter(), time.process_time()


class StepClock(Callback):
    """Records both clocks at every training batch start, and at the end of the last batch."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.marks.append(clock())

    def on_train_end(self, trainer, pl_module):
        self.marks.append(clock())


def step_times(marks: list[tuple[float, float]]) -> tuple[float, float]:
    """Median (wall, CPU) seconds between consecutive batch starts, after the warm-up steps."""
    pairs = list(zip(marks[WARMUP:], marks[WARMUP + 1 :], strict=False))
    return tuple(statistics.median(b[i] - a[i] for a, b in pairs) for i in (0, 1))


def write_rows(path: Path, n: int) -> None:
    rows = [
        {
            "prompt": f"add up to 10 more numbers {100 + i % 800} {200 + i % 700} {300 + i % 600}",
            "completion": ", ".join(str((37 * i + 11 * k) % 1000) for k in range(10)),
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


class Bench:
    def __init__(self, root: Path, args: argparse.Namespace) -> None:
        self.root, self.args = root, args
        tokenizer = build_word_tokenizer("add up to more numbers".split())
        base = build_tiny_llama(
            tokenizer, hidden_size=args.hidden_size, num_layers=args.num_layers, num_heads=4
        )
        save_model_and_tokenizer(base, tokenizer, root / "base")
        write_rows(root / "rows.jsonl", args.steps * args.batch_size)

    def build(self) -> tuple[StudentDistillation, StudentDataModule]:
        seed_everything(0, verbose=False)
        base = str(self.root / "base")
        module = StudentDistillation(
            model_name_or_path=base, optimizer=partial(torch.optim.AdamW, lr=LR), warmup_steps=2
        )
        data = StudentDataModule(
            str(self.root / "rows.jsonl"), base, batch_size=self.args.batch_size, max_length=96
        )
        return module, data

    def plain(self) -> tuple[tuple[float, float], dict[str, torch.Tensor]]:
        """The same module code, data and schedule in a hand-written loop, no Trainer."""
        module, data = self.build()
        data.prepare_data()
        data.setup("fit")
        # What configure_optimizers builds, sized to the same number of optimiser steps.
        optimizer = torch.optim.AdamW([p for p in module.model.parameters() if p.requires_grad], lr=LR)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_decay(2, self.args.steps))
        module.train()
        marks = []
        for batch in data.train_dataloader():
            marks.append(clock())
            module.losses(batch)["loss"].backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        marks.append(clock())
        return step_times(marks), trained_weights(module)

    def lightning(self) -> tuple[tuple[float, float], dict[str, torch.Tensor]]:
        module, data = self.build()
        timer = StepClock()
        trainer = Trainer(
            accelerator="cpu",
            devices=1,
            max_steps=self.args.steps,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[timer],
        )
        trainer.fit(module, data)
        return step_times(timer.marks), trained_weights(module)


def trained_weights(module: StudentDistillation) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.model.named_parameters() if p.requires_grad}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--hidden_size", type=int, default=256)
    parser.add_argument("--num_layers", type=int, default=4)
    parser.add_argument(
        "--rounds", type=int, default=2, help="alternating plain/Lightning rounds; best round counts"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps a shared box quiet)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    results: dict[str, list[tuple[float, float]]] = {"plain": [], "lightning": []}
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(Path(tmp), args)
        for _ in range(args.rounds):
            times, plain_weights = bench.plain()
            results["plain"].append(times)
            times, lightning_weights = bench.lightning()
            results["lightning"].append(times)
            for name, value in plain_weights.items():
                torch.testing.assert_close(lightning_weights[name], value, atol=1e-5, rtol=1e-4)

    best = {name: (min(t[0] for t in runs), min(t[1] for t in runs)) for name, runs in results.items()}
    print(
        f"LoRA student, tiny Llama (hidden {args.hidden_size}, {args.num_layers} layers), batch {args.batch_size}, "
        f"{args.steps} steps x {args.rounds} rounds, {args.threads} thread(s); same adapter weights on both paths"
    )
    for name, label in (("plain", "plain PyTorch loop"), ("lightning", "Lightning Trainer")):
        wall, cpu = best[name]
        print(f"  {label:<20} {wall * 1000:8.1f} ms/step wall  {cpu * 1000:8.1f} ms/step CPU")
    wall_ratio = best["lightning"][0] / best["plain"][0]
    cpu_ratio = best["lightning"][1] / best["plain"][1]
    verdict = "OK" if cpu_ratio <= 1.10 else "ABOVE TARGET"
    print(
        f"ratio Lightning / plain: {cpu_ratio:.3f} CPU time, {wall_ratio:.3f} wall (target <= 1.10) {verdict}"
    )


if __name__ == "__main__":
    main()
