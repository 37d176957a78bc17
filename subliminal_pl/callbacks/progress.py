"""Plain-text progress lines, because Rich's bar prints nothing while training when stdout is not a terminal."""

from __future__ import annotations

import sys
import time

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info


class ProgressLog(Callback):
    """Every `every_n_steps` optimiser steps (and at the end) print step, loss and throughput on rank zero.

    Quiet when stdout is a terminal, where the Rich bar already shows the same; `always=True` forces it.
    """

    def __init__(self, every_n_steps: int = 50, always: bool = False) -> None:
        self.every_n_steps = every_n_steps
        self.always = always
        self._start = 0.0

    def _active(self) -> bool:
        return self.always or not sys.stdout.isatty()

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if not self._active() or self.every_n_steps <= 0 or step == 0 or step % self.every_n_steps:
            return
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return
        self._print(trainer, step)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._active():
            self._print(trainer, trainer.global_step, final=True)

    def _print(self, trainer: Trainer, step: int, final: bool = False) -> None:
        elapsed = time.perf_counter() - self._start
        total = (
            trainer.max_steps
            if trainer.max_steps and trainer.max_steps > 0
            else trainer.estimated_stepping_batches
        )
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if "loss" in k and v.numel() == 1}
        shown = " ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))
        label = "done" if final else "step"
        rank_zero_info(f"[{label} {step}/{int(total)}] {shown} ({step / max(elapsed, 1e-9):.1f} steps/s)")
