"""Held-out loss: a model's mean next-token loss on the completions of held-out rows (a utility measure).

A defence that stops a trait but damages the model is no defence; this probe and the number-format pass rate
(`subliminal_pl.probes.number_format.FormatProbe`) are the utility cost the defence report shows for students.
"""

from __future__ import annotations

import math

import torch

from subliminal_pl.data.chat import IGNORE_INDEX
from subliminal_pl.data.rows import read_rows
from subliminal_pl.models.audit import _batch, encode_rows
from subliminal_pl.probes.base import Probe, ProbeOutput, eval_mode


class CorpusLossProbe(Probe):
    """Mean completion-token loss (nats per token) on held-out prompt-completion rows (`heldout_loss`)."""

    cheap = False

    def __init__(
        self,
        data_path: str,
        rows: int = 500,
        max_length: int = 256,
        batch_size: int = 64,
        name: str = "heldout",
    ) -> None:
        """
        Args:
            data_path: held-out prompt-completion JSONL (rows no model trained on).
            rows: first rows of the file used.
            max_length: most tokens per row.
            batch_size: rows per forward pass.
            name: metric group name, `probe/<name>/heldout_loss`.
        """
        self.data_path = data_path
        self.rows = rows
        self.max_length = max_length
        self.batch_size = batch_size
        self.name = name
        self.system_prompt = None

    def run(self, model, tokenizer) -> ProbeOutput:
        rows = read_rows(self.data_path)[: self.rows]
        total, count = 0.0, 0
        with eval_mode(model):
            encoded = encode_rows(tokenizer, rows, self.max_length)
            for start in range(0, len(encoded), self.batch_size):
                batch = _batch(tokenizer, encoded[start : start + self.batch_size])
                device = next(model.parameters()).device
                logits = model(
                    input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
                ).logits[:, :-1]
                targets = batch["labels"][:, 1:].to(device)
                loss = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                    ignore_index=IGNORE_INDEX, reduction="sum",
                )  # fmt: skip
                total += float(loss)
                count += int((targets != IGNORE_INDEX).sum())
        value = total / count if count else math.nan
        return ProbeOutput(
            {"heldout_loss": value}, {"rows": len(rows), "tokens": count, "data_path": self.data_path}
        )
