"""Trait probes during and after training: `probe/<name>/<metric>` in the loggers and a `probes.json`.

Works with any LightningModule that exposes `.model` (a Hugging Face or PEFT causal LM) and `.tokenizer`.
Cheap probes (log-probabilities) run every `every_n_steps` optimiser steps and at the end of fit; expensive ones
(sampling, judges) at the end of fit, in `validate`/`test`, or on demand via `run_probes`. Every rank runs the
probes on its own replica and logs the same keys (a sharded model needs every rank in its forward passes);
only global rank zero writes the results file.

The results file is the one probe results schema (`subliminal_pl.probes.results.ProbeResults`, the file the
pipeline's probe stage writes): one model entry per measured step, named `step-<global step>` during fit and
`<stage>-step-<global step>` in validate / test, so the report reads a training run like any other.
"""

from __future__ import annotations

import time
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info

from subliminal_pl.probes.base import Probe, ProbeOutput, eval_mode
from subliminal_pl.probes.results import ProbeResults


class TraitProbeCallback(Callback):
    """Runs trait probes on `pl_module.model` / `pl_module.tokenizer` and reports them."""

    def __init__(
        self,
        probes: list[Probe],
        every_n_steps: int = 0,
        at_fit_end: bool = True,
        expensive_at_fit_end: bool = True,
        in_evaluation: bool = True,
        results_file: str = "probes.json",
    ) -> None:
        """
        Args:
            probes: probes to run, e.g. LogProbProbe, SamplingProbe, MisalignmentProbe (distinct names).
            every_n_steps: run the cheap probes every this many optimiser steps during fit (0: never).
            at_fit_end: run the cheap probes when fit ends.
            expensive_at_fit_end: also run the expensive probes (sampling, judges) when fit ends.
            in_evaluation: run every probe once in `validate` / `test` (no training needed).
            results_file: file name of the results (`ProbeResults` schema), written into the run directory.
        """
        names = [p.name for p in probes]
        if len(set(names)) != len(names):
            raise ValueError(f"probe names must be distinct, got {names}")
        if every_n_steps < 0:
            raise ValueError("every_n_steps must be >= 0")
        self.probes = list(probes)
        self.every_n_steps = every_n_steps
        self.at_fit_end = at_fit_end
        self.expensive_at_fit_end = expensive_at_fit_end
        self.in_evaluation = in_evaluation
        self.results_file = results_file
        self.results: dict[str, ProbeOutput] = {}
        self.history = ProbeResults()
        self._last_step = -1

    @staticmethod
    def _target(pl_module: LightningModule):
        model, tokenizer = getattr(pl_module, "model", None), getattr(pl_module, "tokenizer", None)
        if model is None or tokenizer is None:
            raise AttributeError(
                f"TraitProbeCallback needs {type(pl_module).__name__} to expose `.model` (the causal LM) and "
                "`.tokenizer`"
            )
        return model, tokenizer

    def _measure(
        self, trainer: Trainer, pl_module: LightningModule, probes: list[Probe], stage: str = "fit"
    ) -> dict[str, ProbeOutput]:
        model, tokenizer = self._target(pl_module)
        outputs = {}
        for probe in probes:
            start = time.perf_counter()
            with trainer.precision_plugin.forward_context(), eval_mode(model):
                outputs[probe.name] = probe.run(model, tokenizer)
            rank_zero_info(
                f"probe {probe.name}: {time.perf_counter() - start:.1f} s at step {trainer.global_step}"
            )
        self.results.update(outputs)
        entry = f"step-{trainer.global_step}" if stage == "fit" else f"{stage}-step-{trainer.global_step}"
        source = getattr(pl_module, "hparams", {}).get("model_name_or_path", "")
        self.history.add(entry, str(source or type(pl_module).__name__), outputs)
        return outputs

    @staticmethod
    def flat_metrics(outputs: dict[str, ProbeOutput]) -> dict[str, float]:
        return {
            f"probe/{name}/{key}": float(v) for name, out in outputs.items() for key, v in out.metrics.items()
        }

    @staticmethod
    def _to_loggers(trainer: Trainer, metrics: dict[str, float]) -> None:
        # Straight to the loggers: fit-end hooks cannot use `self.log`, and a step that is not a logging step
        # would drop values logged through it.
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def _write(self, trainer: Trainer) -> Path | None:
        if not trainer.is_global_zero:
            return None
        run_dir = Path(trainer.log_dir or trainer.default_root_dir)
        return self.history.write(run_dir / self.results_file)

    def run_probes(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        include_expensive: bool = True,
        stage: str = "on_demand",
    ) -> dict[str, ProbeOutput]:
        """Run the probes now (cheap ones only unless `include_expensive`), log them and write the results file."""
        probes = [p for p in self.probes if p.cheap or include_expensive]
        outputs = self._measure(trainer, pl_module, probes, stage)
        self._to_loggers(trainer, self.flat_metrics(outputs))
        self._write(trainer)
        return outputs

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # Before the first step: probes whose reference is the untrained model record it now.
        model, tokenizer = self._target(pl_module)
        with trainer.precision_plugin.forward_context(), eval_mode(model):
            for probe in self.probes:
                probe.prepare(model, tokenizer)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self.every_n_steps <= 0 or step == 0 or step % self.every_n_steps or step == self._last_step:
            return
        self._last_step = step
        cheap = [p for p in self.probes if p.cheap]
        if cheap:
            self._to_loggers(trainer, self.flat_metrics(self._measure(trainer, pl_module, cheap)))
            self._write(trainer)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.at_fit_end:
            return
        # Cheap probes already measured at this very step are not run (or logged) twice.
        probes = [
            p
            for p in self.probes
            if (p.cheap and trainer.global_step != self._last_step)
            or (not p.cheap and self.expensive_at_fit_end)
        ]
        outputs = self._measure(trainer, pl_module, probes)
        self._to_loggers(trainer, self.flat_metrics(outputs))
        self._write(trainer)

    def _evaluate(self, trainer: Trainer, pl_module: LightningModule, fn: TrainerFn, stage: str) -> None:
        if not self.in_evaluation or trainer.sanity_checking or trainer.state.fn != fn:
            return
        outputs = self._measure(trainer, pl_module, self.probes, stage)
        for key, value in self.flat_metrics(outputs).items():
            pl_module.log(key, value, sync_dist=False)
        self._write(trainer)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._evaluate(trainer, pl_module, TrainerFn.VALIDATING, "validate")

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._evaluate(trainer, pl_module, TrainerFn.TESTING, "test")
