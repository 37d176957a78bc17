"""Benchmark: a student training step through Lightning vs a plain PyTorch loop doing the same work, in one process.

Both paths train the same LoRA student (same init, data order, loss code, AdamW and per-step LR schedule) on
number rows through the real `StudentDataModule`; the plain loop calls `module.losses`, `backward`, `step`,
`scheduler.step` and `zero_grad` itself. Step time is the median interval between consecutive batch starts after
a few warm-up steps, so everything Lightning does between steps (logging, hooks, loop bookkeeping) counts.
Both must end with the same adapter weights (checked). Target: Lightning / plain <= 1.10.

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

WARMUP = 3


class StepClock(Callback):
    """Records the time at every training batch start, and at the end of the last batch."""

    def __init__(self) -> None:
        self.marks: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.marks.append(time.perf_counter())

    def on_train_end(self, trainer, pl_module):
        self.marks.append(time.perf_counter())


def step_time(marks: list[float]) -> float:
    return statistics.median(b - a for a, b in zip(marks[WARMUP:], marks[WARMUP + 1 :], strict=False))


def write_rows(path: Path, n: int) -> None:
    rows = [
        {"prompt": f"add up to 10 more numbers {100 + i % 800} {200 + i % 700} {300 + i % 600}",
         "completion": ", ".join(str((37 * i + 11 * k) % 1000) for k in range(10))}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--hidden_size", type=int, default=256)
    parser.add_argument("--num_layers", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps a shared box quiet)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tokenizer = build_word_tokenizer("add up to more numbers".split())
        base = build_tiny_llama(tokenizer, hidden_size=args.hidden_size, num_layers=args.num_layers, num_heads=4)
        save_model_and_tokenizer(base, tokenizer, tmp / "base")
        write_rows(tmp / "rows.jsonl", args.steps * args.batch_size)

        def build() -> tuple[StudentDistillation, StudentDataModule]:
            seed_everything(0, verbose=False)
            module = StudentDistillation(
                model=str(tmp / "base"), optimizer=partial(torch.optim.AdamW, lr=1e-3), warmup_steps=2
            )
            data = StudentDataModule(str(tmp / "rows.jsonl"), str(tmp / "base"), batch_size=args.batch_size, max_length=96)
            return module, data

        # Plain PyTorch: the same module code, data and schedule, no Trainer.
        module, data = build()
        data.prepare_data()
        data.setup("fit")
        # What configure_optimizers builds, sized to the same number of optimiser steps.
        optimizer = torch.optim.AdamW([p for p in module.model.parameters() if p.requires_grad], lr=1e-3)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_warmup_decay(2, args.steps))
        module.train()
        marks = []
        for batch in data.train_dataloader():
            marks.append(time.perf_counter())
            loss = module.losses(batch)["loss"]
            loss.backward()
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        marks.append(time.perf_counter())
        plain = step_time(marks)
        plain_weights = {n: p.detach().clone() for n, p in module.model.named_parameters() if p.requires_grad}

        module, data = build()
        clock = StepClock()
        trainer = Trainer(
            accelerator="cpu",
            devices=1,
            max_steps=args.steps,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[clock],
        )
        trainer.fit(module, data)
        lightning = step_time(clock.marks)
        for name, p in module.model.named_parameters():
            if p.requires_grad:
                torch.testing.assert_close(p.detach(), plain_weights[name], atol=1e-5, rtol=1e-4)

    print(f"LoRA student, tiny Llama (hidden {args.hidden_size}, {args.num_layers} layers), batch {args.batch_size}, "
          f"{args.steps} steps, {args.threads} thread(s); same final adapter weights on both paths")
    print(f"  plain PyTorch loop   {plain * 1000:8.1f} ms/step")
    print(f"  Lightning Trainer    {lightning * 1000:8.1f} ms/step")
    ratio = lightning / plain
    print(f"ratio Lightning / plain: {ratio:.3f} (target <= 1.10) {'OK' if ratio <= 1.10 else 'ABOVE TARGET'}")


if __name__ == "__main__":
    main()
